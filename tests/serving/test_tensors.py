"""Request validation in-process, fast: ``serving.tensors`` (the domain API) and the KServe v2 servicer
(``serving.v2``) against a fake runtime, so every check can be seen refusing (or accepting) exactly the
request it is there for. The end-to-end twins of these tests (test_serving, test_fuzz) go through a real
server process; these are the ones ``make mutation`` scores the modules with.
"""
from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from serving import tensors
from serving._generated.glassbox.v1 import glassbox_pb2 as pb
from serving.errors import InvalidArgument, NotFound, ServingError
from tests.helpers.fakes import infer_request, servicer

SPEC = {"channels": 1, "size": [4, 4], "mean": [0.5], "std": [0.25]}
MANIFEST = {"input": {"name": "input", "shape": [-1, 1, 4, 4]}, "preprocessing": SPEC, "max_batch_size": 3}


def tensor(a: np.ndarray, dtype: str | None = None) -> pb.Tensor:
    return pb.Tensor(shape=a.shape, data=a.tobytes(), dtype=dtype if dtype is not None else str(a.dtype))


def encoded(img: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt)
    return buf.getvalue()


# --- tensors.from_proto / to_proto ---------------------------------------------------------------

def test_from_proto_reads_each_dtype_and_shape():
    """float32 (named or the empty default) and int64 come back with their values and shape."""
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    for name in ("float32", ""):
        got = tensors.from_proto(tensor(x, name), "images")
        assert got.dtype == np.float32 and got.shape == (2, 3) and np.array_equal(got, x)
    i = np.array([[7, -1]], np.int64)
    got = tensors.from_proto(tensor(i), "t")
    assert got.dtype == np.int64 and np.array_equal(got, i)
    # A zero-size axis is a valid shape (the empty batch is refused later by check_batch, not here).
    assert tensors.from_proto(tensor(np.zeros((0, 3), np.float32)), "t").shape == (0, 3)


@pytest.mark.parametrize("dtype", ["float64", "int32", "FP32", "uint8"])
def test_from_proto_refuses_other_dtypes(dtype):
    with pytest.raises(InvalidArgument, match=rf"^images: dtype '{dtype}' not supported \(float32 or int64\)$"):
        tensors.from_proto(pb.Tensor(shape=[1], data=bytes(8), dtype=dtype), "images")


@pytest.mark.parametrize("shape", [[], [2, -1], [-3]])
def test_from_proto_refuses_empty_or_negative_shapes(shape):
    with pytest.raises(InvalidArgument, match=r"^x: shape \[.*\] is not a valid tensor shape \(a batch axis first"):
        tensors.from_proto(pb.Tensor(shape=shape, data=b"", dtype="float32"), "x")


@pytest.mark.parametrize(("dtype", "extra"), [("float32", -4), ("float32", 4), ("float32", 1), ("int64", -8)])
def test_from_proto_refuses_a_byte_count_that_does_not_match(dtype, extra):
    """The byte count is checked against shape x itemsize (4 for float32, 8 for int64), both ways."""
    size = 4 if dtype == "float32" else 8
    n = 6 * size + extra
    with pytest.raises(InvalidArgument) as e:
        tensors.from_proto(pb.Tensor(shape=[2, 3], data=bytes(n), dtype=dtype), "x")
    assert str(e.value) == f"x: shape [2, 3] needs 6 {dtype} values ({6 * size} bytes), got {n} bytes"


def test_to_proto_round_trips_and_names_the_dtype():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]  # not contiguous: must still encode row-major
    t = tensors.to_proto(x)
    assert list(t.shape) == [3, 2] and t.dtype == "float32" and t.data == np.ascontiguousarray(x).tobytes()
    i = np.array([1, 2], np.int64)
    assert tensors.to_proto(i).dtype == "int64"
    assert np.array_equal(tensors.from_proto(tensors.to_proto(i), "i"), i)


# --- tensors.check_batch -------------------------------------------------------------------------

