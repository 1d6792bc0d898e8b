"""Per-graph, per-version inference statistics, as Triton's ModelStatistics reports them (the KServe v2
statistics extension): what ``tritonclient``'s ``get_inference_statistics`` and perf_analyzer's server-side
breakdown read. The batcher records every batch it runs; the servicers record each request's end.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class Stats:
    inference_count: int = 0   # images inferred
    execution_count: int = 0   # session runs (batches)
    last_inference_ms: int = 0
    success: Duration = field(default_factory=Duration)   # request end to end, in the server
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)     # from submission to the start of its batch's run
    compute_input: Duration = field(default_factory=Duration)   # merging the batch's inputs
    compute_infer: Duration = field(default_factory=Duration)   # the session run
    compute_output: Duration = field(default_factory=Duration)  # splitting the outputs back
    batches: dict[int, list[Duration]] = field(default_factory=dict)  # batch size -> input, infer, output

    def batch(self, queued_ns: list[int], n: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One batch of ``len(queued_ns)`` requests (``n`` images) ran: each request waited ``queued_ns``."""
        self.execution_count += 1
        self.inference_count += n
        self.last_inference_ms = int(time.time() * 1000)
        jobs = len(queued_ns)
        for q in queued_ns:
            self.queue.add(q)
        # Triton counts compute per request: every request of a batch is charged the batch's time.
        self.compute_input.add(input_ns * jobs, jobs)
        self.compute_infer.add(infer_ns * jobs, jobs)
        self.compute_output.add(output_ns * jobs, jobs)
        per_size = self.batches.setdefault(n, [Duration(), Duration(), Duration()])
        for d, ns in zip(per_size, (input_ns, infer_ns, output_ns), strict=True):
            d.add(ns)

    def request(self, ns: int, ok: bool) -> None:
        (self.success if ok else self.fail).add(ns)
