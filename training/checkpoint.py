"""Checkpoints: one file per snapshot, written atomically, read without unpickling code.

A checkpoint is a dict (docs/architecture.md §3):
    model      state_dict
    optimizer  optimizer state_dict (None when not trained here)
    scheduler  scheduler state_dict or None
    epoch      last completed epoch (1-based)
    metrics    {"val_metric": "val_acc"|"val_loss", "best_val", "best_epoch", "test_acc"|"test_loss", ...}
    history    [{"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"}, ...]
    config     the full resolved run config (model name and args, dataset with classes and
               normalization, optimizer, schedule, seed, ...)
    rng        the batch-order torch.Generator's state (uint8 tensor, on the CPU): --resume draws
               the same batches and augmentations as an uninterrupted run
    torch_rng  the global CPU generator's state (dropout draws from it), restored on --resume
    snapshots  [{"tag", "epoch", "train_acc", "checkpoint"}, ...] kept so far
    budget     the time budget's state (training.budget) or None
    train_model, ema_steps   with ``ema``: the trained weights (``model`` holds the average)

    from training.checkpoint import load_checkpoint, model_from_checkpoint
    model, ckpt = model_from_checkpoint("runs/quick/lenet/best.pt")
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from glassbox.io import atomic_write, plain

from .models import create_model


def save_checkpoint(path: str | os.PathLike, ckpt: dict) -> None:
    # Round-trip the config through JSON so it only holds plain types that weights_only can load.
    ckpt = {**ckpt, "config": plain(ckpt["config"]), "metrics": plain(ckpt.get("metrics", {})),
            "history": plain(ckpt.get("history", []))}
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    missing = {"model", "epoch", "config"} - set(ckpt)
    if missing:
        raise ValueError(f"{path} is not a Glassbox checkpoint (missing {sorted(missing)})")
    return ckpt


def model_from_checkpoint(path_or_ckpt: str | os.PathLike | dict, map_location="cpu"):
    """Rebuild the model a checkpoint describes, load its weights, return ``(model.eval(), ckpt)``."""
    ckpt = path_or_ckpt if isinstance(path_or_ckpt, dict) else load_checkpoint(path_or_ckpt, map_location)
    spec = ckpt["config"]["model"]
    model = create_model(spec["name"], **spec.get("args", {}))
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt
