"""Serving throughput and latency: `serve` vs in-process onnxruntime, on this machine.

    .venv/bin/python benchmarks/serve_bench.py [--seconds 5] [--models lenet,inception] [--workers 1,2]
    .venv/bin/python benchmarks/serve_bench.py --models resnet --cache          # + the response cache's points
    .venv/bin/python benchmarks/serve_bench.py --repository DIR --models resnet,resnet-int8   # trained models
Python-client rows carry the server's breakdown of their calls (benchmarks/serve_breakdown.py).

Exports random-weight models into a temporary repository (weights do not change the compute),
starts `serve` as a subprocess (once per ``--workers`` count: ``serve --workers N``, N processes sharing the
port), and drives it with an asyncio gRPC client (KServe v2 ModelInfer, batch-1 requests, output `logits`)
at concurrency 1, 8, 32 and 64. Every load generator opens ``--channels`` connections (default 4): the
kernel spreads connections, not calls, over the workers, so one connection would reach one worker.
Beside it: in-process onnxruntime on the same graph at batch 1 and batch 32. Then Triton's own load
generator, perf_analyzer (batch-1 ModelInfer over gRPC, the same concurrencies, zero and random input
data; its libraries are fetched by ``benchmarks/perf_analyzer.py`` into benchmarks/.deps/;
``--no-perf-analyzer`` skips it). Finally tritonclient's asyncio client (in a subprocess: its protos and
ours share names) confirms the v2 endpoint and is timed too (one channel: it has no option for more).

Connections per load generator: the Python client and the C++ one open ``--channels`` channels, each its own
connection (a local subchannel pool), the calls spread over them in turn. perf_analyzer (sync mode: one thread
and one client per concurrency slot, plus one for metadata) shares a gRPC channel among at most
TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT clients (6 by default: 6 connections at concurrency 32, as counted
here), set to ceil((concurrency + 1) / channels) so that it too opens ``--channels`` connections.

A Python gRPC client spends about as much CPU per call as the server, so on 2 cores it measures
itself too. Where ``benchmarks/loadgen/build.sh`` can build the C++ async client (Debian's
libgrpc++-dev), the same points are measured with it, and so is the ceiling of the stack itself:
a no-op grpc.aio server that answers ModelInfer with a pre-serialized reply (``--no-floor`` skips it).
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import json
import os
import resource
import shlex
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def export_models(repo: Path, names: list[str]) -> None:
    import torch

    from glassbox.data import dataset_info, load_dataset
    from training.export import export_model
    from training.models import create_model
    info = dataset_info("fashion-mnist")
    images = load_dataset("fashion-mnist", "test").images[:64]
    for name in names:
        torch.manual_seed(0)
        m = create_model(name).eval()
        cfg = {"name": name, "task": "classifier", "model": {"name": name, "args": m.args},
               "dataset": {"name": "fashion-mnist", "classes": info["classes"], "channels": m.in_chans,
                           "size": [m.img_size] * 2, "mean": info["mean"] * m.in_chans,
                           "std": info["std"] * m.in_chans}}
        t0 = time.perf_counter()
        export_model(m, cfg, repo, images=images, batch_sizes=(1, 64))
        print(f"exported {name} in {time.perf_counter() - t0:.1f}s", flush=True)


# The number each distinct request carries: shared by every drive() of the process, so that a server driven
# again (serve_breakdown.cache_points' rounds) never sees an input it has cached before.
DISTINCT = itertools.count()


def in_process(path: Path, shape, batch: int, seconds: float, threads: int = 0) -> tuple[float, float]:
    """(images/s, CPU ms per image) of onnxruntime in this process at ``batch`` (``threads``: intra-op threads,
    0: onnxruntime's default)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, *shape[1:])).astype(np.float32)
    sess.run(["logits"], {"input": x})
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        sess.run(["logits"], {"input": x})
        n += batch
    return n / (time.perf_counter() - t0), 1e3 * (time.process_time() - c0) / n


async def drive(address: str, model: str, shape, concurrency: int, seconds: float,
                channels: int = 1, distinct: bool = False) -> tuple[float, float, float]:
    """Closed-loop batch-1 v2 ModelInfer calls from ``concurrency`` tasks over ``channels`` connections for
    ``seconds``: (calls/s, p50 ms, p99 ms). ``distinct``: every call's input differs (its first value is the
    call's number), so a response cache never hits; otherwise one request is sent again and again."""
    import grpc

    from serving._generated.inference import grpc_service_pb2 as pb
    from serving._generated.inference import grpc_service_pb2_grpc as pb_grpc
    base = np.random.default_rng(0).standard_normal((1, *shape[1:])).astype(np.float32).tobytes()

    def build(raw: bytes):
        return pb.ModelInferRequest(model_name=model, inputs=[pb.ModelInferRequest.InferInputTensor(
            name="input", datatype="FP32", shape=[1, *shape[1:]])], raw_input_contents=[raw],
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="logits")])
    same = build(base)
    request = (lambda: build(struct.pack("<f", float(next(DISTINCT))) + base[4:])) if distinct else (lambda: same)
    lat: list[float] = []
    chans = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1), ("bench.channel", k)])
             for k in range(channels)]  # a connection each
    try:
        stubs = [pb_grpc.GRPCInferenceServiceStub(ch) for ch in chans]
        for k in range(20):
            await stubs[k % channels].ModelInfer(request())
        stop = time.perf_counter() + seconds

        async def worker(stub):
            while time.perf_counter() < stop:
                req = request()
                t = time.perf_counter()
                await stub.ModelInfer(req)
                lat.append(time.perf_counter() - t)
        t0 = time.perf_counter()
        await asyncio.gather(*[worker(stubs[i % channels]) for i in range(concurrency)])
        wall = time.perf_counter() - t0
    finally:
        for ch in chans:
            await ch.close()
    lat_ms = np.array(lat) * 1e3
    return len(lat) / wall, float(np.percentile(lat_ms, 50)), float(np.percentile(lat_ms, 99))


