"""``serve --workers N``: worker processes sharing one port under a supervising parent (serving/workers.py),
and the client that spreads its calls over several connections."""
import collections
import json
import os
import signal
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from serving.client import GlassboxClient, ServerUnavailable, addresses
from tests.helpers.server import (
    closed_loop,
    free_port,
    process_tree,
    signal_under_load,
    start_server,
    stop_server,
)


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    return sorted(p for p, f in process_tree(pid).items() if int(f[1]) == pid)


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


def answered_by(folder: Path, pid: int) -> dict[tuple[str, str], float]:
    """{(method, model): calls answered OK} as worker ``pid`` counted them in its own metrics file."""
    from prometheus_client.multiprocess import MultiProcessCollector
    path = folder / f"counter_{pid}.db"
    if not path.is_file():
        return {}
    return {(s.labels["method"], s.labels["model"]): s.value
            for m in MultiProcessCollector.merge([str(path)], accumulate=False)
            for s in m.samples if s.name == "glassbox_requests_total" and s.labels.get("status") == "OK"}


def rest_infer(http_port: int, model: str) -> None:
    """One v2 REST infer of a blank image, on a new connection (urllib opens one per request)."""
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                   "data": [0.0] * 784}]}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{http_port}/v2/models/{model}/infer", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200 and json.loads(r.read())["outputs"]


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
            # Many calls through these channels from 8 threads: all answered, and the parent's metrics count
            # every one of them whichever worker answered. The client takes its channels in turn and each worker
            # holds some of them (above), so both answer some Classify calls (fewer channels could all land on
            # one worker: four do one time in eight).
            x = np.zeros((1, 1, 28, 28), np.float32)
            spread.get_model("lenet")
            with ThreadPoolExecutor(8) as pool:
                results = list(pool.map(lambda _: spread.classify("lenet", x, top_k=1).indices.shape, range(400)))
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
        # Calls reach both workers, over gRPC (Classify of lenet, above) and REST (v2 infer of mlp, one
        # connection each): each worker's own metrics file counts some of each.
        for _ in range(24):
            rest_infer(http_port, "mlp")
        for pid in workers:
            mine = answered_by(folder, pid)
            assert mine.get(("Classify", "lenet"), 0) > 0 and mine.get(("ModelInfer", "mlp"), 0) > 0, (pid, mine)
        assert sum(answered_by(folder, pid).get(("ModelInfer", "mlp"), 0) for pid in workers) == 24
        signal_under_load(proc, address)
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
        assert not folder.exists(), "the metrics folder is removed at exit"
    finally:
        if proc.poll() is None:
            stop_server(proc)


# Put on PYTHONPATH as sitecustomize.py, it makes lenet's classifier a slow model in every process of a server:
# each run takes half a second, the load's timing runs included (so the batcher runs it off the event loop,
# as it would a model measured slow). Calls stay in flight long enough that a worker killed under load holds
# some and its sibling others.
SLOW_RUNS = """
import time
import onnxruntime
_run = onnxruntime.InferenceSession.run
def run(self, *args, **kwargs):
    if str(getattr(self, "_model_path", "")).endswith("lenet/1/classifier.onnx"):
        time.sleep(0.5)
    return _run(self, *args, **kwargs)
onnxruntime.InferenceSession.run = run
"""


def test_a_worker_killed_under_load_its_sibling_answers_what_it_holds(repository, tmp_path):
    """kill -9 of one worker while 16 clients keep calls in flight on both (every run of lenet takes 0.5 s, one
    image a batch, so each worker always holds queued calls: with merged batches, a kill late in a run would
    find the sibling's calls all in that run, answered within the 0.3 s below):
    the victim's calls fail UNAVAILABLE at once (its connections are gone); the parent says which worker
    died and how, and stops the sibling with SIGTERM, so the sibling goes on answering the calls it holds
    (some answered well after the kill) before it exits; no call hangs or ends any other way (CANCELLED:
    a held call dropped); the server exits 1."""
    (tmp_path / "sitecustomize.py").write_text(SLOW_RUNS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc, address = start_server(repository, "--workers", "2", "--grace", "10", "--max-batch", "1", env=env)
    try:
        workers = children(proc.pid)
        assert len(workers) == 2, workers
        calls, lock = [], threading.Lock()
        threads = closed_loop(address, 16, calls, lock)
        time.sleep(3)
        victim, other = workers
        with lock:  # no call is recorded meanwhile: every call sent before `at` is in `calls` or in flight
            at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
        code = proc.wait(timeout=40)
        for th in threads:
            th.join(timeout=30)
            assert not th.is_alive(), "a call hung"
        out = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    in_flight = collections.Counter(s for t0, t1, s in calls if t0 < at < t1)
    every = collections.Counter(s for *_, s in calls)
    print(f"\nkill -9 of a worker under load: in flight {dict(in_flight)}, all {dict(every)}")
    assert set(every) <= {"OK", "UNAVAILABLE"}, every
    assert sum(in_flight.values()) >= 8, "the load was not running at the kill"
    assert in_flight["UNAVAILABLE"] >= 1, "the victim held calls, and they were lost"
    late = [t1 - at for t0, t1, s in calls if t0 < at and s == "OK" and t1 - at > 0.3]
    assert late, "the sibling answered the calls it held (a sibling killed at once answers none late)"
    assert code == 1, (code, out)
    assert f"(pid {victim}) was killed by SIGKILL unexpectedly; stopping the other workers" in out, out
    assert not Path(f"/proc/{other}").exists() and "Traceback" not in out, out
