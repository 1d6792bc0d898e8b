"""The training engine: ``train_one_epoch``, ``evaluate`` and ``fit`` (torchvision-references style).

    from training.config import resolve_config
    from training.engine import fit
    summary = fit(resolve_config({"model": "lenet", "epochs": 3}), "runs/lenet")

Data is loaded once, preprocessed by the same numpy ``training.data.preprocess`` the server uses,
and held as tensors; a batch is one index-gather, so there is no per-sample Python on the hot path.
Model selection uses the validation split only; the test split is scored once, at the end, with the
best checkpoint.
"""
from __future__ import annotations

import functools
import hashlib
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import data as D
from .augment import augment
from .checkpoint import load_checkpoint, save_checkpoint, write_json
from .curves import plot_history
from .models import create_model


@functools.cache  # process wide: once is enough, however many runs train-all fits
def tune_allocator() -> bool:
    """Keep freed tensor memory in glibc's heap instead of returning it to the OS.

    By default glibc serves allocations above ~128 KB-32 MB with fresh ``mmap`` pages and trims the
    heap on free, so every step's activations (LeNet at batch 256: several 1-5 MB tensors per layer)
    page-fault in zeroed memory again; on this 2-core machine that was a third of LeNet's step time
    (measured: 15k -> 21-23k images/s, benchmarks/train_speed.py). Raising the mmap threshold to its
    maximum (32 MB) and the trim threshold to 1 GB lets the next step reuse the same pages. Process
    wide and not reversible, so only the training entry points call it; a no-op off glibc.
    """
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def preprocessing_spec(cfg: dict, model: nn.Module) -> dict:
    """The normalization recorded with the model; the manifest copies it for the server."""
    c, size = model.in_chans, model.img_size
    if cfg["task"] == "vae":  # VAEs model pixels in [0, 1] (BCE needs targets there)
        mean, std = [0.0] * c, [1.0] * c
    else:
        info = D.dataset_info(cfg["dataset"]["name"])
        mean, std = list(info["mean"]), list(info["std"])
        if len(mean) != c:  # gray dataset into an RGB model or the reverse
            mean, std = [float(np.mean(mean))] * c, [float(np.mean(std))] * c
    return {"channels": c, "size": [size, size], "mean": mean, "std": std}


def load_split(cfg: dict, split: str) -> D.ArrayDataset:
    ds_cfg = cfg["dataset"]
    ds = D.load_dataset(ds_cfg["name"], split=split, data_dir=ds_cfg.get("data_dir"))
    if split == "train":
        if ds_cfg.get("longtail"):
            ds = D.longtail(ds, seed=cfg["seed"])
        if ds_cfg.get("subset"):
            ds = D.random_subset(ds, int(ds_cfg["subset"]), seed=cfg["seed"])
    return ds


