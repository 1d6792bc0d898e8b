"""The response cache (serving/cache.py): a hit equals a miss bit for bit; another version, output set or
parameter misses; the byte budget holds under 10,000 distinct inputs; concurrent identical requests compute
once; both APIs through a real server, with Prometheus counting."""
import asyncio
import shutil
import time
import urllib.request

import numpy as np
import pytest

from glassbox.data import load_dataset, preprocess
from serving.cache import CacheConfigError, ResponseCache, cache_key, parse_cache_config
from serving.configs import parse_config
from serving.metrics import Metrics
from tests.helpers.server import free_port, start_server, stop_server


def test_parse_cache_config():
    assert parse_cache_config("local,size=1048576").size == 1048576
    assert parse_cache_config("local:size=10").size == 10
    for bad in ("redis,size=10", "local", "local,size=0", "local,size=1e6", "local,size=10,ttl=5", "local,size=-1"):
        with pytest.raises(CacheConfigError):
            parse_cache_config(bad)


def test_export_enables_the_cache_per_graph(repository):
    assert parse_config(repository / "lenet" / "1" / "classifier.config.pbtxt").response_cache.enable
    assert parse_config(repository / "cvae" / "1" / "decoder.config.pbtxt").response_cache.enable


def test_size_bound_under_10000_distinct_inputs():
    metrics = Metrics()
    cache = ResponseCache(size=50_000, metrics=metrics)
    rng = np.random.default_rng(0)
    keys = []
    for _ in range(10_000):
        x = rng.standard_normal((1, 1, 28, 28)).astype(np.float32)
        keys.append(cache_key("lenet", 1, "classifier", ["logits"], {"input": x}))
        cache.put(keys[-1], {"logits": rng.standard_normal((1, 10)).astype(np.float32)})
        assert cache.bytes <= cache.size
    held = len(cache.entries)
    assert 0 < held < 10_000 and cache.evictions == 10_000 - held
    assert cache.get(keys[0]) is None and cache.get(keys[-1]) is not None  # least recently used out first
    assert cache.bytes == sum(cost for _, cost in cache.entries.values())
    assert metrics.registry.get_sample_value("glassbox_cache_bytes") == cache.bytes
    assert metrics.registry.get_sample_value("glassbox_cache_evictions_total") == cache.evictions


def test_lru_keeps_what_was_used():
    cache = ResponseCache(size=3 * (40 + 256))
    for k in (b"a", b"b", b"c"):
        cache.put(k, {"logits": np.zeros((1, 10), np.float32)})
    cache.get(b"a")  # used: b is now the least recent
    cache.put(b"d", {"logits": np.zeros((1, 10), np.float32)})
    assert set(cache.entries) == {b"a", b"c", b"d"}


def test_concurrent_identical_requests_compute_once():
    async def go():
        cache, calls = ResponseCache(size=10_000), []

        async def compute():
            calls.append(1)
            await asyncio.sleep(0.01)  # in flight while the others arrive
            return {"logits": np.arange(10, dtype=np.float32)[None]}
        out = await asyncio.gather(*[cache.get_or_compute(b"k", compute) for _ in range(20)])
        assert len(calls) == 1 and (cache.hits, cache.misses) == (19, 1)
        assert all(o["logits"].tobytes() == out[0]["logits"].tobytes() for o in out)

        async def fails():
            calls.append(1)
            await asyncio.sleep(0.01)
            raise RuntimeError("the first caller's deadline")
        results = await asyncio.gather(cache.get_or_compute(b"j", fails), cache.get_or_compute(b"j", compute),
                                       return_exceptions=True)
        assert isinstance(results[0], RuntimeError) and results[1]["logits"].shape == (1, 10)  # computed its own
        assert not cache.inflight
    asyncio.run(go())


@pytest.fixture()
def two_versions(tmp_path, repository):
    repo = tmp_path / "repo"
    shutil.copytree(repository / "lenet" / "1", repo / "lenet" / "1")
    shutil.copytree(repository / "lenet" / "1", repo / "lenet" / "2")
    return repo


def cache_metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("glassbox_cache")}


def test_both_apis_through_a_server(two_versions, fmnist_dir):
    import tritonclient.grpc as tc

    from serving.client import GlassboxClient
    port = free_port()
    proc, address = start_server(two_versions, "--metrics-port", str(port), "--cache-config", "local,size=4000000")
    try:
        c = GlassboxClient(address)
        x = preprocess(load_dataset("fashion-mnist", "test", data_dir=fmnist_dir).images[:8],
                       c.get_model("lenet")["preprocessing"])
        first, again = (c.classify("lenet", x, return_logits=True) for _ in range(2))
        assert first.logits.tobytes() == again.logits.tobytes()
        cams = [c.gradcam("lenet", x).cams for _ in range(2)]
        assert cams[0].tobytes() == cams[1].tobytes()
        v2 = tc.InferenceServerClient(address)
        inp = tc.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)

        def logits(version="", outputs=("logits",), parameters=None):
            res = v2.infer("lenet", [inp], model_version=version, parameters=parameters,
                           outputs=[tc.InferRequestedOutput(o) for o in outputs])
            return res.as_numpy("logits")
        a, b = logits(), logits()
        assert a.tobytes() == b.tobytes() == first.logits.tobytes()
        # Misses: Classify's first call; GradCam's first (its target lookup, logits alone, then its graph).
        # Hits: Classify's second, GradCam's second (both lookups), both v2 calls (logits alone, as GradCam's).
        m = cache_metrics(port)
        assert (m["glassbox_cache_misses_total"], m["glassbox_cache_hits_total"]) == (3, 5)
        assert 0 < m["glassbox_cache_bytes"] <= 4_000_000
        assert logits(version="1").tobytes() == a.tobytes()            # another version: same weights, a miss
        logits(outputs=("logits", "fc1"))                               # another output set
        logits(parameters={"glassbox_tag": "x"})                        # another parameter
        assert cache_metrics(port)["glassbox_cache_misses_total"] == 6
        y = x[::-1].copy()  # new inputs, 16 identical calls at once: one computes, 15 wait for it
        inp.set_data_from_numpy(y)
        done = []
        for _ in range(16):
            v2.async_infer("lenet", [inp], callback=lambda result, error: done.append(error))
        while len(done) < 16:
            time.sleep(0.01)
        assert done == [None] * 16
        m = cache_metrics(port)
        assert (m["glassbox_cache_misses_total"], m["glassbox_cache_hits_total"]) == (7, 5 + 15)
    finally:
        stop_server(proc)
