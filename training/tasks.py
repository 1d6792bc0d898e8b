"""What differs between a classifier and a VAE, in one table the engine and the exporter look up.

    from training.tasks import task_of
    task = task_of(cfg)                       # TASKS[cfg["task"]]
    loss, parts = task.loss(model, x, y, cfg, teacher_out)
    row = task.summary(totals, prefix="val")  # {"val_loss", "val_acc"} or {"val_loss", "val_recon", "val_kl"}

Adding a task means adding one entry here (and its graphs in ``training/export/exporter.py``), not an
``if task == ...`` in every file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def squared_error(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The squared error of each image summed over its outputs, averaged over the batch.

    Not ``F.mse_loss``'s mean over every element: that also divides the gradient by the number of
    classes, which slowed report 001's logistic regression at its learning rate and collapsed its
    lasso (the README's logreg-mnist study row gives the figures)."""
    return (out - target).pow(2).sum() / out.shape[0]


def label_loss(logits: torch.Tensor, y: torch.Tensor, lc: dict, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy (with optional per-class ``weight``), or the squared error against one-hot
    targets (as the reports' linear models and MLP trained): on the logits, or on the softmax with
    ``mse_on = "softmax"``."""
    if lc["name"] == "mse":
        out = logits.softmax(1) if lc.get("mse_on") == "softmax" else logits
        return squared_error(out, F.one_hot(y, logits.shape[1]).to(out.dtype))
    return F.cross_entropy(logits, y, weight=weight, label_smoothing=float(lc["label_smoothing"]))


def imbalance_terms(logits: torch.Tensor, cfg: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """For imbalanced training sets, from the training split's ``dataset.class_counts``:
    ``loss.logit_adjust`` tau adds tau * log(prior) to the logits the loss sees (Menon et al.,
    "Long-tail learning via logit adjustment"), ``loss.class_weights = "balanced"`` weighs each
    class by n / (classes * count) (scikit-learn's "balanced"). The model's own logits, its
    predictions and the validation/test losses are untouched (``classifier_loss`` applies this only while
    the model is in training mode)."""
    lc, counts = cfg["loss"], cfg["dataset"].get("class_counts")
    tau, balanced = float(lc.get("logit_adjust", 0.0)), lc.get("class_weights", "none") == "balanced"
    if not (tau or balanced):
        return logits, None
    if not counts or len(counts) != logits.shape[1]:
        raise ValueError("loss.class_weights / loss.logit_adjust need dataset.class_counts (the engine records them)")
    n = torch.tensor(counts, dtype=torch.float32, device=logits.device)
    weight = torch.where(n > 0, n.sum() / (len(n) * n.clamp(min=1)), 0.0) if balanced else None
    if tau:
        logits = logits + tau * torch.log(n.clamp(min=1) / n.sum()).to(logits.dtype)
    return logits, weight


def penalty(model: nn.Module, lc: dict) -> torch.Tensor | float:
    """L1 (lasso) and L2 (ridge) sums over the weights, and the biases too with ``penalize_bias``
    (the reports penalised every parameter); norm parameters are never penalised."""
    if not (lc["l1"] or lc["l2"]):
        return 0.0
    params = [p for p in model.parameters() if p.ndim > 1 or (lc.get("penalize_bias") and p.ndim == 1)]
    total = 0.0
    if lc["l1"]:
        total = total + float(lc["l1"]) * sum(p.abs().sum() for p in params)
    if lc["l2"]:
        total = total + float(lc["l2"]) * sum(p.pow(2).sum() for p in params)
    return total


def distill_loss(logits: torch.Tensor, teacher: torch.Tensor, dc: dict) -> torch.Tensor:
    """Fit the teacher's outputs: MSE on the logits, or KL between temperature-softened
    distributions (scaled by T^2 so gradients keep their size as T changes, as Hinton et al.)."""
    if dc["loss"] == "mse":
        return squared_error(logits, teacher)
    t = float(dc["temperature"])
    return F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(teacher / t, 1), log_target=True,
                    reduction="batchmean") * t * t


def classifier_loss(model, x, y, cfg, teacher=None):
    lc = cfg["loss"]
    logits = model(x)
    adjusted, weight = imbalance_terms(logits, cfg) if model.training else (logits, None)
    labels = label_loss(adjusted, y, lc, weight)
    if teacher is not None:  # distillation: the label loss is still reported, for comparison
        alpha = float(cfg["distill"]["alpha"])
        loss = alpha * distill_loss(logits, teacher, cfg["distill"]) + (1 - alpha) * labels
    else:
        loss = labels
    parts = {"correct": (logits.argmax(1) == y).sum()}
    if teacher is not None:
        parts["label_loss"] = labels.detach()
    return loss + penalty(model, lc), parts


def vae_loss(model, x, y, cfg, teacher=None):
    """The negative ELBO per image: reconstruction (BCE, MSE or L1, summed over pixels) + KL."""
    lc = cfg["loss"]
    recon, mean, logvar = model(x)
    n = x.shape[0]
    rec_fn = {"bce": F.binary_cross_entropy, "mse": F.mse_loss, "l1": F.l1_loss}[lc["vae_recon"]]
    rec = rec_fn(recon, x, reduction="sum") / n
    kl = -0.5 * torch.sum(1 + logvar - mean.pow(2) - logvar.exp()) / n
    return rec + float(lc["kl_weight"]) * kl, {"recon": rec.detach(), "kl": kl.detach()}


def classifier_summary(t: dict, prefix: str) -> dict:
    out = {f"{prefix}_loss": t["loss"] / t["n"], f"{prefix}_acc": t["correct"] / t["n"]}
    if "label_loss" in t:
        out[f"{prefix}_label_loss"] = t["label_loss"] / t["n"]
    return out


def vae_summary(t: dict, prefix: str) -> dict:
    return {f"{prefix}_loss": t["loss"] / t["n"], f"{prefix}_recon": t["recon"] / t["n"],
            f"{prefix}_kl": t["kl"] / t["n"]}


@dataclass(frozen=True, kw_only=True)
class Task:
    name: str
    loss: Callable            # (model, x, y, cfg, teacher_outputs | None) -> (loss, {part: batch value})
    summary: Callable         # (totals, prefix) -> the history row's entries for that split
    val_key: str              # what model selection and early stopping watch
    higher_is_better: bool
    counts: tuple[str, ...]   # parts that are counts over the batch (summed as is, not weighted by size)
    augments: bool            # training-time augmentation applies (pixels of a VAE are its targets)
    unit_pixels: bool         # inputs in [0, 1] instead of normalised (a VAE's BCE needs targets there)
    graphs: tuple[str, ...]   # the ONNX graphs export writes (Grad-CAM only where a model has a CAM layer)


TASKS = {
    "classifier": Task(name="classifier", loss=classifier_loss, summary=classifier_summary, val_key="val_acc",
                       higher_is_better=True, counts=("correct",), augments=True, unit_pixels=False,
                       graphs=("classifier", "gradcam")),
    "vae": Task(name="vae", loss=vae_loss, summary=vae_summary, val_key="val_loss", higher_is_better=False,
                counts=(), augments=False, unit_pixels=True, graphs=("encoder", "decoder")),
}


def task_of(cfg_or_name: dict | str) -> Task:
    return TASKS[cfg_or_name if isinstance(cfg_or_name, str) else cfg_or_name["task"]]


class Totals:
    """Sums of a split's loss and parts over batches: one accumulator for training and evaluation."""

    def __init__(self, task: Task):
        self.task, self.t = task, {"loss": 0.0, "n": 0}

    def add(self, loss: torch.Tensor, parts: dict, n: int) -> None:
        self.t["n"] += n
        self.t["loss"] += loss.item() * n
        for k, v in parts.items():
            self.t[k] = self.t.get(k, 0.0) + v.item() * (1 if k in self.task.counts else n)

    def summary(self, prefix: str) -> dict:
        return self.task.summary(self.t, prefix)
