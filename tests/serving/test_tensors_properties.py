"""Properties (hypothesis) of the domain API's request validation (serving/tensors.py): whatever tensor or
encoded images a client sends, the answer is a valid batch or ``InvalidArgument`` (INVALID_ARGUMENT on the
wire) with a one-line message, never another exception (which would reach the client as INTERNAL). And
an undamaged request must succeed and carry its values through unchanged: a validator that refused
everything would fail here.

    .venv/bin/pytest -x -q tests/serving/test_tensors_properties.py

The ``@example`` cases are the ones these properties found (each was a crash before its fix).
"""
from __future__ import annotations

import io

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from glassbox.data import preprocess
from serving import tensors
from serving._generated.glassbox.v1 import glassbox_pb2 as pb
from serving.errors import InvalidArgument
from tests.helpers.properties import DIM, PROPERTY, damage, one_line

MANIFEST = {"input": {"name": "input", "shape": [-1, 1, 4, 4]}, "max_batch_size": 3,
            "preprocessing": {"channels": 1, "size": [4, 4], "mean": [0.5], "std": [0.25]}}
FINITE = st.floats(-1e6, 1e6, width=32)


def valid_batch(x: np.ndarray) -> None:
    assert x.dtype == np.float32 and x.shape[1:] == (1, 4, 4) and 1 <= len(x) <= 3 and np.isfinite(x).all()


@st.composite
def tensor_messages(draw):
    """(a pb.Tensor, whether it is a valid request): dtype, shape and bytes that may or may not agree,
    any float values; a third are valid ([1..3, 1, 4, 4] float32 of finite values)."""
    kind = draw(st.sampled_from(["valid", "consistent", "any"]))
    if kind == "valid":
        a = draw(hnp.arrays(np.float32, (draw(st.integers(1, 3)), 1, 4, 4), elements=FINITE))
        return pb.Tensor(shape=a.shape, data=a.tobytes(), dtype=draw(st.sampled_from(["", "float32"]))), True
    dtype = draw(st.one_of(st.sampled_from(["", "float32", "int64", "float64", "uint8"]), st.text(max_size=6)))
    if kind == "consistent":  # bytes that fit a plausible shape, values including NaN/Inf
        shape = draw(st.lists(st.integers(0, 5), min_size=1, max_size=5))
        a = draw(hnp.arrays(np.int64 if dtype == "int64" else np.float32, shape))
        return pb.Tensor(shape=shape, data=a.tobytes(), dtype=dtype), False
    return pb.Tensor(shape=draw(st.lists(DIM, max_size=5)), data=draw(st.binary(max_size=300)), dtype=dtype), False


@PROPERTY
@given(tensor_messages())
@example((pb.Tensor(shape=[0, 2**62], data=b"", dtype="float32"), False))  # zero values, but numpy cannot hold it
@example((pb.Tensor(shape=[2, 1, 4, 4], data=np.full(32, np.nan, np.float32).tobytes()), False))
def test_any_tensor_request_is_a_batch_or_invalid_argument(case):
    t, valid = case
    if valid:  # must succeed, values unchanged
        x = tensors.images_from_request(pb.Images(tensor=t), MANIFEST)
        valid_batch(x)
        assert x.shape == tuple(t.shape) and x.tobytes() == t.data
        return
    try:
        x = tensors.images_from_request(pb.Images(tensor=t), MANIFEST)
    except InvalidArgument as e:
        one_line(str(e))
    else:
        valid_batch(x)
        assert x.tobytes() == t.data


@st.composite
def image_files(draw):
    """(file bytes, whether undamaged): PNG/JPEG files of any size and mode, some cut short or with a
    byte changed, and plain junk."""
    kind = draw(st.sampled_from(["image", "cut", "flip", "junk"]))
    if kind == "junk":
        return draw(st.binary(max_size=200)), False
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    mode = draw(st.sampled_from(["L", "RGB", "RGBA", "I;16", "P", "1"]))
    fmt = draw(st.sampled_from(["PNG", "JPEG"])) if mode in ("L", "RGB") else "PNG"
    img = Image.fromarray(draw(hnp.arrays(np.uint8, (h, w, 3) if mode in ("RGB", "RGBA") else (h, w))))
    buf = io.BytesIO()
    img.convert(mode).save(buf, format=fmt)
    return damage(draw, buf.getvalue(), kind), kind == "image"


@PROPERTY
@given(st.lists(image_files(), max_size=4))
def test_any_encoded_images_are_a_batch_or_invalid_argument(cases):
    files = [f for f, _ in cases]
    request = pb.Images(encoded=pb.EncodedImages(files=files))
    if cases and len(cases) <= 3 and all(ok for _, ok in cases):  # undamaged: decoded as training decodes
        x = tensors.images_from_request(request, MANIFEST)
        valid_batch(x)
        want = [preprocess(np.asarray(Image.open(io.BytesIO(f)).convert("L"))[None], MANIFEST["preprocessing"])
                for f in files]
        np.testing.assert_array_equal(x, np.concatenate(want))
        return
    try:
        x = tensors.images_from_request(request, MANIFEST)
    except InvalidArgument as e:
        one_line(str(e))
    else:
        valid_batch(x)
        assert len(x) == len(files)