def test_check_batch_accepts_a_valid_batch_up_to_the_maximum():
    x = np.zeros((3, 1, 4, 4), np.float32)
    assert tensors.check_batch(x, [-1, 1, 4, 4], 3) is x
    ints = np.full((2, 5), 2**40, np.int64)  # integers are not checked for NaN (they have none)
    assert tensors.check_batch(ints, [-1, 5], 2) is ints


@pytest.mark.parametrize("shape", [(2, 1, 4), (2, 1, 4, 5), (2, 3, 4, 4), (2, 1, 4, 4, 1)])
def test_check_batch_refuses_another_shape(shape):
    with pytest.raises(InvalidArgument) as e:
        tensors.check_batch(np.zeros(shape, np.float32), [-1, 1, 4, 4], 8)
    assert str(e.value) == f"images: shape {list(shape)} does not match the model's ['N', 1, 4, 4]"


def test_check_batch_refuses_empty_and_oversized_batches():
    with pytest.raises(InvalidArgument, match=r"^latents: empty batch$"):
        tensors.check_batch(np.zeros((0, 2), np.float32), [-1, 2], 4, "latents")
    with pytest.raises(InvalidArgument, match=r"^images: batch of 5 is above the maximum of 4; split it$"):
        tensors.check_batch(np.zeros((5, 2), np.float32), [-1, 2], 4)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_batch_refuses_nan_and_inf(bad):
    x = np.zeros((2, 3), np.float32)
    x[1, 2] = bad  # one bad value anywhere is enough
    with pytest.raises(InvalidArgument, match=r"^images: contains NaN or Inf$"):
        tensors.check_batch(x, [-1, 3], 4)


# --- tensors.decode_images / images_from_request -------------------------------------------------

def test_decode_images_preprocesses_png_and_jpeg_like_training():
    """Gray PNG pixels v come out as (v/255 - mean)/std; an RGB JPEG is converted to the model's gray."""
    from glassbox.data import preprocess
    gray = np.array([[0, 255, 51, 102]] * 4, np.uint8)
    x = tensors.decode_images([encoded(gray)], SPEC)
    assert x.shape == (1, 1, 4, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0, 0], (np.array([0, 1, 0.2, 0.4]) - 0.5) / 0.25, rtol=1e-6)
    rgb = np.zeros((4, 4, 3), np.uint8)
    two = tensors.decode_images([encoded(gray), encoded(rgb, "JPEG")], SPEC)
    assert two.shape == (2, 1, 4, 4) and np.abs(two[1] - (0 - 0.5) / 0.25).max() < 0.1
    # A 3-channel model gets RGB: the same pixels as preprocess of the RGB array.
    spec3 = {"channels": 3, "size": [4, 4], "mean": [0.5] * 3, "std": [0.25] * 3}
    col = np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    np.testing.assert_array_equal(tensors.decode_images([encoded(col)], spec3), preprocess(col[None], spec3))


