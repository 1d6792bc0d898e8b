"""The training loops: ``train_one_epoch``, ``evaluate`` and ``fit`` (torchvision-references style).

    from training.config import resolve_config
    from training.engine import fit
    summary = fit(resolve_config({"model": "lenet", "epochs": 3}), "runs/lenet")

``fit`` is linear: ``prepare`` (training.prepare: resume, data, model, optimizer, the enriched
config), the epoch loop, then ``finish`` (the test split with the best checkpoint, run statistics,
snapshot exports). What differs between a classifier and a VAE is looked up in ``training.tasks``.
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from glassbox import data as D
from glassbox import plots
from glassbox.io import write_json

from . import distributed
from .allocator import tune_allocator
from .augment import augment, augments_anything
from .checkpoint import load_checkpoint, save_checkpoint
from .datasets import load_split, to_tensors
from .distributed import SINGLE, Dist
from .prepare import Run, prepare, select_device
from .snapshots import export_snapshots, save_snapshots, take_snapshots
from .stats import first_layer, per_class_accuracy, speed, weight_measures
from .tasks import Totals, task_of

CURVES_EVERY_S = 30  # redraw curves.png at most this often (and at the end): drawing costs more than a short epoch


def compute_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: dict, teacher=None):
    """Loss of one batch and its parts, as the task defines them (``training.tasks``)."""
    return task_of(cfg).loss(model, x, y, cfg, teacher)


def _batch(x: torch.Tensor, cfg: dict) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if cfg["channels_last"] and x.ndim == 4 else x


def autocast(cfg: dict, device: torch.device):
    """``precision = "bf16"``: the forward pass and loss under bfloat16 autocast (weights, gradients
    and optimizer state stay float32, so no loss scaling is needed); "fp32": as is."""
    if cfg.get("precision", "fp32") == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_one_epoch(model, opt, sched, x, y, cfg, gen, epoch: int, progress: bool = True,
                    teacher: torch.Tensor | None = None, dist: Dist = SINGLE, stop=None) -> dict:
    """One pass over a fresh permutation of the training split, in global batches of ``batch_size``;
    under torchrun each rank trains on its slice of every global batch (``training.distributed``).
    ``stop``: checked after every step; True ends the epoch there (a time budget ran out)."""
    model.train()
    task = task_of(cfg)
    n, bs = x.shape[0], int(cfg["batch_size"])
    perm = torch.randperm(n, generator=gen, device=gen.device).to(x.device)
    mine = distributed.batch_slice(bs, dist)
    augmenting = task.augments and augments_anything(cfg["augment"])
    totals = Totals(task)
    bar = tqdm(range(0, n - bs + 1 if n >= bs else 1, bs), desc=f"{cfg['name']} epoch {epoch}/{cfg['epochs']}",
               leave=False, disable=not progress, unit="batch")
    for i, start in enumerate(bar):
        batch = perm[start:start + bs]
        idx = batch[mine]  # the whole batch in one process
        # Augmentation draws for the whole global batch: every rank's generator stays in step, and
        # each image is augmented as one process would augment it.
        xb = augment(x[batch], cfg["augment"], gen)[mine] if augmenting else x[idx]
        with autocast(cfg, x.device):
            loss, parts = compute_loss(model, _batch(xb, cfg), y[idx], cfg, None if teacher is None else teacher[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg["clip_grad_norm"]:
            nn.utils.clip_grad_norm_(model.parameters(), float(cfg["clip_grad_norm"]))
        opt.step()
        sched.step()
        totals.add(loss, parts, idx.shape[0])
        if stop is not None and stop():
            break
        if progress and i % 20 == 0:
            bar.set_postfix({k.removeprefix("train_"): f"{v:.4f}" for k, v in totals.summary("train").items()})
    distributed.reduce_sums(totals.t, dist)
    return {**totals.summary("train"), "train_images": int(totals.t["n"])}


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: dict, prefix: str = "val",
             dist: Dist = SINGLE) -> dict:
    """The task's loss (without a teacher: the loss against the labels) and metrics on a split
    (under torchrun: each rank scores its share, the sums are all-reduced)."""
    model.eval()
    if dist.enabled:
        x, y = x[distributed.rows(x.shape[0], dist)], y[distributed.rows(y.shape[0], dist)]
    totals, bs = Totals(task_of(cfg)), int(cfg["eval_batch_size"])
    for start in range(0, x.shape[0], bs):
        xb, yb = x[start:start + bs], y[start:start + bs]
        loss, parts = compute_loss(model, _batch(xb, cfg), yb, cfg)
        totals.add(loss, parts, xb.shape[0])
    distributed.reduce_sums(totals.t, dist)
    return totals.summary(prefix)


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, cfg: dict) -> torch.Tensor:
    model.eval()
    bs = int(cfg["eval_batch_size"])
    return torch.cat([model(_batch(x[s:s + bs], cfg)).float() for s in range(0, x.shape[0], bs)])


def _budget_allows(run: Run, epoch: int, log) -> bool:
    """Whether the time budget (if any) leaves room for ``epoch``; says so when it does not."""
    if run.budget is None:
        return True
    left = int(run.cfg["epochs"]) - epoch + 1
    if run.budget.next_epoch(left, run.sched.last_epoch, first=not run.history):
        return True
    used, reserve = run.budget.elapsed(), run.budget.reserve()
    log(f"{run.cfg['name']}: time budget: {used:.1f} of {run.budget.total:.1f} s used ({reserve:.1f} s kept to score "
        f"the test split), {run.budget.stop_reason}; "
        f"stopped after epoch {epoch - 1}")
    return False


def _validate(run: Run) -> dict:
    """This epoch's validation scores (and test scores for the curves); the budget learns their cost."""
    te = time.perf_counter()
    distributed.sync_buffers(run.scored, run.dist)  # BatchNorm statistics: rank 0's, as its checkpoint holds
    row = evaluate(run.scored, *run.val, run.cfg, dist=run.dist)
    if run.cfg["test_curves"]:  # for the curves only: model selection stays on validation
        row.update(evaluate(run.scored, *run.test, run.cfg, prefix="test", dist=run.dist))
    if run.budget is not None:
        run.budget.note_eval(time.perf_counter() - te)
    return row


