"""The REST infer body's parsing (serving/rest.py ``parse_infer``), the part of a POST /v2/models/{m}/infer
that runs on the event loop before the servicer: microseconds per request for JSON and binary bodies.

    .venv/bin/python benchmarks/rest_parse.py                       # the current parser
    .venv/bin/python benchmarks/rest_parse.py --baseline old_rest.py  # and another rest.py, interleaved

With --baseline, both parsers take turns on every body, so a busy machine slows both alike.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import time

import numpy as np
from tabulate import tabulate

from serving import rest


def bodies() -> dict[str, tuple[bytes, str | None]]:
    """name -> (body, Inference-Header-Content-Length) for the requests a client sends."""
    rng = np.random.default_rng(0)

    def js(n):
        x = rng.standard_normal((n, 1, 28, 28)).astype(np.float32)
        return json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                       "data": x.ravel().tolist()}],
                           "outputs": [{"name": "logits"}]}).encode(), None

    def binary(n):
        head = json.dumps({"inputs": [{"name": "input", "shape": [n, 1, 28, 28], "datatype": "FP32",
                                       "parameters": {"binary_data_size": n * 784 * 4}}],
                           "parameters": {"binary_data_output": True}}).encode()
        return head + rng.standard_normal(n * 784).astype(np.float32).tobytes(), str(len(head))

    return {"json 1x784": js(1), "json 32x784": js(32), "binary 1x784": binary(1), "binary 256x784": binary(256)}


def _round(parse, body: bytes, header: str | None, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        parse(body, header, "lenet", "")
    return (time.perf_counter() - t) / n * 1e6


def per_request(parsers: dict, body: bytes, header: str | None, seconds: float, rounds: int = 9) -> dict:
    """Microseconds per call of each parser: the best of ``rounds`` rounds (the least disturbed by other
    work), the parsers taking turns within each round."""
    n = 1
    while _round(parsers["current"], body, header, n) * n < seconds / rounds / len(parsers) * 1e6:
        n *= 2
    best = dict.fromkeys(parsers, float("inf"))
    for _ in range(rounds):
        for k, parse in parsers.items():
            best[k] = min(best[k], _round(parse, body, header, n))
    return best


def load(path: str):
    spec = importlib.util.spec_from_file_location("serving._baseline_rest", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.parse_infer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", help="another rest.py whose parse_infer is timed beside the current one")
    ap.add_argument("--seconds", type=float, default=1.0, help="time per body and parser")
    args = ap.parse_args()
    parsers = {"current": rest.parse_infer, **({"baseline": load(args.baseline)} if args.baseline else {})}
    rows = []
    for name, (body, header) in bodies().items():
        us = per_request(parsers, body, header, args.seconds)
        rows.append([name, len(body), *us.values()] + ([us["current"] / us["baseline"]] if args.baseline else []))
    head = ["body", "bytes", *(f"{k} us/request" for k in parsers)] + (["current/baseline"] if args.baseline else [])
    print(tabulate(rows, head, floatfmt=".2f"))


if __name__ == "__main__":
    main()
