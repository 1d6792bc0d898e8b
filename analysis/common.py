"""What every analysis command shares: the server connection, the images, JSON and output files.

The analysis CLI talks to the server only (``serving.client``) and reads images with the numpy
dataset readers; it never imports torch.
"""
from __future__ import annotations

from dataclasses import fields, is_dataclass, replace

import numpy as np
from tqdm.auto import tqdm

from glassbox.data import DatasetError, load_dataset, preprocess, reader_options
from glassbox.io import write_json  # noqa: F401  (the analysis commands' JSON writer)
from serving.client import GlassboxClient, GlassboxError

from .errors import AnalysisError


def connect(server: str, timeout: float = 120.0) -> GlassboxClient:
    """The client of ``--server``: ``host:port``, or several comma-separated (the calls go to them in turn).
    The analysis commands call one at a time, so one connection per address is all they use."""
    try:
        return GlassboxClient(server, timeout=timeout, connect_timeout=5.0)
    except GlassboxError as e:
        raise AnalysisError(e.message) from None


def manifest(client: GlassboxClient, model: str) -> dict:
    try:
        return client.get_model(model)
    except GlassboxError as e:
        raise AnalysisError(e.message) from None


def dataset(man: dict, name: str | None, split: str, data_dir: str | None):
    """The split of the model's dataset (or ``name``), read as the model was trained (LFW's crop and
    size from the manifest's config); labels are the manifest's classes."""
    options = {} if name not in (None, man["dataset"]) else \
        reader_options((man.get("source") or {}).get("config", {}).get("dataset") or {"name": man["dataset"]})
    try:
        return load_dataset(name or man["dataset"], split=split, data_dir=data_dir, **options)
    except DatasetError as e:
        raise AnalysisError(str(e)) from None


def model_input(man: dict, images: np.ndarray) -> np.ndarray:
    """uint8 images -> the float32 tensor the model takes, per the manifest's preprocessing."""
    return preprocess(images, man["preprocessing"])


def unit_images(man: dict, images: np.ndarray) -> np.ndarray:
    """uint8 images -> [N, C, H, W] in [0, 1] at the model's size and channels (for display and VAEs)."""
    spec = man["preprocessing"]
    return preprocess(images, {**spec, "mean": [0.0] * spec["channels"], "std": [1.0] * spec["channels"]})


def call(fn, *args, **kwargs):
    """A server call whose refusal becomes one clear line and a non-zero exit."""
    try:
        return fn(*args, **kwargs)
    except GlassboxError as e:
        raise AnalysisError(e.message) from None


def batched(fn, model: str, images, *args, per_image=None, desc: str = "", progress: bool = True,
            chunk: int = 512, **kwargs):
    """``call(fn, model, images[i:i+chunk], ...)`` over the batch with a progress bar, results joined.

    The client already splits into chunks the server accepts; this exists for the bar (10,000
    images take seconds). ``per_image`` is an argument sliced with the images (Grad-CAM targets).
    Joins arrays, dicts of arrays and the client's result dataclasses field by field.
    """
    parts = []
    with tqdm(total=len(images), desc=desc or fn.__name__, unit="img", disable=not progress, leave=False) as bar:
        for i in range(0, max(len(images), 1), chunk):
            extra = {} if per_image is None else {"targets": np.asarray(per_image)[i:i + chunk]}
            parts.append(call(fn, model, images[i:i + chunk], *args, **extra, **kwargs))
            bar.update(len(images[i:i + chunk]))
    return _join(parts)


def _join(parts):
    first = parts[0]
    if len(parts) == 1:
        return first
    if isinstance(first, np.ndarray):
        return np.concatenate(parts)
    if isinstance(first, dict):
        return {k: np.concatenate([p[k] for p in parts]) for k in first}
    if isinstance(first, list):
        return [x for p in parts for x in p]
    if first is None:
        return None
    if is_dataclass(first):
        return replace(first, **{f.name: _join([getattr(p, f.name) for p in parts]) for f in fields(first)})
    raise TypeError(f"cannot join {type(first).__name__}")