def _epoch(run: Run, epoch: int, progress: bool) -> dict:
    """Train and validate one epoch; its history row."""
    te = time.perf_counter()
    stop = None if run.budget is None else (lambda: run.budget.out_of_time)
    row = {"epoch": epoch, **train_one_epoch(run.net, run.opt, run.sched, *run.train, run.cfg, run.gen, epoch,
                                             progress, run.teacher, run.dist, stop)}
    row["train_seconds"] = round(time.perf_counter() - te, 2)
    row.update(_validate(run))
    row["lr"] = run.opt.param_groups[0]["lr"]
    row["seconds"] = round(time.perf_counter() - te, 2)
    return row


def _improves(run: Run, value: float) -> bool:
    task, es = task_of(run.cfg), run.cfg["early_stopping"]
    if run.best is None:
        return True
    return value > run.best + es["min_delta"] if task.higher_is_better else value < run.best - es["min_delta"]


def _checkpoint(run: Run, epoch: int) -> dict:
    """The checkpoint of this epoch (docs/architecture.md §3); every rank builds it, since the
    budget's state reads rank 0's clock."""
    ckpt = {"model": run.scored.state_dict(), "optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict(),
            "epoch": epoch, "metrics": {"val_metric": task_of(run.cfg).val_key, "best_val": run.best,
                                        "best_epoch": run.best_epoch},
            "history": run.history, "config": run.cfg, "rng": run.gen.get_state().cpu(),
            "torch_rng": torch.get_rng_state(), "snapshots": run.snapshots,
            "budget": None if run.budget is None else run.budget.state(run.sched.last_epoch)}
    if run.ema is not None:  # ``model`` holds the averaged weights; resume needs the trained ones too
        ckpt.update(train_model=run.model.state_dict(), ema_steps=run.ema.steps)
    return ckpt


def _save_epoch(run: Run, epoch: int, ckpt: dict, improved: bool) -> None:
    """Rank 0's writes: snapshots, best.pt, last.pt, history.json and (now and then) the curves."""
    save_snapshots(run.out, run.snapshots, epoch, ckpt)
    if improved:
        save_checkpoint(run.out / "best.pt", ckpt)
    save_checkpoint(run.out / "last.pt", ckpt)
    write_json(run.out / "history.json", run.history)
    if time.perf_counter() - run.drawn > CURVES_EVERY_S:
        plots.save(plots.curves_figure(run.history, run.cfg["name"]), run.out / "curves.png")
        run.drawn = time.perf_counter()


