"""Fashion-MNIST and MNIST from the official IDX files, gzipped or not.

    images, labels = load_idx_pair(Path("/usr/share/datasets/fashion-mnist"), "test")
    images.shape, labels.dtype           # (10000, 28, 28) int64

IDX layout: a 4-byte magic (0, 0, a type code, the number of dimensions), one big-endian uint32 per
dimension, then the data, row-major. Both datasets use type 0x08 (uint8): images are 3-d
[N, rows, cols], labels 1-d [N]. The whole file is read at once and viewed with ``np.frombuffer``:
no per-image Python. Anything that does not add up raises DatasetCorrupt naming the file.
"""
from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from .base import DatasetCorrupt

FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
UBYTE = 0x08


def find_idx(directory: Path, stem: str) -> Path | None:
    """The file for ``stem`` in ``directory``: gzipped first, then raw; also the ``.idx`` spelling
    some mirrors use (``train-images.idx3-ubyte``)."""
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        if (directory / name).is_file():
            return directory / name
    return None


def _read_bytes(path: Path) -> bytearray:
    # A bytearray, so the arrays viewed on it are writable like any other numpy array.
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return bytearray(f.read())
        return bytearray(path.read_bytes())
    except (OSError, EOFError, zlib.error) as e:  # bad gzip header, truncated stream, bad deflate data
        raise DatasetCorrupt(f"{path}: cannot read ({type(e).__name__}: {e})") from None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The uint8 array of an IDX file that must have ``ndim`` dimensions."""
    raw = _read_bytes(path)
    header = 4 + 4 * ndim
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetCorrupt(f"{path}: not an IDX file (bad magic number {bytes(raw[:4]).hex() or 'empty'})")
    if raw[2] != UBYTE or raw[3] != ndim:
        raise DatasetCorrupt(f"{path}: bad magic number {bytes(raw[:4]).hex()}: expected {ndim}-d uint8 IDX "
                             f"(magic 000008{ndim:02x})")
    if len(raw) < header:
        raise DatasetCorrupt(f"{path}: truncated inside the header ({len(raw)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    expected = math.prod(dims)  # Python ints: a crafted header cannot wrap around int64 (2^31 x 2^31 x 4 = 0)
    if len(raw) - header != expected:
        what = "truncated" if len(raw) - header < expected else "has trailing bytes"
        raise DatasetCorrupt(f"{path}: {what}: the header says {'x'.join(map(str, dims))} = {expected} bytes "
                             f"of data, the file has {len(raw) - header}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def load_idx_pair(directory: Path, split: str, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, H, W] and labels int64 [N] of ``split`` ("train"/"test") in ``directory``."""
    img_stem, lab_stem = FILES[split]
    img_path, lab_path = find_idx(directory, img_stem), find_idx(directory, lab_stem)
    if img_path is None or lab_path is None:
        raise DatasetCorrupt(f"{directory}: has only one of {img_stem} and {lab_stem}")
    images = read_idx(img_path, 3)
    labels = read_idx(lab_path, 1)
    if 0 in images.shape[1:]:
        raise DatasetCorrupt(f"{img_path}: images of size {images.shape[1]}x{images.shape[2]}")
    if len(images) != len(labels):
        raise DatasetCorrupt(f"{img_path} has {len(images)} images but {lab_path} has {len(labels)} labels")
    if labels.size and int(labels.max()) >= num_classes:
        raise DatasetCorrupt(f"{lab_path}: label {int(labels.max())} out of range 0..{num_classes - 1}")
    return images, labels.astype(np.int64)


def has_idx(directory: Path, split: str) -> bool:
    """Whether ``directory`` holds any IDX file of ``split`` (a lone one is reported as corrupt)."""
    return any(find_idx(directory, s) is not None for s in FILES[split])