@pytest.mark.parametrize("data", [b"", b"not an image", "gif", "bmp", "truncated"])
def test_decode_images_refuses_what_is_not_png_or_jpeg(data):
    """Garbage, truncated PNGs and formats Pillow could read but the API does not promise (GIF, BMP)."""
    img = np.zeros((4, 4), np.uint8)
    if data in ("gif", "bmp"):
        data = encoded(img, data.upper())
    elif data == "truncated":
        noise = encoded(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
        data = noise[:len(noise) // 2]  # cut inside the pixel data
    with pytest.raises(InvalidArgument, match=r"^image 1: cannot decode as PNG/JPEG \(\w+: ") as e:
        tensors.decode_images([encoded(img), data], SPEC)
    assert "\n" not in str(e.value)


def test_decode_images_refuses_an_empty_list():
    with pytest.raises(InvalidArgument, match=r"^images: empty batch$"):
        tensors.decode_images([], SPEC)


def test_images_from_request_tensor_and_encoded():
    x = np.ones((2, 1, 4, 4), np.float32)
    got = tensors.images_from_request(pb.Images(tensor=tensor(x)), MANIFEST)
    assert np.array_equal(got, x)
    files = pb.Images(encoded=pb.EncodedImages(files=[encoded(np.zeros((4, 4), np.uint8))] * 3))
    assert tensors.images_from_request(files, MANIFEST).shape == (3, 1, 4, 4)


def test_images_from_request_refuses_bad_requests():
    with pytest.raises(InvalidArgument, match=r"^images: give either a tensor or encoded files$"):
        tensors.images_from_request(pb.Images(), MANIFEST)
    with pytest.raises(InvalidArgument, match=r"^images: tensor dtype must be float32$"):
        tensors.images_from_request(pb.Images(tensor=tensor(np.ones((1, 1, 4, 4), np.int64))), MANIFEST)
    # Too many files are refused before any is decoded (these are not even images).
    with pytest.raises(InvalidArgument, match=r"^images: batch of 4 is above the maximum of 3; split it$"):
        tensors.images_from_request(pb.Images(encoded=pb.EncodedImages(files=[b"x"] * 4)), MANIFEST)
    # The tensor path goes through check_batch: shape, batch size and NaN with the manifest's limits.
    with pytest.raises(InvalidArgument, match="above the maximum of 3"):
        tensors.images_from_request(pb.Images(tensor=tensor(np.ones((4, 1, 4, 4), np.float32))), MANIFEST)
    with pytest.raises(InvalidArgument, match="does not match"):
        tensors.images_from_request(pb.Images(tensor=tensor(np.ones((1, 1, 4, 5), np.float32))), MANIFEST)


def test_images_from_request_default_maximum_is_256():
    """A manifest without max_batch_size allows 256 images and refuses 257."""
    m = {k: v for k, v in MANIFEST.items() if k != "max_batch_size"}
    with pytest.raises(InvalidArgument, match="batch of 257 is above the maximum of 256"):
        tensors.images_from_request(pb.Images(encoded=pb.EncodedImages(files=[b"x"] * 257)), m)
    assert len(tensors.images_from_request(pb.Images(tensor=tensor(np.zeros((256, 1, 4, 4), np.float32))), m)) == 256
    with pytest.raises(InvalidArgument, match="batch of 257 is above the maximum of 256"):
        tensors.images_from_request(pb.Images(tensor=tensor(np.zeros((257, 1, 4, 4), np.float32))), m)


# --- serving.v2: the KServe v2 servicer ----------------------------------------------------------

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

    async def infer(model, graph, feeds, outputs, context, n=None):
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
    assert (meta.name, meta.version, list(meta.extensions)) == ("glassbox", "9.9", ["model_configuration"])

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


def test_from_proto_refuses_a_zero_size_shape_numpy_cannot_hold():
    """[0, 2**62] has zero values (so zero bytes match), but numpy refuses the shape: INVALID_ARGUMENT, not a crash."""
    with pytest.raises(InvalidArgument) as e:
        tensors.from_proto(pb.Tensor(shape=[0, 2**62], data=b"", dtype="float32"), "x")
    assert str(e.value) == f"x: shape [0, {2**62}] is too large"


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

    async def infer(model, graph, feeds, outputs, context, n=None):
        seen.update(feeds)
        return {"logits": np.zeros((n, 3), np.float32), "probabilities": np.zeros((n, 3), np.float32)}
    rt.infer = infer
    call(s.ModelInfer(infer_request(spb, "net", {"input": x4()}, raw=False), None))
    assert seen["input"].dtype == np.float32 and np.array_equal(seen["input"], x4())


def test_errors_name_the_images_field_and_the_decoder_error():
    with pytest.raises(InvalidArgument, match=r"^images: shape \[1, 1, 4, 4\] needs 16 float32 values"):
        tensors.images_from_request(pb.Images(tensor=pb.Tensor(shape=[1, 1, 4, 4], data=b"x")), MANIFEST)
    with pytest.raises(InvalidArgument, match=r"^image 0: cannot decode as PNG/JPEG \(UnidentifiedImageError: "):
        tensors.decode_images([b"not an image"], SPEC)
