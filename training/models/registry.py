"""One registry that training, export, the server's manifests and the CLIs resolve names through.

    from training.models import create_model, list_models
    model = create_model("lenet", num_classes=10, in_chans=1, img_size=28)

A family module decorates its constructors with ``@register_model``; importing
``training.models`` imports every family, so every name is known.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

_REGISTRY: dict[str, "ModelEntry"] = {}


@dataclass(frozen=True)
class ModelEntry:
    name: str
    fn: Callable[..., nn.Module]
    task: str                       # "classifier" or "vae"
    default_size: int | None        # input size the architecture is defined for (None: any)
    description: str
    defaults: dict = field(default_factory=dict)


def register_model(name: str, *, task: str = "classifier", default_size: int | None = None, **defaults):
    """Register ``fn`` under ``name``; ``defaults`` are keyword arguments create_model fills in."""
    def wrap(fn):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ModelEntry(name, fn, task, default_size, doc[0] if doc else "", dict(defaults))
        return fn
    return wrap


def list_models(task: str | None = None) -> list[str]:
    return sorted(n for n, e in _REGISTRY.items() if task is None or e.task == task)


def model_info(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a model; records ``model.arch`` and the resolved ``model.args`` for checkpoints.
    Every classifier also takes ``tta_flip=True``: test-time flip augmentation (models/base.py)."""
    entry = model_info(name)
    args = {**entry.defaults, **kwargs}
    if entry.default_size is not None:
        args.setdefault("img_size", entry.default_size)
    fn_args = dict(args)
    tta = bool(fn_args.pop("tta_flip", False))
    if tta and entry.task != "classifier":
        raise ValueError("tta_flip (test-time flip augmentation) is for classifiers")
    model = entry.fn(**fn_args)
    if tta:
        model.tta_flip = True
    model.arch = name
    model.args = args
    return model