def _stops(run: Run, row: dict, log) -> bool:
    """Whether training ends after this epoch: a diverged loss, or early stopping's patience ran out."""
    name, patience = run.cfg["name"], run.cfg["early_stopping"]["patience"]
    if not math.isfinite(row["train_loss"]):
        log(f"{name}: training diverged (loss {row['train_loss']}), stopped")
        return True
    if patience and row["epoch"] - run.best_epoch >= int(patience):
        log(f"{name}: early stop, no {task_of(run.cfg).val_key} improvement for {patience} epochs")
        return True
    return False


def train_epochs(run: Run, progress: bool, log) -> None:
    cfg = run.cfg
    for epoch in range(run.start_epoch, int(cfg["epochs"]) + 1):
        if not _budget_allows(run, epoch, log):
            break
        row = _epoch(run, epoch, progress)
        run.history.append(row)
        improved = _improves(run, row[task_of(cfg).val_key])
        if improved:
            run.best, run.best_epoch = row[task_of(cfg).val_key], epoch
        take_snapshots(cfg, run.snapshots, row)
        ckpt = _checkpoint(run, epoch)
        if run.dist.is_main:  # one writer; the other ranks hold the same state
            _save_epoch(run, epoch, ckpt, improved)
        shown = {k: round(v, 4) for k, v in row.items()
                 if k not in ("epoch", "lr", "seconds", "train_seconds", "train_images")}
        log(f"{cfg['name']} epoch {epoch}/{cfg['epochs']} {shown} {row['seconds']:.1f}s" + (" *" if improved else ""))
        if _stops(run, row, log):
            break


def finish(run: Run, t0: float, log) -> dict:
    """Score the test split once, with the best checkpoint; record measures; export snapshots."""
    cfg, device = run.cfg, next(run.model.parameters()).device
    best_ckpt = load_checkpoint(run.out / "best.pt", map_location=device)
    run.model.load_state_dict(best_ckpt["model"])
    x, y = run.test if run.test is not None else to_tensors(load_split(cfg, "test"), run.spec, device)
    metrics = {**best_ckpt["metrics"], **evaluate(run.model, x, y, cfg, prefix="test"), "test_images": len(y),
               "epochs_run": len(run.history), "wall_seconds": round(time.perf_counter() - t0, 1)}
    metrics.update(speed(run.history))
    if cfg["task"] == "classifier":
        pred = predict(run.model, x, cfg).argmax(1)
        metrics["per_class_acc"] = per_class_accuracy(pred, y, len(cfg["dataset"]["classes"]))
        metrics.update(D.head_tail_accuracy(y.cpu().numpy(), pred.cpu().numpy(), cfg["dataset"].get("longtail")))
        metrics.update(weight_measures(run.model))
        np.save(run.out / "first_layer.npy", first_layer(run.model))
    if run.snapshots:
        export_snapshots(cfg, run.out, run.snapshots, log)
    if run.budget is not None:  # rank 0 alone here: its own clock, not the broadcast one
        metrics.update(time_budget_s=run.budget.total, budget_used_s=round(run.budget.elapsed(local=True), 1))
    if run.dist.enabled:
        metrics["world_size"] = run.dist.world_size
    save_checkpoint(run.out / "best.pt", {**best_ckpt, "metrics": metrics})
    write_json(run.out / "metrics.json", metrics)
    return metrics


def fit(cfg: dict, out_dir: str | Path, *, resume: bool = False, progress: bool = True, log=print) -> dict:
    """Train one run into ``out_dir`` (best.pt, last.pt, config.json, history.json, metrics.json,
    curves.png); return its metrics. ``resume`` continues from ``out_dir/last.pt``. Under torchrun
    every rank calls it and gets the same metrics back (``training.distributed``)."""
    t0 = time.perf_counter()
    tune_allocator()
    dist, device = distributed.setup(select_device(cfg["device"]))
    if not dist.is_main:
        progress, log = False, (lambda *_: None)
    run = prepare(cfg, Path(out_dir), resume, log, dist, device)
    train_epochs(run, progress, log)
    if run.history and dist.is_main:
        plots.save(plots.curves_figure(run.history, run.cfg["name"]), run.out / "curves.png")
    return distributed.from_main(lambda: finish(run, t0, log), dist)
