"""CIFAR-10 from the official python pickle batches, an ImageFolder tree, or a zip of one.

Pickles: ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` (rows of 3072 bytes,
channel-planar). ImageFolder: ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``, classes sorted by
name (which is the official label order). Decoding 60,000 JPEGs takes a while, so the decoded
arrays are cached as ``~/.cache/glassbox/<name>-<size>-<mtime>-<split>.npz`` (written atomically).
"""
from __future__ import annotations

import io
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from .base import DatasetCorrupt

CACHE = Path(os.environ.get("GLASSBOX_CACHE", Path.home() / ".cache" / "glassbox"))


def load_pickles(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    try:
        meta = pickle.loads((directory / "batches.meta").read_bytes(), encoding="bytes")
        classes = [c.decode() for c in meta[b"label_names"]]
        for n in names:
            d = pickle.loads((directory / n).read_bytes(), encoding="bytes")
            xs.append(np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(np.asarray(d[b"labels"], np.int64))
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError) as e:
        raise DatasetCorrupt(f"{directory}: cannot read the CIFAR-10 pickle batches ({e})") from None
    return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys), classes


def _decode(data: bytes, where: str) -> np.ndarray:
    try:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    except Exception as e:  # PIL raises many types for bad files
        raise DatasetCorrupt(f"{where}: not a readable image ({e})") from None


def _folder_members(names: list[str], split: str) -> tuple[list[str], list[str]]:
    """Image paths under ``<root>/<split>/<class>/`` (root may be a prefix) and the sorted classes."""
    picked = []
    for n in names:
        parts = n.split("/")
        if len(parts) >= 3 and parts[-3] == split and parts[-1].lower().endswith((".jpg", ".jpeg", ".png")):
            picked.append(n)
    classes = sorted({n.split("/")[-2] for n in picked})
    return sorted(picked), classes


def load_imagefolder(path: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    st = path.stat()
    cached = CACHE / f"{path.name}-{st.st_size}-{int(st.st_mtime)}-{split}.npz"
    if cached.is_file():
        with np.load(cached, allow_pickle=False) as z:
            return z["x"], z["y"], [str(c) for c in z["classes"]]
    if path.is_dir():
        names, classes = _folder_members([p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()], split)
        read = lambda n: (path / n).read_bytes()  # noqa: E731
    else:
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise DatasetCorrupt(f"{path}: not a readable zip ({e})") from None
        names, classes = _folder_members(zf.namelist(), split)
        read = zf.read
    if not names:
        raise DatasetCorrupt(f"{path}: no {split}/<class>/*.jpg images in this ImageFolder tree")
    index = {c: i for i, c in enumerate(classes)}
    x = np.stack([_decode(read(n), f"{path}:{n}") for n in names])
    y = np.array([index[n.split("/")[-2]] for n in names], np.int64)
    _save_cache(cached, x=x, y=y, classes=np.array(classes))
    return x, y, classes


def _save_cache(path: Path, **arrays) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs the next run a re-decode
