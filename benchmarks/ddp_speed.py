"""Data-parallel training speed: images/second with 1 and 2 processes on this machine.

    .venv/bin/python benchmarks/ddp_speed.py [--model lenet] [--images 20000] [--epochs 2]

Trains the same model on the same real Fashion-MNIST subset with the same global batch, once as
one process (``train``) and once as two gloo processes under torchrun (``train --nproc 2``), and
prints training images per second from the runs' own history (the fastest epoch: the first pays
for warm-up), plus each command's wall time.

Expect little or no gain here, and possibly a loss: this machine has 2 cores, and one process's
intra-op threads (2, one per core) already keep both busy on the convolutions and matrix products.
Two ranks (torchrun gives each OMP_NUM_THREADS=1) split the same 2 cores between them, so the
arithmetic per second cannot grow; what DDP adds is a gradient all-reduce through gloo after every
step and the per-step Python overhead twice over, against better per-thread efficiency on half-size
batches. Data parallelism pays where each rank gets its own compute: one GPU per rank, or one
process per socket/NUMA node of a large CPU machine.

A third row, one process with one thread, separates the two effects. When other processes keep
the cores busy, a process with two intra-op threads can be far slower than either (every op ends
at a barrier where both threads must have run, and one of them waits for a time slice): then two
single-thread ranks "win" against the default, but only as much as one single-thread process does.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(nproc: int, out: Path, a, threads: int | None = None) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "training.cli", "train", "--nproc", str(nproc), "--model", a.model,
           "--subset", str(a.images), "--epochs", str(a.epochs), "--batch-size", str(a.batch_size),
           "--out", str(out), "--no-progress", "--device", "cpu"]
    if a.data_dir:
        cmd += ["--data-dir", a.data_dir]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "OMP_NUM_THREADS")}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    cfg = json.loads((out / "config.json").read_text())
    hist = json.loads((out / "history.json").read_text())
    # An epoch's seconds include its validation pass (10% of the images, forward only): this slightly
    # understates the training rate, alike for both.
    per_epoch = cfg["dataset"]["train_images"] // a.batch_size * a.batch_size
    return per_epoch / min(r["seconds"] for r in hist), wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet")
    ap.add_argument("--images", type=int, default=20000, help="training subset (10%% of it held out)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256, help="the global batch")
    ap.add_argument("--data-dir", default=None)
    a = ap.parse_args()
    print(f"{a.model}, {a.images} Fashion-MNIST images, global batch {a.batch_size}, {a.epochs} epochs, "
          f"{os.cpu_count()} CPUs")
    print(f"{'processes':>9s} {'threads each':>12s} {'images/s':>10s} {'wall s':>8s}")
    with tempfile.TemporaryDirectory() as tmp:
        # torch's default (a thread per core), one thread, and two ranks of one thread (torchrun's default)
        for n, threads in ((1, None), (1, 1), (2, None)):
            ips, wall = run(n, Path(tmp) / f"n{n}-{threads}", a, threads)
            shown = str(threads or (1 if n > 1 else os.cpu_count()))
            print(f"{n:9d} {shown:>12s} {ips:10.0f} {wall:8.1f}", flush=True)


if __name__ == "__main__":
    main()
