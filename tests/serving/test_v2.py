"""The KServe v2 servicer (serving/v2.py) in-process against a fake runtime: ModelInfer's checks, each seen
refusing (or accepting) exactly the request it is there for, the feeds and replies, metadata, config and
readiness. Fast; ``make mutation`` scores serving/v2.py with it. Its properties: test_v2_properties.py;
v2 through a real server: test_serving.py (gRPC, tritonclient), test_rest.py (REST).

    .venv/bin/pytest -x -q tests/serving/test_v2.py
"""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serving.errors import InvalidArgument, NotFound, ServingError
from tests.helpers.fakes import infer_request, servicer


def call(coro):
    return asyncio.run(coro)


def x4(b=2):
    return np.arange(b * 4, dtype=np.float32).reshape(b, 1, 2, 2)


def test_v2_infer_raw_and_typed_contents_reach_the_model_and_come_back():
    s, rt, spb, _ = servicer()
    for raw in (True, False):
        req = infer_request(spb, "net", {"input": x4()}, raw=raw)
        r = call(s.ModelInfer(req, None))
        assert (r.model_name, r.model_version, r.id) == ("net", "2", "req-1")
        assert [o.name for o in r.outputs] == ["logits", "probabilities"]  # the graph's outputs by default
        assert [o.datatype for o in r.outputs] == ["FP32", "FP32"] and list(r.outputs[0].shape) == [2, 3]
        logits = np.frombuffer(r.raw_output_contents[0], np.float32).reshape(2, 3)
        assert np.array_equal(logits, np.arange(6).reshape(2, 3))
    assert rt.calls[0] == ("net", 2, "classifier", ["input"], ["logits", "probabilities"], 2)
    assert rt.calls[1] == rt.calls[0]


def test_v2_feeds_carry_the_request_values_and_dtypes():
    """The arrays handed to the model are the request's, with the manifest's dtypes and shapes."""
    s, rt, spb, _ = servicer()
    seen = {}

    async def infer(model, graph, feeds, outputs, context, n=None, *_):  # *_: the cache key (parameters)
        seen.update(feeds)
        return {"cam": np.zeros((n, 2, 2), np.float32), "logits": np.zeros((n, 3), np.float32)}
    rt.infer = infer
    t = np.array([2, 0], np.int64)
    for raw in (True, False):
        seen.clear()
        r = call(s.ModelInfer(infer_request(spb, "net.gradcam", {"input": x4(), "target": t}, raw=raw,
                                            outputs=["cam"]), None))
        assert [o.name for o in r.outputs] == ["cam"] and len(r.raw_output_contents) == 1
        assert seen["input"].dtype == np.float32 and np.array_equal(seen["input"], x4())
        assert seen["target"].dtype == np.int64 and np.array_equal(seen["target"], t)


def test_v2_infer_a_named_version_and_the_decoder():
    s, rt, spb, _ = servicer()
    r = call(s.ModelInfer(infer_request(spb, "net", {"input": x4(1)}, version="1", outputs=["probabilities"]), None))
    assert r.model_version == "1" and [o.name for o in r.outputs] == ["probabilities"]
    assert rt.calls[-1][:3] == ("net", 1, "classifier")
    z = np.array([[1.5, -2.0]], np.float32)
    r = call(s.ModelInfer(infer_request(spb, "vae.decoder", {"latent": z}), None))
    assert list(r.outputs[0].shape) == [1, 1, 2, 2]
    assert np.array_equal(np.frombuffer(r.raw_output_contents[0], np.float32), [1.5, -2.0, 1.5, -2.0])


def test_v2_nan_and_inf_reach_the_model_as_triton_does():
    s, rt, spb, _ = servicer()
    x = x4(1)
    x[0, 0, 0, 0] = np.nan
    call(s.ModelInfer(infer_request(spb, "net", {"input": x}), None))
    assert rt.calls and rt.calls[-1][5] == 1


def v2_error(s, req) -> str:
    with pytest.raises(ServingError) as e:
        call(s.ModelInfer(req, None))
    assert type(e.value) is InvalidArgument, (type(e.value), e.value)
    return str(e.value)


