"""LFW faces from the official per-person folders of JPEGs, or from an npz (``x``, ``y``, ``names``).

Folders: ``lfw/<Person_Name>/<Person_Name>_0001.jpg`` (also ``lfw-deepfunneled``), 250x250 RGB.
``crop`` is a centre box (left, top, right, bottom) applied before resizing to ``size``; the
defaults keep the face (pixels 50..200), as the npz copies in the test data do.
LFW has no official split for classification, so a seeded 80/20 per-person split is made here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .base import DatasetCorrupt


def load_lfw_npz(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            x, y, names = z["x"], z["y"].astype(np.int64), [str(n) for n in z["names"]]
    except (OSError, KeyError, ValueError) as e:
        raise DatasetCorrupt(f"{path}: not an LFW npz with x, y, names ({e})") from None
    if x.dtype != np.uint8 or x.ndim != 4 or len(x) != len(y) or (len(y) and y.max() >= len(names)):
        raise DatasetCorrupt(f"{path}: inconsistent arrays (x {x.shape} {x.dtype}, y {y.shape}, {len(names)} names)")
    return x, y, names


def load_lfw_folders(root: Path, size: int, crop: tuple[int, int, int, int] | None = (50, 50, 200, 200)):
    people = sorted(p for p in root.iterdir() if p.is_dir())
    xs, ys = [], []
    for i, person in enumerate(people):
        for f in sorted(person.glob("*.jpg")):
            try:
                img = Image.open(f).convert("RGB")
            except Exception as e:
                raise DatasetCorrupt(f"{f}: not a readable image ({e})") from None
            if crop:
                img = img.crop(crop)
            xs.append(np.asarray(img.resize((size, size), Image.BILINEAR)))
            ys.append(i)
    if not xs:
        raise DatasetCorrupt(f"{root}: no <person>/*.jpg images")
    return np.stack(xs), np.array(ys, np.int64), [p.name for p in people]


def min_images(x: np.ndarray, y: np.ndarray, names: list[str], k: int):
    """Keep the people with at least ``k`` images, relabelled 0..P-1 in name order."""
    counts = np.bincount(y, minlength=len(names))
    keep = np.flatnonzero(counts >= k)
    remap = -np.ones(len(names), np.int64)
    remap[keep] = np.arange(len(keep))
    mask = remap[y] >= 0
    return x[mask], remap[y[mask]], [names[i] for i in keep]


def split_per_person(y: np.ndarray, split: str, seed: int = 0, test_fraction: float = 0.2) -> np.ndarray:
    """Indices of a deterministic per-person split: each person's images go ~80/20."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        test[idx[: int(round(len(idx) * test_fraction))]] = True
    return np.flatnonzero(test if split == "test" else ~test)
