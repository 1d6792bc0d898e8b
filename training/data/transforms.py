"""``preprocess``: the one function that turns uint8 images into model input.

Training, the server (for PNG/JPEG bytes) and the analysis CLI all call it with the manifest's
``preprocessing`` spec ``{"channels": C, "size": [H, W], "mean": [...], "std": [...]}``, so the
three can never disagree on what a model sees.
"""
from __future__ import annotations

import numpy as np
from PIL import Image


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """[N,H,W] or [N,H,W,C] uint8 -> [N,H,W,channels]; gray<->RGB with ITU-R 601 luma weights."""
    x = images[..., None] if images.ndim == 3 else images
    have = x.shape[-1]
    if have == channels:
        return x
    if have == 1 and channels == 3:
        return np.repeat(x, 3, axis=-1)
    if have in (3, 4) and channels == 1:
        luma = x[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]
    if have == 4 and channels == 3:
        return x[..., :3]
    raise ValueError(f"cannot convert {have}-channel images to {channels} channels")


def resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of [N,H,W,C] uint8 with PIL (only called when the size differs)."""
    h, w = size
    out = np.empty((len(images), h, w, images.shape[-1]), np.uint8)
    for i, im in enumerate(images):
        pil = Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im)
        arr = np.asarray(pil.resize((w, h), Image.BILINEAR))
        out[i] = arr[..., None] if arr.ndim == 2 else arr
    return out


def preprocess(images: np.ndarray, spec: dict) -> np.ndarray:
    """uint8 images [N,H,W] / [N,H,W,C] (or one image) -> float32 [N,C,H,W], normalised per ``spec``."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"preprocess expects uint8 images, got {images.dtype}")
    c = int(spec["channels"])
    h, w = (int(s) for s in spec["size"])
    x = to_channels(images, c)
    if x.shape[1:3] != (h, w):
        x = resize(x, (h, w))
    mean = np.asarray(spec["mean"], np.float32).reshape(1, c, 1, 1)
    std = np.asarray(spec["std"], np.float32).reshape(1, c, 1, 1)
    x = x.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(1 / 255)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)