def test_v2_refuses_unknown_repeated_and_missing_inputs():
    s, rt, spb, _ = servicer()
    x, t = x4(), np.array([1, 2], np.int64)
    assert v2_error(s, infer_request(spb, "net", {"image": x})) == \
        "net: input 'image' unknown or repeated; inputs: input"
    req = infer_request(spb, "net", {"input": x})
    req.inputs.append(req.inputs[0])
    req.raw_input_contents.append(req.raw_input_contents[0])
    assert "input 'input' unknown or repeated" in v2_error(s, req)
    assert v2_error(s, infer_request(spb, "net.gradcam", {"input": x})) == \
        "net.gradcam: inputs ['input'], expected ['input', 'target']"
    req = infer_request(spb, "net.gradcam", {"input": x, "target": t})
    del req.raw_input_contents[1]
    assert v2_error(s, req) == "1 raw_input_contents for 2 inputs"
    assert not rt.calls


def test_v2_refuses_a_wrong_datatype():
    s, rt, spb, _ = servicer()
    assert v2_error(s, infer_request(spb, "net", {"input": x4()}, datatypes={"input": "FP64"})) == \
        "input 'input': datatype FP64, expected FP32"
    assert v2_error(s, infer_request(spb, "net", {"input": x4()}, datatypes={"input": ""})) == \
        "input 'input': datatype (none), expected FP32"
    t = np.array([1, 2], np.int64)
    assert "datatype FP32, expected INT64" in v2_error(
        s, infer_request(spb, "net.gradcam", {"input": x4(), "target": t}, datatypes={"target": "FP32"}))
    assert not rt.calls


@pytest.mark.parametrize("shape", [[2, 1, 2], [2, 1, 2, 3], [2, 2, 2, 2], [1, 2, 1, 2, 2], [4]])
def test_v2_refuses_a_shape_the_model_does_not_take(shape):
    s, _, spb, _ = servicer()
    assert v2_error(s, infer_request(spb, "net", {"input": x4()}, shapes={"input": shape})) == \
        f"input 'input': shape {shape} does not match the model's ['N', 1, 2, 2]"


def test_v2_refuses_empty_oversized_and_disagreeing_batches():
    s, rt, spb, _ = servicer()
    assert v2_error(s, infer_request(spb, "net", {"input": x4(0)})) == \
        "input 'input': empty batch (shape [0, 1, 2, 2])"
    assert v2_error(s, infer_request(spb, "net", {"input": x4()}, shapes={"input": [-2, 1, 2, 2]})).startswith(
        "input 'input': empty batch")
    # max_batch_size of the classifier is 4: 4 runs, 5 is refused
    call(s.ModelInfer(infer_request(spb, "net", {"input": x4(4)}), None))
    assert v2_error(s, infer_request(spb, "net", {"input": x4(5)})) == \
        "input 'input': batch of 5 is above the maximum of 4; split it"
    assert v2_error(s, infer_request(spb, "net.gradcam", {"input": x4(2), "target": np.zeros(1, np.int64)})) == \
        "inputs disagree on the batch size (2 and 1)"
    assert len(rt.calls) == 1


@pytest.mark.parametrize("delta", [-1, 1, -4, 4])
def test_v2_refuses_a_raw_byte_count_that_does_not_match(delta):
    s, _, spb, _ = servicer()
    req = infer_request(spb, "net", {"input": x4()})
    data = req.raw_input_contents[0]
    req.raw_input_contents[0] = data[:delta] if delta < 0 else data + bytes(delta)
    assert v2_error(s, req) == f"input 'input': shape [2, 1, 2, 2] needs 32 bytes, got {32 + delta}"


def test_v2_refuses_a_typed_value_count_that_does_not_match():
    s, _, spb, _ = servicer()
    req = infer_request(spb, "net", {"input": x4()}, raw=False)
    req.inputs[0].contents.fp32_contents.append(1.0)
    assert v2_error(s, req) == "input 'input': shape [2, 1, 2, 2] needs 8 values, got 9"
    t = np.array([1, 2], np.int64)
    req = infer_request(spb, "net.gradcam", {"input": x4(), "target": t}, raw=False)
    del req.inputs[1].contents.int64_contents[1]
    assert v2_error(s, req) == "input 'target': shape [2] needs 2 values, got 1"