TRITON = """
import asyncio, sys, time, numpy as np
import tritonclient.grpc.aio as tca
async def main(address, model, shape, conc, seconds):
    c = tca.InferenceServerClient(address)
    assert await c.is_server_live() and await c.is_model_ready(model)
    x = np.zeros([1] + shape[1:], np.float32)
    inp = tca.InferInput("input", list(x.shape), "FP32"); inp.set_data_from_numpy(x)
    out = [tca.InferRequestedOutput("logits")]
    n = 0; stop = time.perf_counter() + seconds; shapes = set()
    async def w():
        nonlocal n
        while time.perf_counter() < stop:
            r = await c.infer(model, [inp], outputs=out); n += 1; shapes.add(r.as_numpy("logits").shape)
    t0 = time.perf_counter(); await asyncio.gather(*[w() for _ in range(conc)])
    assert shapes == {(1, 10)}, shapes
    print(f"{n / (time.perf_counter() - t0):.0f}")
    await c.close()
asyncio.run(main(sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3].split(",")], int(sys.argv[4]),
                 float(sys.argv[5])))
"""


NOOP = """
import asyncio, sys, grpc
async def serve(port, reply):
    async def infer(request, context):  # no parsing, no work: what grpc.aio alone costs per call
        return reply
    h = grpc.method_handlers_generic_handler("inference.GRPCInferenceService",
                                             {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)})
    s = grpc.aio.server(); s.add_generic_rpc_handlers((h,)); s.add_insecure_port(f"127.0.0.1:{port}")
    await s.start(); await s.wait_for_termination()
asyncio.run(serve(int(sys.argv[1]), bytes.fromhex(sys.argv[2])))
"""


def row(model: str, mode: str, ips: float, p50: float | None = None, p99: float | None = None,
        extra: str = "") -> None:
    tail = f" {p50:8.2f} {p99:8.2f}" if p50 is not None else ""
    print(f"{model:10s} {mode:26s} {ips:10.0f}{tail}{extra}", flush=True)


