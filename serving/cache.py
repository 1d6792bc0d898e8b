"""The response cache: answers to repeated requests, kept within a byte budget (Triton's names).

    serve --repository exported --cache-config local,size=268435456     # 256 MiB, least recently used out

A graph is cached when the server has a cache and the graph's ``config.pbtxt`` (written by export)
says ``response_cache { enable: true }``, as Triton decides. The cache sits in ``Runtime.infer``, the
one place both APIs' inference passes (Classify, Embed, GradCam, the VAE calls and v2 ModelInfer), so a
hit skips the queue and onnxruntime but not the request's checks nor the reply's conversion.

The key is a digest of the model, version, graph, the requested outputs, each input tensor's name,
dtype, shape and bytes, and the request's parameters: two requests share an answer only when the
graph would compute the same arrays for both. The stored arrays are the ones a miss computed, made
read-only, so a hit is bit-identical to a miss. Concurrent identical requests compute once: the first
one computes, the others wait for its answer (if it fails or is cancelled, each computes its own).
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
from dataclasses import dataclass

import numpy as np

ENTRY_OVERHEAD = 256  # bytes counted per entry beyond its arrays: key, dict and array headers


class CacheConfigError(ValueError):
    """A ``--cache-config`` value that cannot be used; the CLI prints it as one line."""


@dataclass(frozen=True)
class CacheConfig:
    kind: str   # "local": in this process's memory (the only kind)
    size: int   # bytes


def parse_cache_config(text: str) -> CacheConfig:
    """Triton's ``--cache-config local,size=BYTES`` (``local,size=...`` and ``local:size=...`` both read)."""
    kind, _, rest = text.replace(":", ",", 1).partition(",")
    if kind.strip() != "local":
        raise CacheConfigError(f"--cache-config {text!r}: the cache kind must be local (as in local,size=BYTES)")
    settings = dict(part.split("=", 1) for part in rest.split(",") if "=" in part)
    unknown = [part for part in rest.split(",") if part and "=" not in part] + sorted(set(settings) - {"size"})
    if unknown:
        raise CacheConfigError(f"--cache-config {text!r}: unknown setting {', '.join(unknown)}; use local,size=BYTES")
    try:
        size = int(settings.get("size", ""))
    except ValueError:
        raise CacheConfigError(f"--cache-config {text!r}: size must be a whole number of bytes") from None
    if size <= 0:
        raise CacheConfigError(f"--cache-config {text!r}: size must be positive")
    return CacheConfig("local", size)


def cache_key(model: str, version: int, graph: str, outputs, feeds: dict[str, np.ndarray],
              parameters: bytes = b"") -> bytes:
    h = hashlib.blake2b(digest_size=32)
    for part in (model, str(version), graph, "\0".join(outputs), parameters.hex()):
        h.update(part.encode())
        h.update(b"\x00\xff")  # a separator no part contains, so ("ab", "c") and ("a", "bc") differ
    for name in sorted(feeds):
        a = np.ascontiguousarray(feeds[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.digest()


class ResponseCache:
    """LRU within ``size`` bytes, plus the computations in flight (one per key)."""

    def __init__(self, size: int, metrics=None):
        self.size = size
        self.bytes = 0
        self.entries: collections.OrderedDict[bytes, tuple[dict[str, np.ndarray], int]] = collections.OrderedDict()
        self.inflight: dict[bytes, asyncio.Future] = {}
        self.hits = self.misses = self.evictions = 0
        m = metrics
        self._hit, self._miss, self._evict, self._gauge = (
            (m.cache_hits, m.cache_misses, m.cache_evictions, m.cache_bytes) if m is not None else (None,) * 4)

    @classmethod
    def from_config(cls, config: CacheConfig | str, metrics=None) -> ResponseCache:
        if isinstance(config, str):
            config = parse_cache_config(config)
        return cls(config.size, metrics)

    def _count(self, hit: bool) -> None:
        if hit:
            self.hits += 1
            if self._hit is not None:
                self._hit.inc()
        else:
            self.misses += 1
            if self._miss is not None:
                self._miss.inc()

    def get(self, key: bytes) -> dict[str, np.ndarray] | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        self.entries.move_to_end(key)
        return entry[0]

    def put(self, key: bytes, value: dict[str, np.ndarray]) -> None:
        stored = {}
        for name, a in value.items():
            # A copy: the batcher's answer is a view of the whole batch's array, which would stay alive
            # (and uncounted) as long as any row of it is cached.
            a = np.array(a, copy=True, order="C")
            a.flags.writeable = False  # a hit hands out these very arrays: nobody may change them
            stored[name] = a
        cost = sum(a.nbytes for a in stored.values()) + ENTRY_OVERHEAD
        if cost > self.size or key in self.entries:
            return  # larger than the whole budget: never cached
        while self.bytes + cost > self.size:
            _, (_, freed) = self.entries.popitem(last=False)
            self.bytes -= freed
            self.evictions += 1
            if self._evict is not None:
                self._evict.inc()
        self.entries[key] = (stored, cost)
        self.bytes += cost
        if self._gauge is not None:
            self._gauge.set(self.bytes)

    async def get_or_compute(self, key: bytes, compute) -> dict[str, np.ndarray]:
        """The cached answer, the one being computed for the same key, or ``await compute()`` (then kept)."""
        value = self.get(key)
        if value is not None:
            self._count(True)
            return value
        pending = self.inflight.get(key)
        if pending is not None:
            try:
                value = await asyncio.shield(pending)
                self._count(True)
                return value
            except BaseException:  # noqa: BLE001 - the first caller failed or went away: compute our own
                if asyncio.current_task().cancelling():
                    raise
                return await compute()
        self._count(False)
        fut = self.inflight[key] = asyncio.get_running_loop().create_future()
        try:
            value = await compute()
        except BaseException as e:
            fut.set_exception(e if isinstance(e, Exception) else RuntimeError("abandoned"))
            fut.exception()  # retrieved: no "never retrieved" warning when nobody waited
            raise
        finally:
            del self.inflight[key]
        self.put(key, value)
        fut.set_result(self.get(key) or value)
        return fut.result()