def test_v2_checks_gradcam_targets_against_the_classes():
    """target must be a class index 0..classes-1 (3 logits here): -1 and 3 refused, 0 and 2 taken."""
    s, rt, spb, _ = servicer()
    for bad in ([0, 3], [-1, 0]):
        assert v2_error(s, infer_request(spb, "net.gradcam", {"input": x4(), "target": np.array(bad, np.int64)})) \
            == "input 'target': class index out of range 0..2"
    call(s.ModelInfer(infer_request(spb, "net.gradcam", {"input": x4(), "target": np.array([0, 2], np.int64)}),
                      None))
    assert len(rt.calls) == 1


def test_v2_refuses_unknown_outputs_models_and_versions():
    s, rt, spb, _ = servicer()
    assert v2_error(s, infer_request(spb, "net", {"input": x4()}, outputs=["logits", "cam"])) == \
        "unknown output 'cam'; outputs: logits, probabilities"
    assert v2_error(s, infer_request(spb, "net", {"input": x4()}, version="v2")) == \
        "model version must be an integer, got 'v2'"
    with pytest.raises(NotFound, match=r"^unknown model 'nope'; models: net, net.gradcam, vae.decoder$"):
        call(s.ModelInfer(infer_request(spb, "nope", {"input": x4()}), None))
    with pytest.raises(NotFound, match=r"^model 'net.gradcam' version 1 has no gradcam graph$"):
        call(s.ModelInfer(infer_request(spb, "net.gradcam", {"input": x4()}, version="1"), None))
    assert not rt.calls


def test_v2_failures_are_not_cached_and_successes_are():
    s, rt, spb, _ = servicer()
    rt.loading = True
    from serving.errors import Unavailable
    with pytest.raises(Unavailable):
        call(s.ModelInfer(infer_request(spb, "net", {"input": x4()}), None))
    rt.loading = False
    call(s.ModelInfer(infer_request(spb, "net", {"input": x4()}), None))
    assert list(s._cache) == [("net", "")]
    cached = s._cache[("net", "")]
    call(s.ModelInfer(infer_request(spb, "net", {"input": x4()}), None))
    assert s._cache[("net", "")] is cached


