"""The optimizer and the learning-rate schedule of a run, built from its config.

    from training.optim import build_optimizer, build_scheduler
    opt = build_optimizer(cfg, model)
    sched = build_scheduler(cfg, opt, steps_per_epoch)      # stepped once per optimizer step

The schedule is one factor function (``schedule_factor``) behind a per-step ``LambdaLR``; with a
time budget it is evaluated at the budget's progress instead of the step count (training/budget.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .budget import Budget

OPTIMIZER_CLASSES = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "nadam": torch.optim.NAdam,
                     "adamw": torch.optim.AdamW}


def build_optimizer(cfg: dict, model: nn.Module) -> torch.optim.Optimizer:
    o = cfg["optimizer"]
    lr, wd = float(o["lr"]), float(o.get("weight_decay", 0.0))
    # No weight decay on biases and norm parameters: decaying them only hurts.
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}]
    cls, kw = OPTIMIZER_CLASSES[o["name"]], {}
    if o["name"] == "sgd":
        kw = {"momentum": float(o.get("momentum", 0.9)), "nesterov": bool(o.get("nesterov"))}
    # The fused kernels take one pass over every parameter (CPU and CUDA), a cheaper step than one
    # kernel per tensor; NAdam has none (TypeError) and a device without them refuses
    # (RuntimeError): both fall back to the default implementation.
    try:
        return cls(groups, lr=lr, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return cls(groups, lr=lr, **kw)


def schedule_factor(s: dict, step: float, steps_per_epoch: int, total: int) -> float:
    """The learning-rate factor at (a possibly fractional) ``step`` of ``total``: an optional linear
    warmup, then constant, step (times ``gamma`` every ``step_size`` epochs, counted from the
    start), cosine decay to zero over the steps after the warmup, or ``exp`` (times ``gamma`` every
    epoch, as report 001's MLP)."""
    warm = int(float(s["warmup_epochs"]) * steps_per_epoch)
    if step < warm:
        return (step + 1) / warm
    epoch = step // steps_per_epoch
    if s["name"] == "step":
        return float(s["gamma"]) ** (epoch // int(s["step_size"]))
    if s["name"] == "exp":
        return float(s["gamma"]) ** epoch
    if s["name"] == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
    return 1.0


def build_scheduler(cfg: dict, opt: torch.optim.Optimizer, steps_per_epoch: int, budget: Budget | None = None):
    """A per-step LambdaLR over ``schedule_factor``. With a time ``budget`` the factor is taken at
    ``progress * epochs * steps_per_epoch``, progress being the budget's (``training.budget``)."""
    s, total = cfg["schedule"], cfg["epochs"] * steps_per_epoch
    if budget is None:
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: schedule_factor(s, step, steps_per_epoch, total))
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: schedule_factor(s, budget.progress(step) * total, steps_per_epoch, total))
