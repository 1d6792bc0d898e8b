"""Prometheus metrics: requests by method, model and status; latency; batch size; queue depth; jobs
dropped before compute (their deadline passed while queued, or the client cancelled).

With ``serve --workers N`` each worker process records into prometheus_client's multiprocess files
(``PROMETHEUS_MULTIPROC_DIR``, a fresh folder the parent sets for the workers before they start) and the
parent serves the sum over the workers (``serve_multiprocess``): counters and histograms add up, the queue
depth is the sum over the workers alive (``livesum``).
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()  # one per server, so tests can run several in a process
        self.requests = Counter("glassbox_requests", "gRPC requests", ["method", "model", "status"],
                                registry=self.registry)
        self.latency = Histogram("glassbox_request_seconds", "Request latency", ["method"], registry=self.registry,
                                 buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
        self.batch_size = Histogram("glassbox_batch_size", "Images per session.run", ["graph"], registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.queue_depth = Gauge("glassbox_queue_depth", "Requests waiting per graph", ["graph"],
                                 registry=self.registry, multiprocess_mode="livesum")
        # The autoscaler's signal (deploy/k8s: rate of _sum over rate of _count, as Triton's chart does with
        # nv_inference_queue_duration_us): time from a request's arrival in the queue to its batch's run.
        self.queue_time = Histogram("glassbox_queue_seconds", "Seconds a request waited in its graph's queue",
                                    ["graph"], registry=self.registry,
                                    buckets=(0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1, 5))
        self.dropped = Counter("glassbox_dropped_jobs", "Queued jobs dropped before compute: reason deadline (it "
                               "passed while queued) or cancelled (the client went away)", ["graph", "reason"],
                               registry=self.registry)

        # The response cache (serve --cache-config): lookups answered, lookups computed, entries evicted to
        # stay within the budget, and the bytes held.
        self.cache_hits = Counter("glassbox_cache_hits", "Response cache lookups answered from the cache (or from "
                                  "an identical request being computed)", registry=self.registry)
        self.cache_misses = Counter("glassbox_cache_misses", "Response cache lookups computed", registry=self.registry)
        self.cache_evictions = Counter("glassbox_cache_evictions", "Response cache entries evicted (least recently "
                                       "used first) to stay within --cache-config size", registry=self.registry)
        self.cache_bytes = Gauge("glassbox_cache_bytes", "Bytes held by the response cache", registry=self.registry,
                                 multiprocess_mode="livesum")

        # The live repository (serving/control.py): loads and unloads per model, version and result.
        self.loads = Counter("glassbox_model_loads", "Model version loads, by result (ok, failed)",
                             ["model", "version", "result"], registry=self.registry)
        self.unloads = Counter("glassbox_model_unloads", "Model versions unloaded", ["model", "version"],
                               registry=self.registry)
        self.load_seconds = Histogram("glassbox_model_load_seconds", "Seconds to load a model version (checks, "
                                      "sessions, warm-up)", ["model"], registry=self.registry,
                                      buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))

    def model_loaded(self, name: str, version: int, result: str, seconds: float) -> None:
        self.loads.labels(name, str(version), result).inc()
        self.load_seconds.labels(name).observe(seconds)

    def model_unloaded(self, name: str, version: int) -> None:
        self.unloads.labels(name, str(version)).inc()

    def serve_http(self, port: int, host: str = "127.0.0.1"):
        return start_http_server(port, addr=host, registry=self.registry)


def serve_multiprocess(path: str, port: int, host: str = "127.0.0.1"):
    """The metrics endpoint of ``serve --workers``: every worker's metrics in ``path``, added up."""
    from prometheus_client import multiprocess
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    return start_http_server(port, addr=host, registry=registry)


def worker_gone(path: str, pid: int) -> None:
    """A worker has exited: its live gauges stop counting (its counters stay in the sums)."""
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(pid, path)
