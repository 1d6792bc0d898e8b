"""Labeled Faces in the Wild: the official per-person JPEG folders, or an npz of x, y, names.

    x, y, names = load_lfw_npz(Path("lfw/lfw-deepfunneled-32.npz"))           # uint8 [13233, 32, 32, 3]
    x, y, names = load_lfw_folders(Path("lfw-deepfunneled"), size=64, crop=150)
    x = crop_npz(x, crop=120, size=32)    # the centre 120 of the 250 original, from a 150-crop npz
    idx = split_per_person(y, "test", seed=0)                                  # the held-out 20%
    load_dataset("lfw", crop=120, size=32)  # the same through the dataset registry (config: dataset.crop/size)

Folders: ``lfw/<Person_Name>/<Person_Name>_0001.jpg`` (or ``lfw-deepfunneled/``), 250x250 RGB.
``crop`` keeps the face before resizing to ``size``: an int is the side of a centred square, a
4-tuple a PIL box (left, top, right, bottom), None keeps the whole image. The default, a centred
150 square (pixels 50..200), is how the npz copies in the shared test data were made. Decoding
13,233 JPEGs takes a while, so the result is cached like CIFAR-10's (see ``cache.py``), keyed by
the folder, ``size`` and ``crop``.

The npz copies are already the centred 150 square of the 250x250 originals; ``crop_npz`` takes a
tighter crop from them (any box inside pixels 50..200 of the original, mapped onto the npz's pixels,
then resized), so ``crop`` works with the npz too, at the npz's resolution. A crop reaching outside
that square needs the JPEG folders.

Classes are the person names sorted (label i = names[i]). LFW has no official train/test split
for identification, so ``split_per_person`` makes a seeded, per-person 80/20 one: deterministic for
a seed, and each person's images are divided in proportion (people with 1-2 images stay in train).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from . import cache
from .base import DatasetCorrupt
from .splits import stratified_mask

DEFAULT_CROP = 150
ORIGINAL = 250  # the side of every LFW JPEG
NPZ = {"lfw": ["lfw-deepfunneled-32.npz"],
       # the min20 npz, else the full one filtered to people with at least 20 images
       "lfw-min20": ["lfw-deepfunneled-min20-64.npz", "lfw-deepfunneled-32.npz"]}
FOLDERS = ("lfw-deepfunneled", "lfw", "lfw_funneled", "lfw-funneled")


def load_lfw_npz(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            x, y, names = z["x"], z["y"].astype(np.int64), [str(n) for n in z["names"]]
    except Exception as e:  # OSError, BadZipFile, KeyError, ValueError (object arrays), ...
        raise DatasetCorrupt(f"{path}: not an LFW npz with arrays x, y, names ({type(e).__name__}: {e})") from None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3 or y.ndim != 1 or len(x) != len(y) \
            or (len(y) and (y.min() < 0 or y.max() >= len(names))):  # y.ndim first: len() of a 0-d array raises
        raise DatasetCorrupt(f"{path}: inconsistent arrays (x {x.dtype}{list(x.shape)}, y {list(y.shape)} in "
                             f"{y.min() if y.size else '-'}..{y.max() if y.size else '-'}, {len(names)} names)")
    return x, y, names


def crop_box(crop, width: int, height: int) -> tuple[int, int, int, int] | None:
    if crop is None:
        return None
    if isinstance(crop, (int, np.integer)):
        left, top = (width - int(crop)) // 2, (height - int(crop)) // 2
        return left, top, left + int(crop), top + int(crop)
    box = tuple(int(v) for v in crop)
    if len(box) != 4:
        raise ValueError(f"crop must be an int (centred square side) or a (left, top, right, bottom) box, got {crop!r}")
    return box


def crop_npz(x: np.ndarray, crop, size: int, source_crop=DEFAULT_CROP) -> np.ndarray:
    """Images already cropped to ``source_crop`` of the 250x250 original (the npz copies), cropped
    further to ``crop`` (in the original's pixels) and resized to ``size``; ValueError when ``crop``
    reaches outside ``source_crop``."""
    src, box = crop_box(source_crop, ORIGINAL, ORIGINAL), crop_box(crop, ORIGINAL, ORIGINAL)
    if box is None or src is None or box[0] < src[0] or box[1] < src[1] or box[2] > src[2] or box[3] > src[3] \
            or box[0] >= box[2] or box[1] >= box[3]:
        raise ValueError(f"crop {crop!r} is not inside the npz's centred {source_crop!r} crop (pixels {src} of the "
                         f"{ORIGINAL}x{ORIGINAL} original)")
    h, w = x.shape[1:3]
    if box == src and (h, w) == (size, size):
        return x
    sx, sy = w / (src[2] - src[0]), h / (src[3] - src[1])
    fbox = ((box[0] - src[0]) * sx, (box[1] - src[1]) * sy, (box[2] - src[0]) * sx, (box[3] - src[1]) * sy)
    whole = tuple(round(v) for v in fbox)
    exact = np.allclose(fbox, whole, atol=1e-6)  # whole pixels: crop, then resize, as from the JPEGs
    out = np.empty((len(x), size, size, 3), np.uint8)
    for i, im in enumerate(x):  # one image at a time, as PIL works
        img = Image.fromarray(im)
        img = img.crop(whole).resize((size, size), Image.BILINEAR) if exact else \
            img.resize((size, size), Image.BILINEAR, box=fbox)  # a fractional box, resampled exactly
        out[i] = np.asarray(img)
    return out


def load_lfw_folders(root: Path, size: int, crop=DEFAULT_CROP, use_cache: bool = True):
    """Every ``<person>/*.jpg`` under ``root``, cropped and resized to ``size`` x ``size``."""
    key = cache.source_key(root, size, crop) if use_cache else None
    if key is not None and (hit := cache.load("lfw-folders", key)) is not None:
        return hit["x"], hit["y"].astype(np.int64), [str(n) for n in hit["names"]]
    people = sorted(p for p in root.iterdir() if p.is_dir())
    files = [(i, f) for i, person in enumerate(people) for f in sorted(person.glob("*.jpg"))]
    if not files:
        raise DatasetCorrupt(f"{root}: no <Person_Name>/*.jpg images")
    x = np.empty((len(files), size, size, 3), np.uint8)
    for k, (_, f) in enumerate(files):  # JPEG decoding is per-file by nature; cached afterwards
        try:
            with Image.open(f) as im:
                img = im.convert("RGB")
        except Exception as e:
            raise DatasetCorrupt(f"{f}: not a readable image ({type(e).__name__}: {e})") from None
        box = crop_box(crop, *img.size)
        if box is not None:
            img = img.crop(box)
        x[k] = np.asarray(img.resize((size, size), Image.BILINEAR))
    y = np.array([i for i, _ in files], np.int64)
    names = [p.name for p in people]
    if key is not None:
        cache.save("lfw-folders", key, x=x, y=y, names=np.array(names))
    return x, y, names


def min_images(x: np.ndarray, y: np.ndarray, names: list[str], k: int):
    """Keep the people with at least ``k`` images, relabelled 0..P-1 in name order."""
    counts = np.bincount(y, minlength=len(names))
    keep = np.flatnonzero(counts >= k)
    remap = np.full(len(names), -1, np.int64)
    remap[keep] = np.arange(len(keep))
    mask = remap[y] >= 0
    return x[mask], remap[y[mask]], [names[i] for i in keep]


def split_per_person(y: np.ndarray, split: str, seed: int = 0, test_fraction: float = 0.2) -> np.ndarray:
    """Sorted indices of ``split`` in a seeded per-person split: round(20%) of each person's images
    are test. The two splits are disjoint and cover everything."""
    test = stratified_mask(y, test_fraction, np.random.default_rng(seed))
    return np.flatnonzero(test if split == "test" else ~test)
