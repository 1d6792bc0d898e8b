"""ImageFolder trees (``<split>/<class>/<image>``) as a directory or a zip of one, decoded once.

    x, y, classes = read_imagefolder(Path("cifar10-jpg.zip"), "test")   # uint8 [N, H, W, 3]

Classes are the sorted folder names seen under ``train/`` and ``test/`` together (so both splits
label alike even if one lacks a class); samples are ordered by their path. The tree may sit under a
prefix folder inside the zip (``cifar/train/cat/1.jpg``). Every image must have the same size.

Speed: members are read in archive order (sequential I/O; the shared CIFAR-10 zip is stored, so a
read is a copy) and decoded straight into one preallocated array; 60,000 32x32 JPEGs take a few
seconds. The result is cached as an npz (see ``cache.py``): later loads are a single file read.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from . import cache
from .base import DatasetCorrupt

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")
SPLITS = ("train", "test")


def _tree(names: list[str]) -> dict[str, list[tuple[str, str]]]:
    """{split: [(relative name, class), ...]} for names ``[prefix/]<split>/<class>/<file>``."""
    out: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    for n in names:
        parts = n.split("/")
        if (len(parts) >= 3 and parts[-3] in out and not parts[-1].startswith(".") and "__MACOSX" not in parts
                and parts[-1].lower().endswith(IMAGE_EXTS)):
            out[parts[-3]].append((n, parts[-2]))
    return out


def _decode_into(out: np.ndarray, i: int, data: bytes, where: str, mode: str) -> None:
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode != mode:
                im = im.convert(mode)
            arr = np.asarray(im)
    except Exception as e:  # PIL raises many types for bad files
        raise DatasetCorrupt(f"{where}: not a readable image ({type(e).__name__}: {e})") from None
    if arr.shape != out.shape[1:]:
        raise DatasetCorrupt(f"{where}: image is {arr.shape}, the others are {out.shape[1:]}; "
                             "an ImageFolder dataset needs images of one size")
    out[i] = arr


def _first_shape(data: bytes, where: str, mode: str) -> tuple[int, ...]:
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Exception as e:
        raise DatasetCorrupt(f"{where}: not a readable image ({type(e).__name__}: {e})") from None
    return (h, w, 3) if mode == "RGB" else (h, w)


def read_imagefolder(path: Path, split: str, mode: str = "RGB", use_cache: bool = True,
                     stem: str = "imagefolder") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images uint8 [N, H, W, 3] (mode "RGB") or [N, H, W] ("L"), labels int64, sorted class names."""
    path = Path(path)
    key = cache.source_key(path, split, mode) if use_cache else None
    if key is not None and (hit := cache.load(f"{stem}-{split}", key)) is not None:
        return hit["x"], hit["y"].astype(np.int64), [str(c) for c in hit["classes"]]

    if path.is_dir():
        names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
        zf = None
    else:
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise DatasetCorrupt(f"{path}: not a readable zip ({e})") from None
        names = [i.filename for i in zf.infolist() if not i.is_dir()]  # archive order
    try:
        tree = _tree(names)
        classes = sorted({c for s in SPLITS for _, c in tree[s]})
        members = tree[split]
        if not members:
            raise DatasetCorrupt(f"{path}: no {split}/<class>/<image> files in this ImageFolder tree")
        index = {c: i for i, c in enumerate(classes)}

        def read(name: str) -> bytes:
            try:
                return zf.read(name) if zf is not None else (path / name).read_bytes()
            except (OSError, zipfile.BadZipFile, EOFError, ValueError) as e:  # bad CRC, truncated zip, ...
                raise DatasetCorrupt(f"{path}:{name}: cannot read ({e})") from None

        first = read(members[0][0])
        x = np.empty((len(members),) + _first_shape(first, f"{path}:{members[0][0]}", mode), np.uint8)
        for i, (name, _) in enumerate(members):
            _decode_into(x, i, first if i == 0 else read(name), f"{path}:{name}", mode)
    finally:
        if zf is not None:
            zf.close()
    y = np.array([index[c] for _, c in members], np.int64)
    order = np.argsort(np.array([n for n, _ in members]), kind="stable")  # by path, whatever the archive order
    if np.any(order != np.arange(len(order))):
        x, y = x[order], y[order]
    if key is not None:
        cache.save(f"{stem}-{split}", key, x=x, y=y, classes=np.array(classes))
    return x, y, classes
