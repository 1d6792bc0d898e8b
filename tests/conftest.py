"""Shared test fixtures: where the real datasets are.

Tests may read ../shared/data (MNIST, CIFAR-10, LFW) and Debian's Fashion-MNIST; the product never
does. Override with GLASSBOX_TEST_SHARED_DATA / GLASSBOX_TEST_FMNIST.
"""
import json
import os
from pathlib import Path

import pytest

# Prepended to a subprocess's code: any import of torch fails, as on a machine without it.
BLOCK_TORCH = ("import sys, importlib.abc\n"
               "class _NoTorch(importlib.abc.MetaPathFinder):\n"
               "    def find_spec(self, name, path, target=None):\n"
               "        if name == 'torch' or name.startswith('torch.'):\n"
               "            raise ImportError('torch is blocked for this test')\n"
               "sys.meta_path.insert(0, _NoTorch())\n")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GLASSBOX_TEST_SHARED_DATA", ROOT.parent / "shared" / "data"))
FMNIST_DIR = Path(os.environ.get("GLASSBOX_TEST_FMNIST", "/usr/share/datasets/fashion-mnist"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test data not found at {SHARED_DATA} (set GLASSBOX_TEST_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def fmnist_dir() -> Path:
    if not any((FMNIST_DIR / f"t10k-images-idx3-ubyte{ext}").is_file() for ext in (".gz", "")):
        pytest.fail(f"Fashion-MNIST not found at {FMNIST_DIR}: run 'make data' (apt-get install dataset-fashion-mnist)")
    return FMNIST_DIR


# --- A small real model repository and a running server, shared by the serving and analysis tests.
import collections  # noqa: E402
import itertools  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory, fmnist_dir):
    """A briefly trained lenet, mlp and cvae on real Fashion-MNIST (a few seconds each)."""
    from training.config import resolve_config
    from training.engine import fit
    root = tmp_path_factory.mktemp("runs")
    data = {"name": "fashion-mnist", "data_dir": str(fmnist_dir), "subset": 12000}
    runs = {"lenet": {"epochs": 2, "optimizer": {"name": "adamw", "lr": 0.003}},
            "mlp": {"epochs": 1},
            "cvae": {"epochs": 2, "optimizer": {"name": "adam", "lr": 0.002, "weight_decay": 0.0}}}
    for name, over in runs.items():
        fit(resolve_config({"model": name, "dataset": data, **over}), root / name, progress=False, log=lambda *_: None)
    return root


@pytest.fixture(scope="session")
def repository(tmp_path_factory, trained_runs, fmnist_dir):
    """exported/ with lenet, mlp, cvae and a deliberately corrupted copy of lenet ("broken")."""
    from training.export import export_checkpoint
    repo = tmp_path_factory.mktemp("exported")
    for name in ("lenet", "mlp", "cvae"):
        export_checkpoint(trained_runs / name / "best.pt", repo, parity_images=64, data_dir=fmnist_dir)
    shutil.copytree(repo / "lenet", repo / "broken")
    onnx_file = repo / "broken" / "1" / "classifier.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    return repo


def strict_json(path):
    """The JSON files must be strict (no NaN/Infinity) so that browsers and jq read them."""
    def refuse(token):
        raise AssertionError(f"{path.name} holds {token}")
    return json.loads(path.read_text(), parse_constant=refuse)


# `python -c SLOW_LOAD <serve options>`: a server whose model loading takes 4 s longer, to test the
# loading phase (health NOT_SERVING, ready 503, signals while loading).
SLOW_LOAD = """
import sys, time
import serving.server as s
real = s.Repository
def slow(*args, **kwargs):  # loading takes 4 s more than it does
    time.sleep(4)
    return real(*args, **kwargs)
s.Repository = slow
sys.argv[0] = "serve"
s.main()
"""


def tiny_profile(path: Path, data_dir, runs: str, subset: int = 600, defaults: str = "") -> Path:
    """Write a one-epoch train-all profile on ``subset`` Fashion-MNIST images (batch 32, constant lr):
    the shared header, ``defaults`` lines added to it, then ``runs`` (the ``[[runs]]`` tables)."""
    path.write_text(f'[defaults]\ndataset = {{ name = "fashion-mnist", data_dir = "{data_dir}", subset = {subset} }}\n'
                    f'epochs = 1\nbatch_size = 32\nschedule = {{ name = "constant" }}\n{defaults}{runs}')
    return path


def start_server(repo, *extra, env=None, serve=None, cwd=None) -> tuple[subprocess.Popen, str]:
    """Run ``serve`` (``serve``: the command, default this interpreter's ``-m serving.server``) on a
    free port and wait until health says SERVING; returns the process and its address."""
    port = free_port()
    cmd = [*(serve or [sys.executable, "-m", "serving.server"]), "--repository", str(repo), "--port", str(port),
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


@pytest.fixture(scope="session")
def server(repository):
    """A real `serve` subprocess on a free loopback port; yields its address."""
    proc, address = start_server(repository)
    yield address
    stop_server(proc)


def signal_under_load(proc, address: str, sig: str = "SIGTERM", grace: float = 10.0) -> None:
    """32 clients, each on its own connection (with several workers: on all of them), send batch-1 v2
    ModelInfer calls to lenet in a closed loop; the signal comes while their calls are in flight. Every
    call sent before it is answered OK, later ones OK or UNAVAILABLE, none CANCELLED; health goes
    NOT_SERVING and then away; the server exits 0 within the grace period."""
    import grpc
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
