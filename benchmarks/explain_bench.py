"""Served explanations vs the reference libraries in torch, side by side on this CPU.

    .venv/bin/python benchmarks/explain_bench.py --repository exported --models lenet,resnet [--reps 10]

For each model (exported with every method: ``export --explain all``) and each method, at batch 1
and 32: the median latency of ``Explain`` through a ``serve`` subprocess (gRPC, real test images,
the predicted class unless fixed targets are given: here fixed, so no Classify call is added), and
of the reference library on the same model in torch (pytorch-grad-cam for the CAM methods, Captum
for the others, IG at the manifest's steps and Gauss-Legendre rule, SmoothGrad at its samples),
torch and the server at the same thread count (``--threads``). Beside them, Classify's latency at
the same batch, for the Grad-CAM / Classify ratio. The torch model is the manifest's source
checkpoint when it is there, else the same architecture with random weights (the compute is the same).
Prints one table and writes ``--json`` when given.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def median_ms(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def torch_model(man: dict):
    from training.checkpoint import model_from_checkpoint
    from training.models import create_model
    ck = (man.get("source") or {}).get("checkpoint")
    if ck and Path(ck).is_file():
        return model_from_checkpoint(ck)[0].eval()
    return create_model(man["model"]["arch"], **man["model"]["args"]).eval()


def reference_call(method: str, model, x, t, man: dict):
    import torch

    from training.export import references
    sec = man["explain"]
    xt, tt = torch.from_numpy(x), torch.from_numpy(t)
    return lambda: references.reference_maps(method, model, xt, tt, steps=sec["ig"]["steps"],
                                             samples=sec["smoothgrad"]["samples"], std=sec["smoothgrad"]["stdev"])


def start(repository: str, threads: int):
    from tests.helpers.server import free_port
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-m", "serving.cli", "--repository", repository, "--port", str(port),
                             "--metrics-port", "0", "--log-level", "WARNING", "--intra-op-threads", str(threads)],
                            cwd=ROOT, env=env)
    from serving.client import wait_for_server
    wait_for_server(f"127.0.0.1:{port}", 300)
    return proc, f"127.0.0.1:{port}"


def bench_model(client, name: str, images: np.ndarray, reps: int, batches) -> list[dict]:
    from glassbox.data import preprocess
    man = client.get_model(name)
    model = torch_model(man)
    rows = []
    for b in batches:
        x = preprocess(images[:b], man["preprocessing"])
        t = (np.arange(b) % len(man["labels"])).astype(np.int64)
        classify = median_ms(lambda x=x: client.classify(name, x, top_k=1), reps)
        for method in man["explain"]["methods"]:
            served = median_ms(lambda m=method, x=x, t=t: client.explain(name, x, m, t, seed=1), reps)
            ref = median_ms(reference_call(method, model, x, t, man), reps)
            rows.append({"model": name, "method": method, "batch": b, "served_ms": served, "reference_ms": ref,
                         "classify_ms": classify})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repository", default="exported")
    ap.add_argument("--models", default="lenet,resnet")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch

    from glassbox.data import load_dataset
    from serving.client import GlassboxClient
    torch.set_num_threads(args.threads)
    images = load_dataset("fashion-mnist", split="test").images
    proc, address = start(args.repository, args.threads)
    try:
        with GlassboxClient(address) as client:
            rows = [r for name in args.models.split(",")
                    for r in bench_model(client, name, images, args.reps, [int(b) for b in args.batches.split(",")])]
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"{args.threads} threads (torch and onnxruntime), median of {args.reps} calls, ms")
    print(f"{'model':8s} {'method':10s} {'batch':>5s} {'served':>9s} {'reference':>10s} {'ref/served':>10s} "
          f"{'classify':>9s} {'served/classify':>15s}")
    for r in rows:
        print(f"{r['model']:8s} {r['method']:10s} {r['batch']:5d} {r['served_ms']:9.2f} {r['reference_ms']:10.2f} "
              f"{r['reference_ms'] / r['served_ms']:10.2f} {r['classify_ms']:9.2f} "
              f"{r['served_ms'] / r['classify_ms']:15.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
