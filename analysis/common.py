"""What every analysis command shares: the server connection, the images, JSON and output files.

The analysis CLI talks to the server only (``serving.client``) and reads images with the numpy
dataset readers; it never imports torch.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import click
import numpy as np

from serving.client import GlassboxClient, GlassboxError
from training.data import DatasetError, load_dataset, preprocess


def connect(server: str, timeout: float = 120.0) -> GlassboxClient:
    try:
        return GlassboxClient(server, timeout=timeout, connect_timeout=5.0)
    except GlassboxError as e:
        raise click.ClickException(e.message) from None


def manifest(client: GlassboxClient, model: str) -> dict:
    try:
        return client.get_model(model)
    except GlassboxError as e:
        if model and e.code.name == "NOT_FOUND":
            raise click.ClickException(f"{e.message}") from None
        raise click.ClickException(e.message) from None


def dataset(man: dict, name: str | None, split: str, data_dir: str | None):
    """The split of the model's dataset (or ``name``); labels are the manifest's classes."""
    try:
        return load_dataset(name or man["dataset"], split=split, data_dir=data_dir)
    except DatasetError as e:
        raise click.ClickException(str(e)) from None


def model_input(man: dict, images: np.ndarray) -> np.ndarray:
    """uint8 images -> the float32 tensor the model takes, per the manifest's preprocessing."""
    return preprocess(images, man["preprocessing"])


def unit_images(man: dict, images: np.ndarray) -> np.ndarray:
    """uint8 images -> [N, C, H, W] in [0, 1] at the model's size and channels (for display and VAEs)."""
    spec = man["preprocessing"]
    return preprocess(images, {**spec, "mean": [0.0] * spec["channels"], "std": [1.0] * spec["channels"]})


def write_json(path: Path, obj) -> Path:
    """Atomic: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o))
        f.write("\n")
    os.replace(tmp, path)
    return path


def call(fn, *args, **kwargs):
    """A server call whose refusal becomes one clear line and a non-zero exit."""
    try:
        return fn(*args, **kwargs)
    except GlassboxError as e:
        raise click.ClickException(e.message) from None
