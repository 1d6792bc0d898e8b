"""Fashion-MNIST and MNIST from the official IDX files, gzipped or not.

IDX: a 4-byte magic (0, 0, dtype code 0x08 for uint8, number of dimensions), one big-endian uint32
per dimension, then the data. Read with one ``np.frombuffer``: no per-image Python.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from .base import DatasetCorrupt

FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        if (directory / name).is_file():
            return directory / name
    return None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as e:
        raise DatasetCorrupt(f"{path}: cannot read ({e}); re-download or reinstall the dataset") from None
    if len(raw) < 4 + 4 * ndim or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != ndim:
        raise DatasetCorrupt(f"{path}: not an IDX file of {ndim}-d uint8 data (bad magic number)")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    body = 4 + 4 * ndim
    if len(raw) - body != int(np.prod(dims)):
        raise DatasetCorrupt(f"{path}: truncated or padded: header says {dims}, "
                             f"{len(raw) - body} data bytes instead of {int(np.prod(dims))}")
    return np.frombuffer(raw, np.uint8, offset=body).reshape(dims)


def load_idx_pair(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    img_stem, lab_stem = FILES[split]
    images = read_idx(find_idx(directory, img_stem), 3)
    labels = read_idx(find_idx(directory, lab_stem), 1)
    if len(images) != len(labels):
        raise DatasetCorrupt(f"{directory}: {len(images)} images but {len(labels)} labels for {split}")
    if labels.size and labels.max() > 9:
        raise DatasetCorrupt(f"{directory}: label {labels.max()} out of range 0..9")
    return images, labels.astype(np.int64)


def has_idx(directory: Path, split: str) -> bool:
    return all(find_idx(directory, s) is not None for s in FILES[split])
