"""Explain's request checks and feeds: which method, which targets, which noise (no inference here).

    methods = carried(manifest)                     # e.g. ["gradcam", "gradcampp", "saliency", "ig", "smoothgrad"]
    graph, out = check_method(request.method, manifest)
    feeds, seed = smoothgrad_noise(options, x, manifest)

The methods and their settings (IG steps, SmoothGrad samples and noise std) are the manifest's
``explain`` section, written by export (training/export/explain.py); a manifest from before it has
Grad-CAM only, when it has a Grad-CAM graph.
"""
from __future__ import annotations

import numpy as np

from .errors import InvalidArgument
from .tensors import from_proto

METHODS = ("gradcam", "gradcampp", "saliency", "ig", "smoothgrad")
MAX_PATH_IMAGES = 4096  # images one request may push through the model (IG: images x steps)


def carried(manifest: dict) -> list[str]:
    section = manifest.get("explain") or {}
    if section.get("methods"):
        return list(section["methods"])
    return ["gradcam"] if "gradcam" in manifest.get("graphs", {}) else []


def check_method(method: str, manifest: dict) -> tuple[str, str]:
    """The graph and output that serve ``method``; InvalidArgument for one unknown or not carried."""
    if method not in METHODS:
        raise InvalidArgument(f"unknown method {method!r}; methods: {', '.join(METHODS)}")
    have = carried(manifest)
    if method not in have:
        raise InvalidArgument(f"model {manifest['name']!r} does not carry {method!r}; it carries: "
                              f"{', '.join(have) or 'no explanation method'}")
    return method, ("cam" if method == "gradcam" else "map")


def max_images(method: str, manifest: dict) -> int:
    """The most images one Explain request of ``method`` may hold: the batch limit, and at most
    ``MAX_PATH_IMAGES`` images through the model (IG's path and SmoothGrad's copies multiply them)."""
    section = manifest.get("explain") or {}
    cost = {"ig": section.get("ig", {}).get("steps", 1),
            "smoothgrad": section.get("smoothgrad", {}).get("samples", 1)}.get(method, 1)
    return max(1, min(int(manifest.get("max_batch_size", 256)), MAX_PATH_IMAGES // max(1, int(cost))))


def check_targets(targets, n: int, classes: int) -> np.ndarray | None:
    """The request's targets as int64 [n], or None (predicted classes) when it gives none."""
    if not targets:
        return None
    t = np.asarray(targets, np.int64)
    if len(t) != n:
        raise InvalidArgument(f"targets: {len(t)} given for {n} images (one per image, or none)")
    if t.min() < 0 or t.max() >= classes:
        raise InvalidArgument(f"targets: class index out of range 0..{classes - 1}")
    return t


def smoothgrad_noise(options, x: np.ndarray, manifest: dict) -> tuple[np.ndarray, int]:
    """SmoothGrad's ``noise`` feed [N, samples, C, H, W] and the seed it was drawn with (0 when the
    client gave the noise): the client's noise as given, else N(0, std) from ``options.seed`` (a
    random seed when 0, returned so the call can be replayed)."""
    sg = (manifest.get("explain") or {}).get("smoothgrad", {})
    shape = (len(x), int(sg.get("samples", 16)), *x.shape[1:])
    if options.HasField("noise"):
        noise = from_proto(options.noise, "options.noise")
        if noise.dtype != np.float32 or noise.shape != shape:
            raise InvalidArgument(f"options.noise: shape {list(noise.shape)} ({noise.dtype}), need float32 "
                                  f"{list(shape)} ([images, samples, C, H, W])")
        if not np.isfinite(noise).all():
            raise InvalidArgument("options.noise: contains NaN or Inf")
        return noise, 0
    std = options.noise_std or float(sg.get("stdev", 1.0))
    if not np.isfinite(std) or std < 0:
        raise InvalidArgument(f"options.noise_std must be a finite std >= 0, got {options.noise_std}")
    seed = int(options.seed) or int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> 1 | 1)
    noise = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32) * np.float32(std)
    return noise, seed
