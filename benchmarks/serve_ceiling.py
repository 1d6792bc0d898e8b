"""How fast a served model could be on this machine: the CPU a call needs, part by part, and the bound it sets.

    .venv/bin/python benchmarks/serve_ceiling.py --repository R --model resnet [--seconds 6] [--rounds 3]
    .venv/bin/python benchmarks/serve_ceiling.py --repository R --server-args '' --server-args '--instance-kind thread'

Batch-1 ModelInfer calls at concurrency 32 from the C++ client (benchmarks/loadgen), with the server, the
client and onnxruntime sharing this machine's CPUs. Each round measures, in this order and side by side:
- in-process onnxruntime at batch 32, two threads (the issue's yardstick) and one thread: images/s and
  CPU per image (process CPU time over images); the two-thread point again after the servers, the yardstick
  being the mean of both (printed with their spread: how far the machine drifted over the round);
- a no-op grpc.aio server (answers ModelInfer with a pre-serialised reply, nothing parsed, no work):
  calls/s and the CPU per call of the server and of the client. This is what gRPC in Python costs a call
  before any model runs;
- ``serve`` on the model: calls/s, CPU per call of the server and of the client, and the server's in three
  parts: its event loop (the main thread), its other threads (gRPC's, onnxruntime's, thread instances) and the
  processes below it (process instances).

The bound: with every CPU busy and nothing idle, a served image costs at least onnxruntime's cheapest CPU
per image plus the no-op server's and the client's CPU per call, so no server on grpc.aio can exceed
``CPUs / (that sum)`` images/s here. Printed beside 70% of in-process batch 32 (the issue's target) and the
served figure. Per-process CPU comes from /proc (user + system).
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from serve_bench import (  # noqa: E402
    cpu_parts,
    in_process,
    loadgen,
    newest_version,
    required_loadgen,
    shape_of,
    start_noop,
)

from tests.helpers.server import start_server, stop_server  # noqa: E402

CONCURRENCY = 32


def drive(binary: Path, address: str, model: str, shape, seconds: float,
          server_pid: int) -> tuple[float, float, float, dict[str, float]]:
    """(calls/s, server CPU ms per call, client CPU ms per call, the server's CPU ms per call by part: see
    ``serve_bench.cpu_parts``) of the C++ client at concurrency 32."""
    before_s, before_c = cpu_parts(server_pid), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    rate = loadgen(binary, address, model, shape, CONCURRENCY, seconds, 4, warmup=0)[0]
    calls = rate * (time.perf_counter() - t0)  # every call counted: the client's rate over its whole run
    after_c, after_s = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_parts(server_pid)
    client = after_c.ru_utime + after_c.ru_stime - before_c.ru_utime - before_c.ru_stime
    parts = {k: 1e3 * (after_s[k] - before_s[k]) / calls for k in after_s}
    return rate, sum(parts.values()), 1e3 * client / calls, parts


def one_round(a, binary: Path, graph: Path, shape) -> dict:
    r = {}
    r["ort2"], r["ort2_cpu"] = in_process(graph, shape, 32, a.seconds, threads=2)
    r["ort1"], r["ort1_cpu"] = in_process(graph, shape, 32, a.seconds, threads=1)
    proc, address = start_noop()
    try:
        r["noop"], r["noop_server"], r["noop_client"], _ = drive(binary, address, a.model, shape, a.seconds, proc.pid)
    finally:
        proc.kill()
        proc.wait()
    for k, args in enumerate(a.server_args):
        proc, address = start_server(a.repository, "--model-control-mode", "none", *args.split())
        try:
            (r["served", k], r["served_server", k], r["served_client", k],
             r["served_parts", k]) = drive(binary, address, a.model, shape, a.seconds, proc.pid)
        finally:
            stop_server(proc)
    # Batch 32 again after the servers, and the yardstick is the mean of both: the machine's speed drifts over a
    # round, and a yardstick taken only before the servers would favour or penalise them by that drift.
    after, after_cpu = in_process(graph, shape, 32, a.seconds, threads=2)
    r["ort2_spread"] = abs(after - r["ort2"]) / ((after + r["ort2"]) / 2)
    r["ort2"], r["ort2_cpu"] = (r["ort2"] + after) / 2, (r["ort2_cpu"] + after_cpu) / 2
    cpus = len(os.sched_getaffinity(0))
    r["bound"] = 1e3 * cpus / (min(r["ort1_cpu"], r["ort2_cpu"]) + r["noop_server"] + r["noop_client"])  # ms -> /s
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repository", type=Path, required=True, help="model repository holding --model")
    ap.add_argument("--model", default="resnet", help="a classifier of the repository (its newest version)")
    ap.add_argument("--seconds", type=float, default=6.0, help="measurement time per point")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every point, side by side")
    ap.add_argument("--server-args", action="append", help="extra serve options, e.g. '--instance-kind process'; "
                    "repeat it to measure several servers in every round, side by side ('' for the defaults)")
    a = ap.parse_args()
    a.server_args = a.server_args or [""]  # no --server-args: the defaults alone
    binary = required_loadgen()
    newest = newest_version(a.repository, a.model)
    shape = shape_of(a.repository, a.model)
    print(f"{len(os.sched_getaffinity(0))} CPUs; load {' '.join(Path('/proc/loadavg').read_text().split()[:3])}; "
          f"C++ client, batch-1 ModelInfer, concurrency {CONCURRENCY}, 4 connections")
    print(f"{'round':>5s} {'ort b32 2thr':>11s} {'ort b32 1thr':>13s} {'no-op calls/s':>14s} {'no-op srv/cli':>14s} "
          f"{'bound':>7s} {'70% of b32':>10s}   then per server: images/s, server/client CPU ms per call, "
          "served/b32")
    ratios = {k: [] for k in range(len(a.server_args))}
    for i in range(a.rounds):
        r = one_round(a, binary, newest / "classifier.onnx", shape)
        line = (f"{i + 1:5d} {r['ort2']:6.0f}±{r['ort2_spread']:3.0%} {r['ort1']:6.0f} {r['ort1_cpu']:4.2f}ms "
                f"{r['noop']:14.0f} {r['noop_server']:6.2f}/{r['noop_client']:.2f}ms {r['bound']:7.0f} "
                f"{0.7 * r['ort2']:10.0f}")
        for k, args in enumerate(a.server_args):
            ratios[k].append(r["served", k] / r["ort2"])
            parts = r["served_parts", k]
            line += (f" | {args or 'defaults'}: {r['served', k]:.0f} {r['served_server', k]:.2f}/"
                     f"{r['served_client', k]:.2f}ms ({parts['loop']:.2f} loop, {parts['threads']:.2f} threads, "
                     f"{parts['below']:.2f} processes) {ratios[k][-1]:.0%}")
        print(line, flush=True)
    for k, args in enumerate(a.server_args):
        print(f"{args or 'defaults'}: served/b32 median {statistics.median(ratios[k]):.0%} over {a.rounds} rounds "
              f"(min {min(ratios[k]):.0%}, max {max(ratios[k]):.0%})")
    print("ort b32 2thr: the mean of the points before and after the servers, ± their difference over that mean. "
          "CPU columns: ms per image (in-process) or per call (server/client). bound (images/s): CPUs / (cheapest "
          "ort CPU per image + no-op server + client CPU per call); what serve spends per call beyond the no-op "
          "server and onnxruntime is served srv - no-op srv - cheapest ort.")


if __name__ == "__main__":
    main()
