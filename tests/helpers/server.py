"""Servers for the tests: a ``serve`` subprocess on a free port, stopped by signal, and the SIGTERM-under-load check.

    from tests.helpers.server import start_server, stop_server
"""
from __future__ import annotations

import collections
import itertools
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(pid: int) -> dict[int, list[str]]:
    """``pid`` and every process below it (``serve --workers``, instance processes under the fork server):
    pid -> the fields of /proc/PID/stat after the command name (0: state, 1: parent pid, 11/12: utime/stime
    in clock ticks, 16: nice)."""
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            stats[int(stat.parent.name)] = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
    tree, grew = {pid}, True
    while grew:
        more = {p for p, f in stats.items() if int(f[1]) in tree} - tree
        tree, grew = tree | more, bool(more)
    return {p: stats[p] for p in tree if p in stats}


SLOW_LOAD = """
import sys, time
import serving.control as c
real = c.load_model
slowed = []
def slow(*args, **kwargs):  # the first load takes 4 s more than it does
    if not slowed:
        slowed.append(time.sleep(4))
    return real(*args, **kwargs)
c.load_model = slow
sys.argv[0] = "serve"
import serving.cli
serving.cli.main()
"""


def start_server(repo, *extra, env=None, serve=None, cwd=None) -> tuple[subprocess.Popen, str]:
    """Run ``serve`` (``serve``: the command, default this interpreter's ``-m serving.cli``) on a
    free port and wait until health says SERVING; returns the process and its address."""
    port = free_port()
    cmd = [*(serve or [sys.executable, "-m", "serving.cli"]), "--repository", str(repo), "--port", str(port),
           "--metrics-port", "0", "--log-level", "WARNING", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
    address = f"127.0.0.1:{port}"
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited early: {proc.stdout.read()}")
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return proc, address
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become SERVING within 60 s")


def stop_server(proc) -> int:
    import signal
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def closed_loop(address: str, clients: int, calls: list, lock) -> list[threading.Thread]:
    """``clients`` threads, each on its own connection, send v2 ModelInfer calls of one image to lenet until
    one fails; each call is recorded in ``calls`` as (sent, answered, status name). The threads, started."""
    import grpc
    from tritonclient.grpc import service_pb2 as tpb  # our v2 stubs and tritonclient's share names: raw bytes
    request = tpb.ModelInferRequest(model_name="lenet", inputs=[tpb.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=[1, 1, 28, 28])], raw_input_contents=[bytes(784 * 4)],
        outputs=[tpb.ModelInferRequest.InferRequestedOutputTensor(name="logits")]).SerializeToString()

    def client(k):
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
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for th in threads:
        th.start()
    return threads


def signal_under_load(proc, address: str, sig: str = "SIGTERM", grace: float = 10.0) -> None:
    """32 clients, each on its own connection (with several workers: on all of them), send batch-1 v2
    ModelInfer calls to lenet in a closed loop; the signal comes while their calls are in flight. Every
    call sent before it is answered OK, later ones OK or UNAVAILABLE, none CANCELLED; health goes
    NOT_SERVING and then away; the server exits 0 within the grace period."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    calls, health, lock = [], [], threading.Lock()  # calls: (sent, answered, status), time.monotonic()
    sent_signal = threading.Event()

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

    threads = closed_loop(address, 32, calls, lock)
    threads.append(threading.Thread(target=watch_health))
    threads[-1].start()
    time.sleep(4)
    with lock:  # no call is recorded meanwhile: every call sent before `at` is in `calls` or in flight
        at = time.monotonic()
        proc.send_signal(getattr(signal, sig))
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
    print(f"\n{sig} under load: {len(calls)} calls; in flight at the signal {dict(in_flight)}; sent "
          f"before it {dict(before)}; sent after it {dict(after)}; health {seen}; exit {code} after {gone:.2f}s")
    assert sum(in_flight.values()) >= 16, "the load was not running at the signal"
    assert set(before) == {"OK"}, before  # accepted before the signal: answered
    assert set(after) <= {"OK", "UNAVAILABLE"} and after["UNAVAILABLE"] == 32, (after, out[-4000:])  # each saw it go
    assert code == 0 and gone < grace, (code, gone, out)
    # no error logged but the repository's deliberately corrupted model ("not serving broken/1")
    errors = [line for line in out.splitlines() if " ERROR " in line and "not serving broken/" not in line]
    assert "Traceback" not in out and not errors, out
    assert seen[0] == "SERVING" and seen[-1] == "UNAVAILABLE" and "NOT_SERVING" in seen, seen
    assert seen.index("NOT_SERVING") > len(seen) - 1 - seen[::-1].index("SERVING"), seen  # never SERVING again
    with grpc.insecure_channel(address) as ch:  # nobody listens any more
        with pytest.raises(grpc.RpcError) as e:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
