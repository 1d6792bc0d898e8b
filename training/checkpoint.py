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

    from training.checkpoint import load_checkpoint, model_from_checkpoint
    model, ckpt = model_from_checkpoint("runs/quick/lenet/best.pt")
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .models import create_model


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n"))


def _jsonable(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_checkpoint(path: str | os.PathLike, ckpt: dict) -> None:
    # Round-trip the config through JSON so it only holds plain types that weights_only can load.
    ckpt = {**ckpt, "config": json.loads(json.dumps(ckpt["config"], default=_jsonable)),
            "metrics": json.loads(json.dumps(ckpt.get("metrics", {}), default=_jsonable)),
            "history": json.loads(json.dumps(ckpt.get("history", []), default=_jsonable))}
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
