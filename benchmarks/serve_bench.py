"""Serving throughput and latency: `serve` vs in-process onnxruntime, on this machine.

    .venv/bin/python benchmarks/serve_bench.py [--seconds 5] [--models lenet,inception]

Exports random-weight models into a temporary repository (weights do not change the compute),
starts `serve` as a subprocess, and drives it with an asyncio gRPC client (KServe v2 ModelInfer,
batch-1 requests, output `logits`) at concurrency 1, 8, 32 and 64. Beside it: in-process
onnxruntime on the same graph at batch 1 and batch 32. Then Triton's own load generator, perf_analyzer
(batch-1 ModelInfer over gRPC, the same concurrencies, zero and random input data; its libraries are fetched
by ``benchmarks/perf_analyzer.py`` into benchmarks/.deps/; ``--no-perf-analyzer`` skips it). Finally
tritonclient's asyncio client (in a subprocess: its protos and ours share names) confirms the v2 endpoint
and is timed too.

A Python gRPC client spends about as much CPU per call as the server, so on 2 cores it measures
itself too. Where ``benchmarks/loadgen/build.sh`` can build the C++ async client (Debian's
libgrpc++-dev), the same points are measured with it, and so is the ceiling of the stack itself:
a no-op grpc.aio server that answers ModelInfer with a pre-serialized reply (``--no-floor`` skips it).
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import os
import shlex
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


def in_process(path: Path, shape, batch: int, seconds: float) -> float:
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, *shape[1:])).astype(np.float32)
    sess.run(["logits"], {"input": x})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(["logits"], {"input": x})
        n += batch
    return n / (time.perf_counter() - t0)


async def drive(address: str, model: str, shape, concurrency: int, seconds: float) -> tuple[float, float, float]:
    import grpc

    from serving._generated.inference import grpc_service_pb2 as pb
    from serving._generated.inference import grpc_service_pb2_grpc as pb_grpc
    x = np.random.default_rng(0).standard_normal((1, *shape[1:])).astype(np.float32)
    req = pb.ModelInferRequest(model_name=model, inputs=[pb.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=[1, *shape[1:]])], raw_input_contents=[x.tobytes()],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="logits")])
    lat: list[float] = []
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        for _ in range(20):
            await stub.ModelInfer(req)
        stop = time.perf_counter() + seconds

        async def worker():
            while time.perf_counter() < stop:
                t = time.perf_counter()
                await stub.ModelInfer(req)
                lat.append(time.perf_counter() - t)
        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        wall = time.perf_counter() - t0
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


def row(model: str, mode: str, ips: float, p50: float | None = None, p99: float | None = None) -> None:
    tail = f" {p50:8.2f} {p99:8.2f}" if p50 is not None else ""
    print(f"{model:10s} {mode:26s} {ips:10.0f}{tail}", flush=True)


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
                  data: str) -> tuple[float, float, float]:
    """requests/s, p50 ms, p99 ms from perf_analyzer's CSV report. On a shared machine three windows in a
    row may not agree: then once more with windows three times as long (what perf_analyzer suggests)."""
    exe, env = tool
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
            seconds: float) -> tuple[float, float, float]:
    """requests/s, p50 ms, p99 ms from the C++ client (one channel, as the Python client)."""
    out = subprocess.run([str(binary), address, model, ",".join(map(str, shape[1:])), "logits", str(concurrency),
                          str(seconds), "1"], capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1]), float(out[2])


def noop_floor(binary: Path | None, seconds: float) -> None:
    """The grpc.aio stack's own ceiling here: a server that does nothing per call."""
    from serving._generated.inference import grpc_service_pb2 as pb

    from conftest import free_port
    reply = pb.ModelInferResponse(model_name="lenet", outputs=[pb.ModelInferResponse.InferOutputTensor(
        name="logits", datatype="FP32", shape=[1, 10])], raw_output_contents=[bytes(40)]).SerializeToString()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", NOOP, str(port), reply.hex()])
    address = f"127.0.0.1:{port}"
    try:
        import grpc
        with grpc.insecure_channel(address) as ch:
            grpc.channel_ready_future(ch).result(timeout=30)
        row("no-op", "grpc.aio py client c=32", *asyncio.run(drive(address, "lenet", [-1, 1, 28, 28], 32, seconds)))
        if binary:
            row("no-op", "C++ client c=32", *loadgen(binary, address, "lenet", [-1, 1, 28, 28], 32, seconds))
    finally:
        proc.kill()
        proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="measurement time per point")
    ap.add_argument("--models", default="lenet,inception", help="registry models to serve")
    ap.add_argument("--concurrency", default="1,8,32,64")
    ap.add_argument("--server-args", default="", help="extra serve options, e.g. '--intra-op-threads 1'")
    ap.add_argument("--no-cpp", action="store_true", help="skip the C++ client rows")
    ap.add_argument("--no-floor", action="store_true", help="skip the no-op server rows")
    ap.add_argument("--no-perf-analyzer", action="store_true", help="skip Triton's perf_analyzer rows")
    ap.add_argument("--perf-data", default="zero,random", help="perf_analyzer --input-data modes to run")
    ap.add_argument("--export-only", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.export_only:  # the exporter checks Triton configs with tritonclient's protos: keep them out of this process
        export_models(Path(a.export_only), a.models.split(","))
        return
    from conftest import start_server, stop_server  # the test suite's server launcher
    names = a.models.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        subprocess.run([sys.executable, __file__, "--export-only", str(repo), "--models", a.models], check=True)
        binary = None if a.no_cpp else loadgen_binary()
        pa = None if a.no_perf_analyzer else perf_analyzer_tool()
        proc, address = start_server(repo, *a.server_args.split())
        try:
            print(f"\nserver: serve {a.server_args or '(defaults)'}; client: grpc.aio, batch-1 ModelInfer, "
                  f"{os.cpu_count()} CPUs shared")
            if pa:
                example = perf_analyzer_command(pa[0], address, "MODEL", "C", a.seconds, "zero")
                print(f"perf_analyzer: LD_LIBRARY_PATH={pa[1]['LD_LIBRARY_PATH']} "
                      f"{shlex.join(example)} (random data: without --input-data)")
            print(f"{'model':10s} {'mode':26s} {'images/s':>10s} {'p50 ms':>8s} {'p99 ms':>8s}")
            got = {}
            for name in names:
                shape = [-1, 1, 32, 32] if name in ("inception",) else [-1, 1, 28, 28]
                graph = repo / name / "1" / "classifier.onnx"
                for b in (1, 32):
                    got[name, "ort", b] = in_process(graph, shape, b, a.seconds)
                    row(name, f"in-process ort batch {b}", got[name, "ort", b])
                for c in map(int, a.concurrency.split(",")):
                    got[name, "grpc", c] = asyncio.run(drive(address, name, shape, c, a.seconds))
                    row(name, f"grpc concurrency {c}", *got[name, "grpc", c])
                if binary:
                    for c in map(int, a.concurrency.split(",")):
                        got[name, "cpp", c] = loadgen(binary, address, name, shape, c, a.seconds)
                        row(name, f"C++ client c={c}", *got[name, "cpp", c])
                if pa:
                    for c in map(int, a.concurrency.split(",")):
                        for data in a.perf_data.split(","):
                            try:
                                got[name, "pa-" + data, c] = perf_analyzer(pa, address, name, c, a.seconds, data)
                            except (RuntimeError, subprocess.TimeoutExpired) as e:
                                print(f"{name:10s} {f'perf_analyzer c={c} {data}':26s} FAILED {e}", flush=True)
                                continue
                            row(name, f"perf_analyzer c={c} {data}", *got[name, "pa-" + data, c])
                r = subprocess.run([sys.executable, "-c", TRITON, address, name, ",".join(map(str, shape)), "32",
                                    str(a.seconds)], capture_output=True, text=True, cwd=ROOT)
                result = r.stdout.split()[0] if r.returncode == 0 else "FAILED " + r.stderr[-200:]
                print(f"{name:10s} {'tritonclient.aio c=32':26s} {result:>10s}", flush=True)
        finally:
            stop_server(proc)
    if not a.no_floor:
        noop_floor(binary, a.seconds)
    targets = [("lenet c=32 >= 5000 images/s", lambda: got["lenet", "grpc", 32][0] >= 5000),
               ("lenet c=32 >= 5000 images/s (C++ client)", lambda: got["lenet", "cpp", 32][0] >= 5000),
               ("lenet c=32 >= 5000 images/s (perf_analyzer)", lambda: got["lenet", "pa-random", 32][0] >= 5000),
               ("lenet c=1 p50 <= 1 ms", lambda: got["lenet", "grpc", 1][1] <= 1.0),
               ("inception c=32 >= 70% of in-process batch 32",
                lambda: got["inception", "grpc", 32][0] >= 0.7 * got["inception", "ort", 32])]
    print()
    for what, check in targets:
        try:
            print(f"target {what:46s} {'met' if check() else 'MISSED'}")
        except KeyError:  # that model or concurrency was not measured
            pass


if __name__ == "__main__":
    main()
