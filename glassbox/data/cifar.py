"""CIFAR-10 from the official python pickle batches, or from an ImageFolder tree / zip of JPEGs.

    x, y, classes = load_pickles(Path("data/cifar-10-batches-py"), "train")   # [50000, 32, 32, 3]
    x, y, classes = load_pickles(Path("data/cifar-10-python.tar.gz"), "test")  # the download, unextracted

Pickles: ``data_batch_1..5`` (train), ``test_batch``, ``batches.meta`` (``label_names``), each a
dict with ``data`` uint8 [10000, 3072] (channel-planar rows: 1024 red, 1024 green, 1024 blue) and
``labels``; read with ``encoding="bytes"`` as the official page says, then one reshape/transpose.
Unpickling can run code, so only the numpy globals these files use are allowed.

ImageFolder trees and zips (``train/<class>/*.jpg``, ``test/<class>/*.jpg``) go through
``imagefolder.read_imagefolder``: classes sorted by name, which is the official label order.
"""
from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from .base import DatasetCorrupt

BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
TARBALL = "cifar-10-python.tar.gz"


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Refuses every global but the ones numpy arrays are rebuilt with (no arbitrary code)."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")


def _unpickle(data: bytes, where: str) -> dict:
    try:
        d = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # UnpicklingError, EOFError (truncated), ValueError, ...
        detail = " ".join(str(e).split())  # one line: some unpickling errors span two
        raise DatasetCorrupt(f"{where}: not a CIFAR-10 python pickle ({type(e).__name__}: {detail})") from None
    if not isinstance(d, dict):
        raise DatasetCorrupt(f"{where}: not a CIFAR-10 python pickle (a {type(d).__name__}, not a dict)")
    return d


def _batch(d: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        x = np.asarray(d[b"data"])
        y = np.asarray(d[b"labels"], dtype=np.int64)
    except (KeyError, TypeError, ValueError, OverflowError) as e:  # OverflowError: a label beyond int64
        raise DatasetCorrupt(f"{where}: a CIFAR-10 batch needs 'data' and 'labels' ({e})") from None
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise DatasetCorrupt(f"{where}: data is {x.dtype}{list(x.shape)}, expected uint8 [N, 3072]")
    if y.shape != (len(x),) or (y.size and (y.min() < 0 or y.max() > 9)):
        raise DatasetCorrupt(f"{where}: {y.size} labels in {y.min() if y.size else '-'}..{y.max() if y.size else '-'}"
                             f" for {len(x)} images, expected {len(x)} in 0..9")
    return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y


def load_pickles(source: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images uint8 [N, 32, 32, 3], labels int64, class names from a batches folder or the tarball."""
    source = Path(source)
    if source.is_dir():
        def read(name: str) -> tuple[bytes, str]:
            try:
                return (source / name).read_bytes(), str(source / name)
            except OSError as e:
                raise DatasetCorrupt(f"{source / name}: cannot read ({e})") from None
    else:
        try:
            with tarfile.open(source) as tar:  # only the few members needed, kept in memory
                blobs = {Path(m.name).name: tar.extractfile(m).read() for m in tar.getmembers()
                         if m.isfile() and Path(m.name).name in BATCHES[split] + ["batches.meta"]}
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DatasetCorrupt(f"{source}: not a readable tar.gz ({e})") from None

        def read(name: str) -> tuple[bytes, str]:
            if name not in blobs:
                raise DatasetCorrupt(f"{source}: no {name} inside")
            return blobs[name], f"{source}:{name}"

    meta = _unpickle(*read("batches.meta"))
    try:
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta[b"label_names"]]
    except KeyError:
        raise DatasetCorrupt(f"{source}: batches.meta has no label_names") from None
    xs, ys = zip(*(_batch(_unpickle(*read(n)), f"{source}/{n}") for n in BATCHES[split]), strict=True)
    return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys), classes
