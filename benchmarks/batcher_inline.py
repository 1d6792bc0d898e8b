"""Why serving/batcher.py runs tiny batches on the event loop (``INLINE_MS``): a LeNet-shaped ONNX graph
behind one Batcher, called at concurrency 1, with its batches run inline and then on the worker thread;
microseconds of latency (p50) and of process CPU per request for each.

    .venv/bin/python benchmarks/batcher_inline.py [--requests 3000] [--rounds 5]

The graph is built here with random weights (onnx.helper), so no exported model is needed; the two
modes take turns round by round, so a busy machine slows both alike. This times the batcher's own
hand-off; serve_bench.py times the whole server.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from tabulate import tabulate

from serving.batcher import Batcher


def lenet() -> bytes:
    """LeNet-5's shape (conv 6@5x5, pool, conv 16@5x5, pool, 120, 84, 10) with random weights."""
    rng = np.random.default_rng(0)
    w = {n: numpy_helper.from_array((rng.standard_normal(s) * 0.1).astype(np.float32), n) for n, s in
         {"w1": (6, 1, 5, 5), "w2": (16, 6, 5, 5), "w3": (120, 400), "w4": (84, 120), "w5": (10, 84)}.items()}
    node = helper.make_node
    nodes = [node("Conv", ["input", "w1"], ["c1"], pads=[2, 2, 2, 2]), node("Relu", ["c1"], ["r1"]),
             node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             node("Conv", ["p1", "w2"], ["c2"]), node("Relu", ["c2"], ["r2"]),
             node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
             node("Flatten", ["p2"], ["f"]), node("Gemm", ["f", "w3"], ["g3"], transB=1), node("Relu", ["g3"], ["h3"]),
             node("Gemm", ["h3", "w4"], ["g4"], transB=1), node("Relu", ["g4"], ["h4"]),
             node("Gemm", ["h4", "w5"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "lenet", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                            ["N", 1, 28, 28])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], list(w.values()))
    # IR version 10: what onnxruntime reads (onnx itself may write a newer one).
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10).SerializeToString()


class Graph:
    """What the batcher needs of serving/loader.py's Graph: one session on one intra-op thread."""
    triton_name = "lenet"
    batch1_ms = 0.0  # replaced per mode through the batcher's inline_images

    def __init__(self, model: bytes):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])

    def run(self, outputs, feeds):
        return self.session.run(outputs, feeds)

    run_small = run


async def one_round(batcher: Batcher, x: np.ndarray, requests: int) -> tuple[float, float]:
    """(p50 latency, process CPU per request), both in microseconds."""
    lat = []
    cpu = time.process_time()
    for _ in range(requests):
        t = time.perf_counter()
        await batcher.submit({"input": x}, ["logits"], 1, None)
        lat.append(time.perf_counter() - t)
    return statistics.median(lat) * 1e6, (time.process_time() - cpu) / requests * 1e6


async def main_async(requests: int, rounds: int) -> None:
    batcher = Batcher(Graph(lenet()), max_batch=64)
    batcher.start()
    x = np.random.default_rng(1).standard_normal((1, 1, 28, 28)).astype(np.float32)
    await one_round(batcher, x, 200)  # warm-up: onnxruntime's first runs allocate
    best = {"inline": [float("inf")] * 2, "worker thread": [float("inf")] * 2}
    for _ in range(rounds):
        for mode in best:
            batcher.inline_images = 1 if mode == "inline" else 0
            p50, cpu = await one_round(batcher, x, requests)
            best[mode] = [min(best[mode][0], p50), min(best[mode][1], cpu)]
    await batcher.stop()
    print(tabulate([[m, *v] for m, v in best.items()], ["batch-1 runs", "p50 us", "CPU us/request"], floatfmt=".0f"))
    print(f"(best of {rounds} rounds of {requests} requests each)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000, help="requests per round and mode")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    asyncio.run(main_async(args.requests, args.rounds))


if __name__ == "__main__":
    main()
