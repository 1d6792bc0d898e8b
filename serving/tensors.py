"""Request tensors in and out: decode, validate (shape, dtype, count, NaN/Inf, batch), encode.

Encoded PNG/JPEG images are decoded with Pillow and preprocessed by ``glassbox.data.preprocess``
with the manifest's ``preprocessing``: the same function training used.
"""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from glassbox.data import preprocess

from ._generated.glassbox.v1 import glassbox_pb2 as pb
from .errors import InvalidArgument

DTYPES = {"": np.float32, "float32": np.float32, "int64": np.int64}


def from_proto(t: pb.Tensor, what: str) -> np.ndarray:
    dtype = DTYPES.get(t.dtype)
    if dtype is None:
        raise InvalidArgument(f"{what}: dtype {t.dtype!r} not supported (float32 or int64)")
    shape = tuple(t.shape)
    if not shape or any(s < 0 for s in shape):
        raise InvalidArgument(f"{what}: shape {list(shape)} is not a valid tensor shape "
                              "(a batch axis first, no negative sizes)")
    count = math.prod(shape)
    itemsize = np.dtype(dtype).itemsize
    if len(t.data) != count * itemsize:
        raise InvalidArgument(f"{what}: shape {list(shape)} needs {count} {np.dtype(dtype).name} values "
                              f"({count * itemsize} bytes), got {len(t.data)} bytes")
    try:
        return np.frombuffer(t.data, dtype).reshape(shape)
    except ValueError:  # zero values, but other axes beyond what numpy can index ([0, 2**62])
        raise InvalidArgument(f"{what}: shape {list(shape)} is too large") from None


def to_proto(a: np.ndarray) -> pb.Tensor:
    a = np.ascontiguousarray(a)
    return pb.Tensor(shape=a.shape, data=a.tobytes(), dtype="int64" if a.dtype == np.int64 else "float32")


def check_batch(x: np.ndarray, expected: list[int], max_batch: int, what: str = "images") -> np.ndarray:
    """``expected`` is the manifest shape with -1 for the batch axis."""
    if x.ndim != len(expected) or list(x.shape[1:]) != list(expected[1:]):
        raise InvalidArgument(f"{what}: shape {list(x.shape)} does not match the model's {['N', *expected[1:]]}")
    if x.shape[0] == 0:
        raise InvalidArgument(f"{what}: empty batch")
    if x.shape[0] > max_batch:
        raise InvalidArgument(f"{what}: batch of {x.shape[0]} is above the maximum of {max_batch}; split it")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise InvalidArgument(f"{what}: contains NaN or Inf")
    return x


def decode_images(files, spec: dict) -> np.ndarray:
    mode = "L" if int(spec["channels"]) == 1 else "RGB"
    out = []
    for i, data in enumerate(files):
        try:
            # Only the two formats the API promises: Pillow's other decoders are needless attack surface.
            img = Image.open(io.BytesIO(data), formats=("PNG", "JPEG"))
            img.load()
            pixels = np.asarray(img.convert(mode))
        except Exception as e:  # noqa: BLE001 - truncated data, decompression bombs, odd modes: all the client's
            raise InvalidArgument(f"image {i}: cannot decode as PNG/JPEG ({type(e).__name__}: {e})") from None
        out.append(preprocess(pixels[None], spec))
    if not out:
        raise InvalidArgument("images: empty batch")
    return np.concatenate(out)


def images_from_request(images: pb.Images, manifest: dict) -> np.ndarray:
    kind = images.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument("images: give either a tensor or encoded files")
    max_batch = int(manifest.get("max_batch_size", 256))
    if kind == "encoded":
        if len(images.encoded.files) > max_batch:
            raise InvalidArgument(f"images: batch of {len(images.encoded.files)} is above the maximum of {max_batch}; "
                                  "split it")
        x = decode_images(images.encoded.files, manifest["preprocessing"])
    else:
        x = from_proto(images.tensor, "images")
        if x.dtype != np.float32:
            raise InvalidArgument("images: tensor dtype must be float32")
    return check_batch(x, manifest["input"]["shape"], max_batch)
