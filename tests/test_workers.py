"""``serve --workers N``: worker processes sharing one port under a supervising parent (serving/workers.py),
and the client that spreads its calls over several connections."""
import collections
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from serving.client import GlassboxClient, ServerUnavailable, addresses

from conftest import free_port, start_server, stop_server


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


def signal_under_load(proc, address: str, grace: float = 10.0) -> None:
    """32 clients, each on its own connection (so on both workers), send batch-1 v2 ModelInfer calls in a closed
    loop; SIGTERM to the parent while they run. Every call sent before it is answered OK, later ones OK or
    UNAVAILABLE, none CANCELLED; health goes NOT_SERVING and then away; the parent exits 0 within the grace."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from tritonclient.grpc import service_pb2 as tpb  # our v2 stubs and tritonclient's share names: raw bytes
    request = tpb.ModelInferRequest(model_name="lenet", inputs=[tpb.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=[1, 1, 28, 28])], raw_input_contents=[bytes(784 * 4)],
        outputs=[tpb.ModelInferRequest.InferRequestedOutputTensor(name="logits")]).SerializeToString()
    calls, health, lock = [], [], threading.Lock()  # calls: (sent, answered, status), time.monotonic()
    sent_signal = threading.Event()

    def worker(k):
        options = [("grpc.use_local_subchannel_pool", 1), ("test.client", k)]  # a connection of its own
        with grpc.insecure_channel(address, options=options) as ch:
            infer = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes in, bytes out
            while True:
                t0 = time.monotonic()
                try:
                    status = "OK" if len(infer(request, timeout=30)) > 40 else "SHORT REPLY"
                except grpc.RpcError as e:
                    status = e.code().name
                with lock:
                    calls.append((t0, time.monotonic(), status))
                if status != "OK":
                    return

    def watch_health():
        with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            check = health_pb2_grpc.HealthStub(ch).Check
            while True:
                try:
                    health.append(health_pb2.HealthCheckResponse.ServingStatus.Name(
                        check(health_pb2.HealthCheckRequest(), timeout=5).status))
                except grpc.RpcError as e:
                    health.append(e.code().name)
                    if sent_signal.is_set():
                        return
                time.sleep(0.005)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(32)]
    threads.append(threading.Thread(target=watch_health))
    for t in threads:
        t.start()
    time.sleep(4)
    with lock:  # no call is recorded meanwhile: every call sent before `at` is in `calls` or in flight
        at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        sent_signal.set()
    code = proc.wait(timeout=grace + 30)
    gone = time.monotonic() - at
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive(), "a call hung"
    out = proc.stdout.read()
    before = collections.Counter(s for t0, _, s in calls if t0 < at)
    in_flight = collections.Counter(s for t0, t1, s in calls if t0 < at < t1)
    after = collections.Counter(s for t0, _, s in calls if t0 >= at)
    seen = [k for k, _ in itertools.groupby(health)]
    print(f"\nSIGTERM to 2 workers under load: {len(calls)} calls; in flight at the signal {dict(in_flight)}; sent "
          f"before it {dict(before)}; sent after it {dict(after)}; health {seen}; exit {code} after {gone:.2f}s")
    assert sum(in_flight.values()) >= 16, "the load was not running at the signal"
    assert set(before) == {"OK"}, before  # accepted before the signal: answered
    assert set(after) <= {"OK", "UNAVAILABLE"} and after["UNAVAILABLE"] == 32, (after, out[-4000:])  # each saw it go
    assert code == 0 and gone < grace, (code, gone, out)
    assert "Traceback" not in out and "ERROR glassbox.serving:" not in out, out  # the parent logs no error
    assert seen[0] == "SERVING" and seen[-1] == "UNAVAILABLE" and "NOT_SERVING" in seen, seen
    assert seen.index("NOT_SERVING") > len(seen) - 1 - seen[::-1].index("SERVING"), seen  # never SERVING again
    with grpc.insecure_channel(address) as ch:  # nobody listens any more
        with pytest.raises(grpc.RpcError) as e:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE


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


@pytest.mark.parametrize("option", ["--port", "--http-port", "--metrics-port"])
def test_workers_port_in_use_is_one_clear_error(tmp_path, option):
    """The workers share their ports (SO_REUSEPORT), so the parent checks them first: one line, exit 2."""
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"--port": str(free_port()), "--metrics-port": "0", option: str(port)}
        r = subprocess.run([sys.executable, "-m", "serving.server", "--repository", str(tmp_path), "--workers", "2",
                            *(x for kv in ports.items() for x in kv)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith(f"error: {option} {port}: "), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "already in use" in r.stderr, r.stderr
