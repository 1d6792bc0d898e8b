"""A fleet on one machine: ``size`` `serve` processes on one shared model repository, each on its own loopback
address (127.0.0.2, 127.0.0.3, ...) and one port, as a cluster gives each pod its own address; one
GlassboxClient over all of them through a gRPC ``ipv4:`` target (round_robin); a closed-loop load on it while a
new version rolls out and one server is killed and restarted. Used by tests/deploy/test_fleet.py and
benchmarks/fleet_bench.py.

    from tests.helpers.fleet import Fleet, Load, roll_out
"""
from __future__ import annotations

import collections
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np

from serving.client import GlassboxClient, GlassboxError, wait_for_server
from tests.helpers.repository import publish
from tests.helpers.server import free_port

SERVE = Path(sys.executable).with_name("serve")  # the console script, as a pod runs it
OK_CLASSIFY = re.compile(r'^glassbox_requests_total\{method="Classify",model="lenet",status="OK"\} (\S+)$', re.M)


def roll_out(repository: Path, name: str) -> int:
    """The rollout: publish the next version of ``name`` (a copy of the newest) as export does; servers in poll
    mode load it and retire the old one. Returns the version."""
    folder = repository / name
    return publish(folder, folder / str(max(int(p.name) for p in folder.iterdir() if p.name.isdigit())))


class Fleet:
    """The servers, started and stopped one by one; ``served()``: Classify calls each answered, over restarts."""

    def __init__(self, repository: Path, size: int = 3, *extra: str):
        self.repository, self.extra = repository, extra
        self.hosts = [f"127.0.0.{k}" for k in range(2, 2 + size)]
        self.port, self.metrics_port = free_port(), free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        self.past = collections.Counter()  # calls answered by stopped incarnations (last value read)
        self.last = collections.Counter()  # the running incarnation's count, as last read

    @property
    def target(self) -> str:
        return "ipv4:" + ",".join(f"{h}:{self.port}" for h in self.hosts)

    def start(self, host: str) -> None:
        cmd = [str(SERVE), "--repository", str(self.repository), "--host", host, "--port", str(self.port),
               "--metrics-port", str(self.metrics_port), "--log-level", "WARNING", *self.extra]
        self.procs[host] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.last[host] = 0

    def start_all(self, timeout: float = 120.0) -> None:
        for host in self.hosts:
            self.start(host)
        wait_for_server(self.target, timeout)  # every backend of the ipv4: list SERVING

    def metrics(self, host: str) -> str:
        return urllib.request.urlopen(f"http://{host}:{self.metrics_port}/metrics", timeout=2).read().decode()

    def count(self, host: str) -> int:
        """Calls ``host``'s running server has answered (its metrics); the last value read if it is down."""
        try:
            self.last[host] = int(float(m[1])) if (m := OK_CLASSIFY.search(self.metrics(host))) else 0
        except OSError:
            pass
        return self.last[host]

    def served(self) -> dict[str, int]:
        return {h: self.past[h] + (self.count(h) if self.procs[h].poll() is None else self.last[h])
                for h in self.hosts}

    def stop(self, host: str, sig: int = signal.SIGTERM) -> int:
        self.count(host)
        proc = self.procs[host]
        proc.send_signal(sig)
        code = proc.wait(timeout=60)
        self.past[host] += self.last[host]
        self.last[host] = 0
        return code

    def restart(self, host: str, sig: int = signal.SIGKILL) -> tuple[int, float]:
        """Stop ``host`` with ``sig`` and start it again: its exit code and the time it was SERVING again."""
        code = self.stop(host, sig)
        self.start(host)
        wait_for_server(f"{host}:{self.port}", 120)
        return code, time.monotonic()

    def close(self) -> dict[str, int]:
        return {h: self.stop(h) for h, p in self.procs.items() if p.poll() is None}


class Load:
    """``threads`` threads calling Classify (batch 1) through one client in a closed loop. ``outcomes``: each
    call's (sent, answered, "OK" or the code it raised); ``refused``: the attempts that failed, by code (seen by
    an interceptor on the client's channels): the client retries an UNAVAILABLE one on the next server."""

    def __init__(self, target: str, threads: int = 8, timeout: float = 30.0):
        self.client = GlassboxClient(target, timeout=timeout)
        self.refused = collections.Counter()
        self.client.stubs = [type(s)(grpc.intercept_channel(ch, _Refusals(self.refused)))
                             for s, ch in zip(self.client.stubs, self.client.channels, strict=True)]
        self.outcomes: list[tuple[float, float, str]] = []
        self.lock, self.done = threading.Lock(), threading.Event()
        self.image = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        while not self.done.is_set():
            t0 = time.monotonic()
            try:
                r = self.client.classify("lenet", self.image, top_k=1)
                outcome = "OK" if r.indices.shape == (1, 1) else "WRONG REPLY"
            except GlassboxError as e:
                outcome = e.code.name
            with self.lock:
                self.outcomes.append((t0, time.monotonic(), outcome))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        for t in self.threads:
            t.join(timeout=60)
        self.client.close()
        assert not any(t.is_alive() for t in self.threads), "a call hung"

    def by_outcome(self) -> dict[str, int]:
        return dict(collections.Counter(o for _, _, o in self.outcomes))


class _Refusals(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, counter: collections.Counter):
        self.counter = counter

    def intercept_unary_unary(self, continuation, details, request):
        response = continuation(details, request)
        code = response.code()
        if code is not None and code != grpc.StatusCode.OK:
            self.counter[code.name] += 1
        return response
