"""The domain API's request validation (serving/tensors.py) in-process, fast: every check can be seen
refusing (or accepting) exactly the request it is there for. Its properties: test_tensors_properties.py;
the KServe v2 servicer's checks: test_v2.py. The end-to-end twins (test_serving, test_fuzz) go through a
real server process; these are the ones ``make mutation`` scores the module with.

    .venv/bin/pytest -x -q tests/serving/test_tensors.py
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from serving import tensors
from serving._generated.glassbox.v1 import glassbox_pb2 as pb
from serving.errors import InvalidArgument

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





def test_from_proto_refuses_a_zero_size_shape_numpy_cannot_hold():
    """[0, 2**62] has zero values (so zero bytes match), but numpy refuses the shape: INVALID_ARGUMENT, not a crash."""
    with pytest.raises(InvalidArgument) as e:
        tensors.from_proto(pb.Tensor(shape=[0, 2**62], data=b"", dtype="float32"), "x")
    assert str(e.value) == f"x: shape [0, {2**62}] is too large"


def test_errors_name_the_images_field_and_the_decoder_error():
    with pytest.raises(InvalidArgument, match=r"^images: shape \[1, 1, 4, 4\] needs 16 float32 values"):
        tensors.images_from_request(pb.Images(tensor=pb.Tensor(shape=[1, 1, 4, 4], data=b"x")), MANIFEST)
    with pytest.raises(InvalidArgument, match=r"^image 0: cannot decode as PNG/JPEG \(UnidentifiedImageError: "):
        tensors.decode_images([b"not an image"], SPEC)
