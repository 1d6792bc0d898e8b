"""Prometheus metrics: requests by method, model and status; latency; batch size; queue depth."""
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
                                 registry=self.registry)

    def serve_http(self, port: int, host: str = "127.0.0.1"):
        return start_http_server(port, addr=host, registry=self.registry)