def to_tensors(ds: D.ArrayDataset, spec: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(D.preprocess(ds.images, spec)).to(device)
    return x, torch.from_numpy(np.asarray(ds.labels, dtype=np.int64)).to(device)


def fingerprint(ds: D.ArrayDataset) -> str:
    """A short hash of a split's images and labels: resume refuses to continue on a different split."""
    h = hashlib.sha256(np.ascontiguousarray(ds.images).tobytes())
    h.update(np.ascontiguousarray(ds.labels).tobytes())
    return h.hexdigest()[:16]


def build_optimizer(cfg: dict, model: nn.Module) -> torch.optim.Optimizer:
    o = cfg["optimizer"]
    lr, wd = float(o["lr"]), float(o.get("weight_decay", 0.0))
    # No weight decay on biases and norm parameters: decaying them only hurts.
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}]
    if o["name"] == "sgd":
        cls, kw = torch.optim.SGD, {"momentum": float(o.get("momentum", 0.9)), "nesterov": bool(o.get("nesterov", True))}
    else:
        cls, kw = {"adam": torch.optim.Adam, "nadam": torch.optim.NAdam, "adamw": torch.optim.AdamW}[o["name"]], {}
    # The fused kernels (one pass over every parameter, CPU and CUDA) make the step ~10% of a
    # LeNet batch-128 step cheaper here; NAdam has none (TypeError) and a device without them
    # refuses (RuntimeError): both fall back to the default implementation.
    try:
        return cls(groups, lr=lr, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return cls(groups, lr=lr, **kw)


def build_scheduler(cfg: dict, opt: torch.optim.Optimizer, steps_per_epoch: int):
    """A per-step LambdaLR: constant, step (every ``step_size`` epochs times ``gamma``) or linear
    warmup then cosine decay to zero."""
    s, total = cfg["schedule"], cfg["epochs"] * steps_per_epoch
    warm = int(float(s.get("warmup_epochs", 0)) * steps_per_epoch)

    def factor(step: int) -> float:
        if s["name"] == "constant":
            return 1.0
        if s["name"] == "step":
            return float(s.get("gamma", 0.1)) ** (step // (int(s.get("step_size", 10)) * steps_per_epoch))
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def compute_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: dict) -> tuple[torch.Tensor, dict]:
    """Loss of one batch and its parts: cross-entropy (+ L1/L2 penalties) or the negative ELBO."""
    lc = cfg["loss"]
    if cfg["task"] == "vae":
        recon, mean, logvar = model(x)
        n = x.shape[0]
        rec = (F.binary_cross_entropy(recon, x, reduction="sum") if lc["vae_recon"] == "bce"
               else F.mse_loss(recon, x, reduction="sum")) / n
        kl = -0.5 * torch.sum(1 + logvar - mean.pow(2) - logvar.exp()) / n
        return rec + float(lc["kl_weight"]) * kl, {"recon": rec.detach(), "kl": kl.detach()}
    logits = model(x)
    loss = F.cross_entropy(logits, y, label_smoothing=float(lc["label_smoothing"]))
    if lc["l1"] or lc["l2"]:
        weights = [p for p in model.parameters() if p.ndim > 1]
        if lc["l1"]:
            loss = loss + float(lc["l1"]) * sum(w.abs().sum() for w in weights)
        if lc["l2"]:
            loss = loss + float(lc["l2"]) * sum(w.pow(2).sum() for w in weights)
    return loss, {"correct": (logits.argmax(1) == y).sum()}


def _batch(x: torch.Tensor, cfg: dict) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if cfg["channels_last"] and x.ndim == 4 else x


def train_one_epoch(model, opt, sched, x, y, cfg, gen, epoch: int, progress: bool = True) -> dict:
    model.train()
    n, bs = x.shape[0], int(cfg["batch_size"])
    perm = torch.randperm(n, generator=gen, device=gen.device).to(x.device)
    totals = {"loss": 0.0, "correct": 0, "recon": 0.0, "kl": 0.0}
    seen = 0
    bar = tqdm(range(0, n - bs + 1 if n >= bs else 1, bs), desc=f"{cfg['name']} epoch {epoch}/{cfg['epochs']}",
               leave=False, disable=not progress, unit="batch")
    for start in bar:
        idx = perm[start:start + bs]
        xb, yb = augment(x[idx], cfg["augment"], gen) if cfg["task"] == "classifier" else x[idx], y[idx]
        loss, parts = compute_loss(model, _batch(xb, cfg), yb, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg["clip_grad_norm"]:
            nn.utils.clip_grad_norm_(model.parameters(), float(cfg["clip_grad_norm"]))
        opt.step()
        sched.step()
        m = idx.shape[0]
        seen += m
        totals["loss"] += loss.item() * m
        for k, v in parts.items():
            totals[k] += v.item() * (1 if k == "correct" else m)
        if progress and (start // bs) % 20 == 0:
            post = {"loss": f"{totals['loss'] / seen:.4f}"}
            if cfg["task"] == "classifier":
                post["acc"] = f"{totals['correct'] / seen:.4f}"
            bar.set_postfix(post)
    return _summarise(totals, seen, cfg["task"], "train")


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: dict, prefix: str = "val") -> dict:
    model.eval()
    totals, bs = {"loss": 0.0, "correct": 0, "recon": 0.0, "kl": 0.0}, int(cfg["eval_batch_size"])
    for start in range(0, x.shape[0], bs):
        xb, yb = x[start:start + bs], y[start:start + bs]
        loss, parts = compute_loss(model, _batch(xb, cfg), yb, cfg)
        totals["loss"] += loss.item() * xb.shape[0]
        for k, v in parts.items():
            totals[k] += v.item() * (1 if k == "correct" else xb.shape[0])
    return _summarise(totals, x.shape[0], cfg["task"], prefix)


def _summarise(t: dict, n: int, task: str, prefix: str) -> dict:
    if task == "vae":
        return {f"{prefix}_loss": t["loss"] / n, f"{prefix}_recon": t["recon"] / n, f"{prefix}_kl": t["kl"] / n}
    return {f"{prefix}_loss": t["loss"] / n, f"{prefix}_acc": t["correct"] / n}


def fit(cfg: dict, out_dir: str | Path, *, resume: bool = False, progress: bool = True, log=print) -> dict:
    """Train one run into ``out_dir`` (best.pt, last.pt, config.json, history.json, metrics.json,
    curves.png); return its metrics. ``resume`` continues from ``out_dir/last.pt``."""
    out = Path(out_dir)
    t0 = time.perf_counter()
    tune_allocator()
    last_path, best_path = out / "last.pt", out / "best.pt"
    state = None
    if resume and last_path.is_file():
        state = load_checkpoint(last_path)
        cfg = {**state["config"], "epochs": max(int(cfg["epochs"]), int(state["config"]["epochs"]))}
    torch.manual_seed(cfg["seed"])
    device = select_device(cfg["device"])
    model = create_model(cfg["model"]["name"], **cfg["model"]["args"])
    cfg = {**cfg, "model": {"name": cfg["model"]["name"], "args": dict(model.args)}}
    spec = preprocessing_spec(cfg, model)
    train_ds, val_ds = D.train_val_split(load_split(cfg, "train"), float(cfg["dataset"]["val_fraction"]), seed=cfg["seed"])
    cfg["dataset"] = {**cfg["dataset"], "classes": list(train_ds.classes), "channels": spec["channels"],
                      "size": spec["size"], "mean": spec["mean"], "std": spec["std"],
                      "train_images": len(train_ds), "val_images": len(val_ds),
                      "val_fingerprint": fingerprint(val_ds)}
    if state is not None and state["config"]["dataset"].get("val_fingerprint") not in (None, cfg["dataset"]["val_fingerprint"]):
        # A different validation split would validate on images the model has trained on.
        raise D.DatasetError(f"{cfg['name']}: the validation split differs from the one this run started with "
                             f"(data or split code changed); resuming would leak training images into model "
                             f"selection. Start the run afresh (without --resume) or restore the data.")
    cfg["resolved_device"] = str(device)
    xt, yt = to_tensors(train_ds, spec, device)
    xv, yv = to_tensors(val_ds, spec, device)

    model.to(device)
    if cfg["channels_last"]:
        model.to(memory_format=torch.channels_last)
    steps = max(1, len(train_ds) // int(cfg["batch_size"]))
    opt = build_optimizer(cfg, model)
    sched = build_scheduler(cfg, opt, steps)
    gen = torch.Generator(device=device).manual_seed(int(cfg["seed"]))
    key = "val_acc" if cfg["task"] == "classifier" else "val_loss"
    better = (lambda a, b: a > b + cfg["early_stopping"]["min_delta"]) if key == "val_acc" else \
             (lambda a, b: a < b - cfg["early_stopping"]["min_delta"])
    history, best, best_epoch, start_epoch = [], None, 0, 1
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["rng"].to(gen.device) if gen.device.type == "cpu" else state["rng"])
        history, start_epoch = list(state["history"]), int(state["epoch"]) + 1
        best, best_epoch = state["metrics"].get("best_val"), state["metrics"].get("best_epoch", 0)
        log(f"{cfg['name']}: resuming from epoch {state['epoch']} of {cfg['epochs']}")
    write_json(out / "config.json", cfg)

    patience = cfg["early_stopping"]["patience"]
    for epoch in range(start_epoch, int(cfg["epochs"]) + 1):
        te = time.perf_counter()
        row = {"epoch": epoch, **train_one_epoch(model, opt, sched, xt, yt, cfg, gen, epoch, progress),
               **evaluate(model, xv, yv, cfg), "lr": opt.param_groups[0]["lr"]}
        row["seconds"] = round(time.perf_counter() - te, 2)
        history.append(row)
        improved = best is None or better(row[key], best)
        if improved:
            best, best_epoch = row[key], epoch
        metrics = {"val_metric": key, "best_val": best, "best_epoch": best_epoch}
        ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "epoch": epoch, "metrics": metrics, "history": history, "config": cfg, "rng": gen.get_state().cpu()}
        if improved:
            save_checkpoint(best_path, ckpt)
        save_checkpoint(last_path, ckpt)
        write_json(out / "history.json", history)
        plot_history(history, out / "curves.png", title=cfg["name"])
        shown = {k: round(v, 4) for k, v in row.items() if k not in ("epoch", "lr", "seconds")}
        log(f"{cfg['name']} epoch {epoch}/{cfg['epochs']} {shown} {row['seconds']:.1f}s" + (" *" if improved else ""))
        if patience and epoch - best_epoch >= int(patience):
            log(f"{cfg['name']}: early stop, no {key} improvement for {patience} epochs")
            break

    # The test split is scored once, with the best checkpoint.
    best_ckpt = load_checkpoint(best_path, map_location=device)
    model.load_state_dict(best_ckpt["model"])
    test_ds = load_split(cfg, "test")
    test = evaluate(model, *to_tensors(test_ds, spec, device), cfg, prefix="test")
    metrics = {**best_ckpt["metrics"], **test, "test_images": len(test_ds), "epochs_run": len(history),
               "wall_seconds": round(time.perf_counter() - t0, 1)}
    save_checkpoint(best_path, {**best_ckpt, "metrics": metrics})
    write_json(out / "metrics.json", metrics)
    return metrics
