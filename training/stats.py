"""Run statistics for ``metrics.json``: training speed, per-class accuracy, the weights' size.

    from training.stats import speed, weight_measures
    speed(history)            # {"train_images_per_s", "seconds_to_val_acc": {"0.85": s, "0.9": s}}
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn


def speed(history: list[dict], levels=(0.85, 0.9)) -> dict:
    """Training images per second (the epochs' training time only) and, for classifiers, the
    seconds of epochs (training and validation) until validation accuracy first reached each level."""
    rows = [r for r in history if r.get("train_seconds") and "train_images" in r]
    if not rows:
        return {}
    images_per_s = sum(r["train_images"] for r in rows) / sum(r["train_seconds"] for r in rows)
    out = {"train_images_per_s": round(images_per_s, 1)}
    if all("val_acc" in r for r in history):
        elapsed, reached = 0.0, {}
        for r in history:
            elapsed += r["seconds"]
            for level in levels:
                if r["val_acc"] >= level and str(level) not in reached:
                    reached[str(level)] = round(elapsed, 1)
        out["seconds_to_val_acc"] = {str(level): reached.get(str(level)) for level in levels}
    return out


def per_class_accuracy(pred: torch.Tensor, y: torch.Tensor, classes: int) -> list[float | None]:
    """The accuracy on each class's images (None for a class the split lacks)."""
    return [float((pred[y == c] == c).float().mean()) if (y == c).any() else None for c in range(classes)]


def weight_measures(model: nn.Module) -> dict:
    """Size and sparsity of the weights (matrices and kernels; biases and norms excluded): the L2
    norm and how many have |w| > 1e-3, as report 001 compared lasso and ridge."""
    w = torch.cat([p.detach().flatten() for p in model.parameters() if p.ndim > 1])
    return {"weight_l2": float(w.norm()), "weights_above_1e-3": int((w.abs() > 1e-3).sum()), "weights_total": w.numel()}


def first_layer(model: nn.Module) -> np.ndarray:
    """The first weight matrix or kernel bank, for drawing (report 001's ten 28x28 weight images)."""
    return next(p for p in model.parameters() if p.ndim > 1).detach().cpu().float().numpy()
