"""What both servicers share: the repository, one batcher per graph, the draining flag, metrics,
and ``handle`` - the wrapper that turns errors into status codes and never lets a bad request
become INTERNAL.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import time

import grpc
import numpy as np

from .batcher import Batcher
from .cache import ResponseCache, cache_key
from .errors import InvalidArgument, ServingError, Unavailable

log = logging.getLogger("glassbox.serving")
# Set in a gRPC call's own task by the shutdown gate (``handlers``). While draining, a gRPC call reaching the
# servicers was queued in gRPC before the signal, so it is served and its reply (or error) waits for ``closed``;
# a REST request after the signal is refused at once (``handle``).
VIA_GRPC = contextvars.ContextVar("glassbox_via_grpc", default=False)
# The model versions a call holds (``Runtime.use``), released when ``handle`` ends it.
HELD: contextvars.ContextVar[list] = contextvars.ContextVar("glassbox_held")


class Runtime:
    def __init__(self, metrics, *, max_batch: int | None = None, max_delay_s: float = 0.0, max_queue: int = 256,
                 cache_config: str | None = None):
        self.repo = None          # set once loaded; until then every call is UNAVAILABLE
        self.control = None       # serving/control.py: the repository API's loads and unloads
        self.draining = False     # shutting down (``server.drain``): replies wait for ``closed``
        self.held = False         # a worker of ``serve --workers`` whose siblings still load: not ready yet
        self.closed = asyncio.Event()  # set once gRPC takes no more calls: the replies held until then go
        self.arrivals = 0         # gRPC calls that reached the servicers while draining (``server.drain``)
        self.metrics = metrics
        self.batchers: dict[tuple[str, int, str], Batcher] = {}
        self.options = {"max_batch": max_batch, "max_delay_s": max_delay_s, "max_queue": max_queue}
        # Prometheus children cached by label values: ``labels()`` costs a lock and a dict build per
        # call, which matters at thousands of requests per second.
        self._counters: dict[tuple[str, str, str], object] = {}
        self._latency: dict[str, object] = {}
        # serve --cache-config: the response cache, used for the graphs whose config.pbtxt enables it
        self.cache = ResponseCache.from_config(cache_config, metrics) if cache_config else None
        self.cached: set[tuple[str, int, str]] = set()

    def add(self, model) -> None:
        """Start the batchers of a newly loaded version (before any call can reach it)."""
        for g in model.graphs.values():
            b = Batcher(g, max_batch=min(self.options["max_batch"] or g.max_batch_size, g.max_batch_size),
                        max_delay_s=self.options["max_delay_s"], max_queue=self.options["max_queue"],
                        metrics=self.metrics)
            b.start()
            self.batchers[(model.name, model.version, g.name)] = b
            # Cached where the graph's config.pbtxt says ``response_cache { enable: true }``, as Triton decides.
            if self.cache is not None and g.config is not None and g.config.response_cache.enable:
                self.cached.add((model.name, model.version, g.name))

    async def remove(self, model) -> None:
        """Stop the batchers of a retired version (no call holds it any more)."""
        for g in model.graphs:
            key = (model.name, model.version, g)
            self.cached.discard(key)
            if (b := self.batchers.pop(key, None)) is not None:
                await b.stop()

    async def close(self) -> None:
        """Stop every batcher (after the drain: nothing is queued any more)."""
        for b in self.batchers.values():
            await b.stop()

    def use(self, model):
        """This call holds ``model`` until it ends (``handle``): a version being retired waits for it."""
        held = HELD.get(None)
        if held is not None:  # outside a call (a unit test's direct lookup) nothing is held
            model.hold()
            held.append(model)
        return model

    def known(self, name: str) -> bool:
        return self.repo is not None and (name in self.repo.models or name in self.repo.triton_names)

    def repository(self):
        """The loaded repository; UNAVAILABLE until the first load has finished."""
        if self.repo is None:
            raise Unavailable("server is still loading models")
        return self.repo

    def model(self, name: str, version: int = 0):
        repo = self.repository()
        if not name:
            raise InvalidArgument("model name is empty")
        return self.use(repo.get(name, version))

    async def infer(self, model, graph: str, feeds: dict[str, np.ndarray], outputs, context,
                    n: int | None = None, parameters: bytes = b"") -> dict[str, np.ndarray]:
        """Batched inference: queue ``feeds`` (``n`` images) on the batcher of ``model``'s ``graph``; the
        outputs asked for, this request's rows only. (``Graph.run`` is the session call the batcher makes.)
        Where the graph is cached, a repeated request (same ``parameters`` too) is answered from the cache."""
        batcher = self.batchers.get((model.name, model.version, graph))
        if batcher is None:
            raise InvalidArgument(f"model {model.name!r} has no {graph} graph (graphs: {', '.join(model.graphs)})")
        remaining = context.time_remaining() if context is not None else None
        deadline = time.monotonic() + remaining if remaining is not None else None
        if n is None:
            n = len(next(iter(feeds.values())))
        if (model.name, model.version, graph) in self.cached:
            key = cache_key(model.name, model.version, graph, outputs, feeds, parameters)
            return await self.cache.get_or_compute(key, lambda: batcher.submit(feeds, outputs, n, deadline))
        return await batcher.submit(feeds, outputs, n, deadline)

    async def hold(self) -> None:
        """While draining, a reply waits until gRPC takes no more calls: a client answered sooner would send
        its next call at once, and gRPC cancels the calls still queued when it shuts down (``server.drain``)."""
        if self.draining:
            await self.closed.wait()

    def count(self, method: str, status: str) -> None:
        """Count a call refused before its model name was read."""
        if self.metrics:
            self._observe(method, "", status, 0.0)

    def _observe(self, method: str, model_name: str, status: str, seconds: float) -> None:
        # Names come from clients: an unknown one is labelled "unknown", so a client cannot grow
        # the metric's label set without bound.
        key = (method, model_name if self.known(model_name) else ("-" if not model_name else "unknown"), status)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.metrics.requests.labels(*key)
        counter.inc()
        hist = self._latency.get(method)
        if hist is None:
            hist = self._latency[method] = self.metrics.latency.labels(method)
        hist.observe(seconds)

    async def handle(self, method: str, model_name: str, context, fn):
        """Run ``fn()``; map ServingError to its status code, anything else to INTERNAL (logged)."""
        t0 = time.perf_counter()
        status = "OK"
        held = HELD.set([])
        try:
            if self.draining and not VIA_GRPC.get():  # a REST request (serving/rest.py) after the signal
                raise Unavailable("server is shutting down")
            return await fn()
        except ServingError as e:
            status = e.code.name
            if VIA_GRPC.get():
                await self.hold()
            await context.abort(e.code, str(e))
        except grpc.aio.AbortError:
            raise
        except asyncio.CancelledError:  # the client went away (cancel or its deadline): no reply
            status = "CANCELLED"
            raise
        except Exception as e:
            status = "INTERNAL"
            log.exception("%s on %s failed", method, model_name)
            if VIA_GRPC.get():
                await self.hold()
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
        finally:
            for m in HELD.get():
                m.release()
            HELD.reset(held)
            if self.metrics:
                self._observe(method, model_name, status, time.perf_counter() - t0)
