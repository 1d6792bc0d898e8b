"""How busy a thread instance keeps onnxruntime: every batch's run timed inside the server, and the gaps between.

    .venv/bin/python benchmarks/instance_gaps.py --repository R --model resnet [--seconds 6] [--server-args ARGS]

Starts ``serve --instance-kind thread`` with ``Graph.run`` wrapped to record (thread, start, end, images) of every
batch, drives it with the C++ client (benchmarks/loadgen, batch-1 ModelInfer, concurrency 32, 4 connections),
and prints per instance thread: batches, images per batch, run time, the share of the wall time it computed and
the gaps between one run's end and its next start (p50, p90). A gap is the time a finished batch's thread and
the next batch's start wait for the event loop and the GIL. Why process instances are the default on CPU
(serving/instances.py): at concurrency 32 on 2 cores this showed onnxruntime idle about a quarter of the time.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from serve_bench import loadgen, required_loadgen, shape_of  # noqa: E402

from tests.helpers.server import start_server, stop_server  # noqa: E402

TIMED_SERVE = """
import atexit, json, os, threading, time
from serving import loader
runs, real = [], loader.Graph.run
def run(self, outputs, feeds):
    t0 = time.perf_counter()
    out = real(self, outputs, feeds)
    runs.append((threading.get_ident(), t0, time.perf_counter(), len(next(iter(feeds.values())))))
    return out
loader.Graph.run = run
atexit.register(lambda: json.dump(runs, open(os.environ["GLASSBOX_RUNS_FILE"], "w")))
from serving.cli import main
main()
"""


def report(runs: list, t0: float, t1: float) -> None:
    runs = [r for r in runs if t0 < r[1] and r[2] < t1]  # the measured window, warm-up and drain left out
    lo, hi = min(r[1] for r in runs), max(r[2] for r in runs)
    by_thread = collections.defaultdict(list)
    for r in runs:
        by_thread[r[0]].append(r)
    for k, rs in enumerate(by_thread.values()):
        images = [r[3] for r in rs]
        ms = [1e3 * (r[2] - r[1]) for r in rs]
        gaps = sorted(1e3 * (b[1] - a[2]) for a, b in zip(rs, rs[1:], strict=False))
        busy = sum(ms) / 1e3 / (hi - lo)
        print(f"instance thread {k + 1}: {len(rs)} batches, {sum(images) / len(rs):.1f} images each "
              f"({min(images)}-{max(images)}), run {sum(ms) / len(ms):.2f} ms, computing {busy:.0%} of the time, "
              f"gap between runs p50 {gaps[len(gaps) // 2]:.2f} ms, p90 {gaps[int(0.9 * len(gaps))]:.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repository", type=Path, required=True, help="model repository holding --model")
    ap.add_argument("--model", default="resnet", help="a classifier of the repository (its newest version)")
    ap.add_argument("--seconds", type=float, default=6.0, help="measurement time")
    ap.add_argument("--server-args", default="", help="extra serve options, e.g. '--instances 2'")
    a = ap.parse_args()
    binary = required_loadgen()
    shape = shape_of(a.repository, a.model)
    with tempfile.TemporaryDirectory() as tmp:
        runs_file = Path(tmp) / "runs.json"
        env = {**os.environ, "GLASSBOX_RUNS_FILE": str(runs_file)}
        proc, address = start_server(a.repository, "--model-control-mode", "none", "--instance-kind", "thread",
                                     *a.server_args.split(), env=env, serve=[sys.executable, "-c", TIMED_SERVE])
        try:
            loadgen(binary, address, a.model, shape, 32, 1.0, 4, warmup=0)
            t0 = time.perf_counter() + 0.5
            rate = loadgen(binary, address, a.model, shape, 32, a.seconds, 4, warmup=0.5)[0]
            t1 = time.perf_counter() - 0.3
        finally:
            stop_server(proc)
        print(f"{a.model}, serve --instance-kind thread {a.server_args}: {rate:.0f} calls/s at concurrency 32")
        report(json.loads(runs_file.read_text()), t0, t1)


if __name__ == "__main__":
    main()