def cpu_parts(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by process ``pid``, in three parts: its main thread (``loop``: the
    event loop of ``serve``), its other threads (``threads``: gRPC's, onnxruntime's pools, thread instances) and
    the processes below it (``below``: the instance processes of ``--instance-kind process``, children of
    multiprocessing's fork server, and the workers of ``serve --workers``)."""
    from tests.helpers.server import process_tree
    tick = os.sysconf("SC_CLK_TCK")

    def seconds(fields: list[str]) -> float:
        return (int(fields[11]) + int(fields[12])) / tick  # utime, stime

    tree = process_tree(pid)
    try:
        loop = seconds(Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split())
    except (OSError, IndexError):  # the process has exited
        loop = 0.0
    own = seconds(tree[pid]) if pid in tree else loop
    return {"loop": loop, "threads": own - loop, "below": sum(seconds(f) for p, f in tree.items() if p != pid)}


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` and every process below it."""
    return sum(cpu_parts(pid).values())


def perf_analyzer_tool():
    """(perf_analyzer, its environment) with its libraries fetched (benchmarks/perf_analyzer.py), or None."""
    from perf_analyzer import Missing, prepare
    try:
        return prepare()
    except Missing as e:
        print(f"(perf_analyzer rows skipped: {e})")
        return None


def perf_analyzer_command(exe, address: str, model: str, concurrency, seconds: float, data: str) -> list[str]:
    """Batch-1 ModelInfer over gRPC at ``concurrency``; windows of a third of ``seconds`` (perf_analyzer
    reports once three in a row agree within 10%); ``data``: zero or random (its default)."""
    return [str(exe), "-m", model, "-u", address, "-i", "grpc", "-b", "1", "--concurrency-range", str(concurrency),
            "--measurement-interval", str(max(500, int(seconds * 1000 / 3))),
            *(["--input-data", data] if data != "random" else [])]


def perf_analyzer(tool, address: str, model: str, concurrency: int, seconds: float,
                  data: str, channels: int = 1) -> tuple[float, float, float]:
    """requests/s, p50 ms, p99 ms from perf_analyzer's CSV report, its clients on ``channels`` connections.
    On a shared machine three windows in a row may not agree: then once more with windows three times as
    long (what perf_analyzer suggests)."""
    exe, env = tool
    env = {**env, "TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT": str(-(-(concurrency + 1) // channels))}
    for window_s in (seconds, 3 * seconds):
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "report.csv"
            cmd = perf_analyzer_command(exe, address, model, concurrency, window_s, data) + ["-f", str(report)]
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30 * window_s + 60)
            if r.returncode == 0 and report.is_file():
                with report.open() as f:
                    got = next(csv.DictReader(f))
                return float(got["Inferences/Second"]), float(got["p50 latency"]) / 1e3, float(got["p99 latency"]) / 1e3
            if "stable measurement" not in r.stdout + r.stderr:
                break
    raise RuntimeError(" ".join((r.stdout + r.stderr).split())[-300:])


def loadgen_binary() -> Path | None:
    r = subprocess.run([str(ROOT / "benchmarks/loadgen/build.sh")], capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        print(f"(C++ load generator not built: {(r.stderr or r.stdout).strip()[-200:]})")
        return None
    return ROOT / "build/loadgen"


def loadgen(binary: Path, address: str, model: str, shape, concurrency: int,
            seconds: float, channels: int = 1, warmup: float = 0.5) -> tuple[float, float, float]:
    """requests/s, p50 ms, p99 ms from the C++ client (``channels`` connections, the calls spread over them;
    the first ``warmup`` seconds of calls are not counted)."""
    out = subprocess.run([str(binary), address, model, ",".join(map(str, shape[1:])), "logits", str(concurrency),
                          str(seconds), str(channels), str(warmup)], capture_output=True, text=True,
                         check=True).stdout.split()
    return float(out[0]), float(out[1]), float(out[2])


def start_noop() -> tuple[subprocess.Popen, str]:
    """A grpc.aio server that answers ModelInfer with a pre-serialized reply and does nothing else, once it
    listens: (process, address)."""
    from serving._generated.inference import grpc_service_pb2 as pb
    reply = pb.ModelInferResponse(model_name="lenet", outputs=[pb.ModelInferResponse.InferOutputTensor(
        name="logits", datatype="FP32", shape=[1, 10])], raw_output_contents=[bytes(40)]).SerializeToString()
    from tests.helpers.server import free_port
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", NOOP, str(port), reply.hex()])
    address = f"127.0.0.1:{port}"
    import grpc
    with grpc.insecure_channel(address) as ch:
        grpc.channel_ready_future(ch).result(timeout=30)
    return proc, address


def noop_floor(binary: Path | None, seconds: float) -> None:
    """The grpc.aio stack's own ceiling here: a server that does nothing per call."""
    proc, address = start_noop()
    try:
        row("no-op", "grpc.aio py client c=32", *asyncio.run(drive(address, "lenet", [-1, 1, 28, 28], 32, seconds)))
        if binary:
            row("no-op", "C++ client c=32", *loadgen(binary, address, "lenet", [-1, 1, 28, 28], 32, seconds))
    finally:
        proc.kill()
        proc.wait()


def newest_version(repo: Path, name: str) -> Path:
    """The directory of the model's newest version in ``repo``."""
    return max((p for p in (repo / name).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def shape_of(repo: Path, name: str) -> list[int]:
    """[-1, C, H, W] of the model's input, from its newest manifest."""
    spec = json.loads((newest_version(repo, name) / "manifest.json").read_text())["preprocessing"]
    return [-1, spec["channels"], *spec["size"]]


def required_loadgen() -> Path:
    """The C++ load generator, built if need be; exits where it cannot be (the caller measures nothing else)."""
    binary = loadgen_binary()
    if binary is None:
        sys.exit("the C++ load generator is needed (benchmarks/loadgen/build.sh)")
    return binary


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="measurement time per point")
    ap.add_argument("--models", default="lenet,inception", help="registry models to serve")
    ap.add_argument("--concurrency", default="1,8,32,64")
    ap.add_argument("--workers", default="1", help="serve --workers counts to measure, e.g. 1,2")
    ap.add_argument("--channels", type=int, default=4, help="connections each load generator opens")
    ap.add_argument("--server-args", default="", help="extra serve options, e.g. '--intra-op-threads 1'")
    ap.add_argument("--no-ort", action="store_true", help="skip the in-process onnxruntime rows")
    ap.add_argument("--no-python", action="store_true", help="skip the Python grpc.aio client rows")
    ap.add_argument("--no-cpp", action="store_true", help="skip the C++ client rows")
    ap.add_argument("--no-floor", action="store_true", help="skip the no-op server rows")
    ap.add_argument("--no-perf-analyzer", action="store_true", help="skip Triton's perf_analyzer rows")
    ap.add_argument("--no-tritonclient", action="store_true", help="skip the tritonclient.aio row")
    ap.add_argument("--perf-data", default="zero,random", help="perf_analyzer --input-data modes to run")
    ap.add_argument("--cache", action="store_true", help="also measure the response cache (hit vs miss p50 at c=1, "
                    "all-miss c=32 with the cache on and off)")
    ap.add_argument("--repository", default=None, help="serve this model repository (trained models, e.g. resnet and "
                    "resnet-int8) instead of exporting random-weight ones")
    ap.add_argument("--export-only", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.export_only:  # the exporter checks Triton configs with tritonclient's protos: keep them out of this process
        export_models(Path(a.export_only), a.models.split(","))
        return
    from tests.helpers.server import start_server, stop_server  # the test suite's server launcher
    names = a.models.split(",")
    concurrencies = [int(c) for c in a.concurrency.split(",")]
    k = a.channels
    got = {}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(a.repository or tmp)
        if not a.repository:
            subprocess.run([sys.executable, __file__, "--export-only", str(repo), "--models", a.models], check=True)
        print(f"load: {' '.join(Path('/proc/loadavg').read_text().split()[:3])} (1, 5, 15 min) before measuring")
        binary = None if a.no_cpp else loadgen_binary()
        pa = None if a.no_perf_analyzer else perf_analyzer_tool()
        print(f"\nclients: batch-1 ModelInfer, {k} connections each (tritonclient.aio: 1); {os.cpu_count()} CPUs "
              f"shared by the server and the client")
        if pa:
            example = perf_analyzer_command(pa[0], "ADDRESS", "MODEL", "C", a.seconds, "zero")
            print(f"perf_analyzer: TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT=ceil((C+1)/{k}) "
                  f"LD_LIBRARY_PATH={pa[1]['LD_LIBRARY_PATH']} {shlex.join(example)} (random data: without "
                  "--input-data)")
        print(f"{'model':10s} {'mode':26s} {'images/s':>10s} {'p50 ms':>8s} {'p99 ms':>8s}")
        if not a.no_ort:
            in_process_rows(repo, names, a.seconds, got)
        for w in map(int, a.workers.split(",")):
            served_rows(a, repo, names, w, concurrencies, binary, pa, got)
        if a.cache:
            from serve_breakdown import cache_points
            for name in names:
                got[name, "cache"] = cache_points(a, repo, name, shape_of(repo, name), row, start_server, stop_server,
                                                  drive, tree_cpu)
        print(f"load: {' '.join(Path('/proc/loadavg').read_text().split()[:3])} (1, 5, 15 min) after measuring")
    if not a.no_floor:
        noop_floor(binary, a.seconds)
    report_targets(got)


def served_rows(a, repo: Path, names: list[str], w: int, concurrencies, binary, pa, got: dict) -> None:
    """Every model's points against one ``serve --workers w``."""
    from tests.helpers.server import start_server, stop_server
    proc, address = start_server(repo, "--workers", str(w), *a.server_args.split())
    print(f"server: serve --workers {w} {a.server_args}".rstrip())
    try:
        for name in names:
            measure(a, got, w, name, shape_of(repo, name), address, concurrencies, binary, pa, proc.pid)
    finally:
        stop_server(proc)


def in_process_rows(repo: Path, names: list[str], seconds: float, got: dict) -> None:
    """onnxruntime in this process on each model's newest classifier graph, at batch 1 and 32."""
    for name in names:
        newest = newest_version(repo, name)
        for b in (1, 32):
            got[name, "ort", b] = in_process(newest / "classifier.onnx", shape_of(repo, name), b, seconds)[0]
            row(name, f"in-process ort batch {b}", got[name, "ort", b])


def measure(a, got: dict, w: int, name: str, shape, address: str, concurrencies, binary, pa, server: int) -> None:
    """Every load generator at every concurrency against the server of ``w`` workers; rows printed and kept.
    The C++ client's rows add the CPU time per call of the server (all its processes) and of the client: on a
    shared machine the rate depends on what else runs, the CPU per call much less, and the two together
    bound the rate on C free cores: C / (server + client CPU per call)."""
    from serve_breakdown import breakdown, client_cpu, statistics
    k = a.channels
    if not a.no_python:
        for c in concurrencies:
            before, server_s, client_s = statistics(address, name), tree_cpu(server), client_cpu()
            t0 = time.perf_counter()
            got[name, "grpc", w, c] = asyncio.run(drive(address, name, shape, c, a.seconds, k))
            calls = got[name, "grpc", w, c][0] * (time.perf_counter() - t0)
            server_s, client_s = tree_cpu(server) - server_s, client_cpu() - client_s
            row(name, f"w={w} grpc.aio py c={c}", *got[name, "grpc", w, c],
                extra=breakdown(before, statistics(address, name), server_s, client_s, calls))
    if binary:
        for c in concurrencies:
            server_s, client_s = tree_cpu(server), resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            got[name, "cpp", w, c] = loadgen(binary, address, name, shape, c, a.seconds, k)
            calls = got[name, "cpp", w, c][0] * (time.perf_counter() - t0)  # warm-up calls too, roughly
            server_s = tree_cpu(server) - server_s
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            client_s = after.ru_utime + after.ru_stime - client_s.ru_utime - client_s.ru_stime
            row(name, f"w={w} C++ client c={c}", *got[name, "cpp", w, c],
                extra=f"   CPU/call: server {1e6 * server_s / calls:.0f} us, client {1e6 * client_s / calls:.0f} us")
    if pa:
        for c in concurrencies:
            for data in a.perf_data.split(","):
                try:
                    got[name, "pa-" + data, w, c] = perf_analyzer(pa, address, name, c, a.seconds, data, k)
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    print(f"{name:10s} {f'w={w} perf_analyzer c={c} {data}':26s} FAILED {e}", flush=True)
                    continue
                row(name, f"w={w} perf_analyzer c={c} {data}", *got[name, "pa-" + data, w, c])
    if not a.no_tritonclient:
        r = subprocess.run([sys.executable, "-c", TRITON, address, name, ",".join(map(str, shape)), "32",
                            str(a.seconds)], capture_output=True, text=True, cwd=ROOT)
        result = r.stdout.split()[0] if r.returncode == 0 else "FAILED " + r.stderr[-200:]
        print(f"{name:10s} {f'w={w} tritonclient.aio c=32':26s} {result:>10s}", flush=True)


def report_targets(got: dict) -> None:
    """The issue's targets, each at the best worker count measured."""
    def best(model: str, mode: str, c: int, i: int = 0, pick=max) -> float:
        values = [v[i] for key, v in got.items() if key[:2] == (model, mode) and key[3] == c]
        if not values:
            raise KeyError(mode)
        return pick(values)

    targets = [("lenet c=32 >= 5000 images/s", lambda: best("lenet", "grpc", 32) >= 5000),
               ("lenet c=32 >= 5000 images/s (C++ client)", lambda: best("lenet", "cpp", 32) >= 5000),
               ("lenet c=32 >= 5000 images/s (perf_analyzer)", lambda: best("lenet", "pa-random", 32) >= 5000),
               ("lenet c=1 p50 <= 1 ms", lambda: best("lenet", "grpc", 1, 1, min) <= 1.0),
               ("inception c=32 >= 70% of in-process batch 32",
                lambda: best("inception", "grpc", 32) >= 0.7 * got["inception", "ort", 32]),
               ("resnet c=32 >= 70% of in-process batch 32",
                lambda: best("resnet", "grpc", 32) >= 0.7 * got["resnet", "ort", 32])]
    print()
    for what, check in targets:
        try:
            print(f"target {what:46s} {'met' if check() else 'MISSED'} (best worker count)")
        except KeyError:  # that model, client or concurrency was not measured
            pass


if __name__ == "__main__":
    main()