def test_v2_server_and_model_metadata_config_and_readiness():
    s, rt, spb, mc = servicer()
    assert call(s.ServerLive(None, None)).live
    assert call(s.ServerReady(None, None)).ready
    for flag in ("draining", "held"):
        setattr(rt, flag, True)
        assert not call(s.ServerReady(None, None)).ready, flag
        setattr(rt, flag, False)
    rt.repo = None
    assert not call(s.ServerReady(None, None)).ready
    rt.repo = rt
    meta = call(s.ServerMetadata(None, None))
    assert (meta.name, meta.version) == ("glassbox", "9.9")
    assert list(meta.extensions) == ["model_configuration", "model_repository", "statistics"]

    assert call(s.ModelReady(spb.ModelReadyRequest(name="net.gradcam"), None)).ready
    assert not call(s.ModelReady(spb.ModelReadyRequest(name="net.gradcam", version="1"), None)).ready
    assert not call(s.ModelReady(spb.ModelReadyRequest(name="nope"), None)).ready

    m = call(s.ModelMetadata(spb.ModelMetadataRequest(name="net.gradcam"), None))
    assert (m.name, list(m.versions), m.platform) == ("net.gradcam", ["1", "2"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in m.inputs] == [("input", "FP32", [-1, 1, 2, 2]),
                                                                        ("target", "INT64", [-1])]
    assert [(t.name, t.datatype) for t in m.outputs] == [("cam", "FP32"), ("logits", "FP32")]

    c = call(s.ModelConfig(spb.ModelConfigRequest(name="net.gradcam"), None)).config
    assert (c.name, c.platform, c.max_batch_size) == ("net.gradcam", "onnxruntime_onnx", 2)
    assert [(i.name, i.data_type, list(i.dims)) for i in c.input] == [("input", mc.TYPE_FP32, [1, 2, 2]),
                                                                      ("target", mc.TYPE_INT64, [1])]
    assert [(o.name, o.data_type, list(o.dims)) for o in c.output] == [("cam", mc.TYPE_FP32, [2, 2]),
                                                                       ("logits", mc.TYPE_FP32, [3])]
    assert c.dynamic_batching.max_queue_delay_microseconds == 250000


def test_v2_rpcs_report_their_method_and_model_to_the_runtime():
    """handle() labels metrics and logs with the RPC and model name; infer() gets the call's context (deadline)."""
    s, rt, spb, _ = servicer()
    ctx = object()
    call(s.ModelReady(spb.ModelReadyRequest(name="net"), ctx))
    call(s.ModelMetadata(spb.ModelMetadataRequest(name="net"), ctx))
    call(s.ModelConfig(spb.ModelConfigRequest(name="vae.decoder"), ctx))
    call(s.ModelInfer(infer_request(spb, "net", {"input": x4()}), ctx))
    assert rt.handled == [("ModelReady", "net", ctx), ("ModelMetadata", "net", ctx),
                          ("ModelConfig", "vae.decoder", ctx), ("ModelInfer", "net", ctx)]
    assert rt.contexts == [ctx]


def test_v2_metadata_and_config_honour_the_version():
    """Version 1 of net was exported without Grad-CAM: asking for it by version is NOT_FOUND."""
    s, _, spb, _ = servicer()
    for rpc, req in ((s.ModelMetadata, spb.ModelMetadataRequest), (s.ModelConfig, spb.ModelConfigRequest)):
        with pytest.raises(NotFound, match="version 1 has no gradcam graph"):
            call(rpc(req(name="net.gradcam", version="1"), None))
        assert call(rpc(req(name="net", version="1"), None)) is not None


def test_v2_unknown_input_lists_every_input():
    s, _, spb, _ = servicer()
    assert v2_error(s, infer_request(spb, "net.gradcam", {"x": x4()})) == \
        "net.gradcam: input 'x' unknown or repeated; inputs: input, target"


def test_v2_typed_float_contents_reach_the_model_as_float32():
    s, rt, spb, _ = servicer()
    seen = {}

    async def infer(model, graph, feeds, outputs, context, n=None, *_):  # *_: the cache key (parameters)
        seen.update(feeds)
        return {"logits": np.zeros((n, 3), np.float32), "probabilities": np.zeros((n, 3), np.float32)}
    rt.infer = infer
    call(s.ModelInfer(infer_request(spb, "net", {"input": x4()}, raw=False), None))
    assert seen["input"].dtype == np.float32 and np.array_equal(seen["input"], x4())


# --- The repository and statistics extensions (serving/v2_repository.py), in process.

def test_v2_repository_index_lists_every_version_with_its_state_and_the_models_not_loaded():
    s, rt, _, _ = servicer()
    rt.models["net"][1].state, rt.models["net"][1].error = "UNAVAILABLE", "outside the version policy (latest:1)"
    index = call(s.RepositoryIndex(s_pb().RepositoryIndexRequest(), None))
    assert [(m.name, m.version, m.state, m.reason) for m in index.models] == [
        ("net", "1", "UNAVAILABLE", "outside the version policy (latest:1)"), ("net", "2", "READY", ""),
        ("vae", "1", "READY", ""), ("waiting", "", "UNAVAILABLE", "not loaded")]
    ready = call(s.RepositoryIndex(s_pb().RepositoryIndexRequest(ready=True), None))
    assert [(m.name, m.version) for m in ready.models] == [("net", "2"), ("vae", "1")]
    assert rt.handled[-1][:2] == ("RepositoryIndex", "")


def test_v2_repository_load_and_unload_reach_model_control_by_model_name():
    s, rt, spb, _ = servicer()
    call(s.RepositoryModelLoad(spb.RepositoryModelLoadRequest(model_name="net"), None))
    call(s.RepositoryModelUnload(spb.RepositoryModelUnloadRequest(model_name="net.gradcam"), None))  # its model
    call(s.RepositoryModelLoad(spb.RepositoryModelLoadRequest(model_name="waiting"), None))  # on disk only
    assert rt.control.calls == [("load", "net"), ("unload", "net"), ("load", "waiting")]
    assert [h[:2] for h in rt.handled] == [("RepositoryModelLoad", "net"), ("RepositoryModelUnload", "net.gradcam"),
                                           ("RepositoryModelLoad", "waiting")]
    with pytest.raises(InvalidArgument, match="^model_name is empty$"):
        call(s.RepositoryModelLoad(spb.RepositoryModelLoadRequest(), None))
    with pytest.raises(InvalidArgument, match="^model_name is empty$"):
        call(s.RepositoryModelUnload(spb.RepositoryModelUnloadRequest(), None))
    assert len(rt.control.calls) == 3


def test_v2_model_statistics_count_each_request_by_graph_and_version():
    s, rt, spb, _ = servicer()
    call(s.ModelInfer(infer_request(spb, "net", {"input": x4()}), None))
    with pytest.raises(InvalidArgument):  # resolved, then refused: a failed request of net v2
        call(s.ModelInfer(infer_request(spb, "net", {"input": x4()}, datatypes={"input": "INT64"}), None))
    stats = call(s.ModelStatistics(spb.ModelStatisticsRequest(name="net"), None)).model_stats
    assert [(m.name, m.version) for m in stats] == [("net", "1"), ("net", "2")]
    v2 = stats[1].inference_stats
    assert (v2.success.count, v2.fail.count) == (1, 1) and v2.success.ns > 0 and v2.fail.ns > 0
    assert stats[0].inference_stats.success.count == 0
    only = call(s.ModelStatistics(spb.ModelStatisticsRequest(name="net", version="1"), None)).model_stats
    assert [(m.name, m.version) for m in only] == [("net", "1")]
    every = call(s.ModelStatistics(spb.ModelStatisticsRequest(), None)).model_stats
    assert [(m.name, m.version) for m in every] == [("net", "1"), ("net", "2"), ("net.gradcam", "2"),
                                                    ("vae.decoder", "1")]
    with pytest.raises(NotFound, match="^unknown model 'nope'; models: net, net.gradcam, vae.decoder$"):
        call(s.ModelStatistics(spb.ModelStatisticsRequest(name="nope"), None))
    with pytest.raises(InvalidArgument, match="^model version must be an integer, got 'x'$"):
        call(s.ModelStatistics(spb.ModelStatisticsRequest(name="net", version="x"), None))
    assert rt.handled[-1][:2] == ("ModelStatistics", "net")


def test_v2_statistics_carry_the_batchers_figures():
    from serving.stats import Stats
    from serving.v2_repository import model_statistics
    st = Stats()
    st.batch([5, 7], 3, 11, 13, 17)
    st.batch([2], 1, 1, 2, 3)
    st.request(100, True)
    m = model_statistics("net", 2, st)
    assert (m.name, m.version, m.inference_count, m.execution_count) == ("net", "2", 4, 2)
    i = m.inference_stats
    assert (i.queue.count, i.queue.ns) == (3, 14)
    assert (i.compute_input.count, i.compute_input.ns) == (3, 11 * 2 + 1)
    assert (i.compute_infer.count, i.compute_infer.ns) == (3, 13 * 2 + 2)
    assert (i.compute_output.count, i.compute_output.ns) == (3, 17 * 2 + 3)
    assert (i.success.count, i.success.ns, i.fail.count) == (1, 100, 0)
    assert [(b.batch_size, b.compute_infer.count, b.compute_infer.ns) for b in m.batch_stats] == [(1, 1, 2), (3, 1, 13)]
    assert m.last_inference > 0


def test_v2_lookups_are_cached_until_the_repository_changes_and_every_call_holds_its_model():
    s, rt, spb, _ = servicer()
    for _ in range(2):
        call(s.ModelInfer(infer_request(spb, "net", {"input": x4()}), None))
    cached = s._cache[("net", "")]
    assert rt.used == [("net", 2), ("net", 2)]  # the miss and the hit both hold version 2
    rt.generation += 1  # a version was loaded or retired
    call(s.ModelInfer(infer_request(spb, "net", {"input": x4()}), None))
    assert s._cache[("net", "")] is not cached and rt.used == [("net", 2)] * 3
    call(s.ModelInfer(infer_request(spb, "net", {"input": x4()}), None))
    assert len(rt.used) == 4


def s_pb():
    from tests.helpers.fakes import v2_modules
    return v2_modules()[1]
