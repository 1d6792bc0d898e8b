"""``serve --workers N``: worker processes sharing one port under a supervising parent (serving/workers.py),
and the client that spreads its calls over several connections."""
import os
import signal
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from serving.client import GlassboxClient, ServerUnavailable, addresses
from tests.helpers.server import free_port, signal_under_load, start_server, stop_server


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            kids.append(int(stat.parent.name))
    return sorted(kids)


def accepted(pid: int, port: int) -> int:
    """Established TCP connections that process ``pid`` holds on its local ``port`` (the ones it accepted)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            n += f[3] == "01" and int(f[1].rsplit(":", 1)[1], 16) == port and f[9] in inodes
    return n


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def metric(text, name):
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_client_addresses():
    assert addresses("h:1") == ["h:1"]
    assert addresses("h:1, h:2,") == ["h:1", "h:2"]
    assert addresses(["h:1,h:2", "h:3"]) == ["h:1", "h:2", "h:3"]
    with pytest.raises(ValueError):
        addresses(" , ")
    with pytest.raises(ValueError):
        GlassboxClient("127.0.0.1:1", channels=0)


def test_two_workers_serve_one_port_count_together_and_drain(repository):
    metrics_port, http_port = free_port(), free_port()
    proc, address = start_server(repository, "--workers", "2", "--metrics-port", str(metrics_port),
                                 "--http-port", str(http_port), "--grace", "10")
    port = int(address.rsplit(":", 1)[1])
    try:
        # Two worker processes, children of the one we started; each has loaded (health is SERVING only then).
        workers = children(proc.pid)
        assert len(workers) == 2, workers
        for pid in workers:
            assert "--worker-fd" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        folder = Path(environ(workers[0])["PROMETHEUS_MULTIPROC_DIR"])
        assert folder.is_dir()
        # The kernel spreads connections over both: 16 channels, each its own connection, all answered.
        with GlassboxClient(address, channels=16) as spread:
            assert len(spread.channels) == 16
            for _ in range(16):
                assert {m.name for m in spread.list_models()} >= {"lenet", "mlp", "cvae"}
            held = {pid: accepted(pid, port) for pid in workers}
            assert sum(held.values()) >= 16 and all(held.values()), held
        # Many calls through one client of 4 channels from 8 threads: all answered, and the parent's metrics
        # count every one of them whichever worker answered.
        x = np.zeros((1, 1, 28, 28), np.float32)
        with GlassboxClient(address, channels=4) as c:
            c.get_model("lenet")
            with ThreadPoolExecutor(8) as pool:
                results = list(pool.map(lambda _: c.classify("lenet", x, top_k=1).indices.shape, range(400)))
        assert results == [(1, 1)] * 400
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert metric(text, 'glassbox_requests_total{method="Classify",model="lenet",status="OK"}') == 400, text
        assert metric(text, 'glassbox_request_seconds_count{method="Classify"}') == 400
        assert metric(text, 'glassbox_batch_size_sum{graph="lenet"}') == 400
        assert "glassbox_queue_depth" in text
        # Several addresses (here the same one twice) and analyze's --server.
        from analysis.common import connect
        with connect(f"{address},{address}") as both:
            assert len(both.channels) == 2 and both.get_model("lenet")["labels"][0] == "T-shirt/top"
        with pytest.raises(ServerUnavailable, match=f"127.0.0.1:{(down := free_port())}"):
            GlassboxClient([address, f"127.0.0.1:{down}"], connect_timeout=0.5)
        # The REST port is shared too: every new connection (urllib opens one per request) is ready.
        for _ in range(6):
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=5) as r:
                assert r.status == 200
        signal_under_load(proc, address)
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
        assert not folder.exists(), "the metrics folder is removed at exit"
    finally:
        if proc.poll() is None:
            stop_server(proc)


def test_a_crashed_worker_stops_the_server(repository):
    """kill -9 of one worker: the parent says which and how, drains the other, exits non-zero."""
    proc, address = start_server(repository, "--workers", "2")
    try:
        workers = children(proc.pid)
        assert len(workers) == 2, workers
        with GlassboxClient(address) as c:
            assert c.get_model("lenet")["labels"][0] == "T-shirt/top"
        victim, other = workers
        os.kill(victim, signal.SIGKILL)
        code = proc.wait(timeout=30)
        out = proc.stdout.read()
        assert code == 1, (code, out)
        assert f"(pid {victim}) was killed by SIGKILL unexpectedly; stopping the other workers" in out, out
        assert not Path(f"/proc/{other}").exists() and "Traceback" not in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
