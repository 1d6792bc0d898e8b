"""Everything a run needs before its first epoch, in the order ``prepare`` takes the steps.

    from training.prepare import prepare
    run = prepare(cfg, Path("runs/lenet"), resume=False)     # a Run: model, data, optimizer, schedule

The steps: the resumed checkpoint (if any) and its config; the model, built for the dataset's
channels, size and classes; the data (``training.datasets``) and the config enriched with what it
resolved; the optimizer and schedule (``training.optim``), the time budget (``training.budget``),
the teacher's outputs (``training.distill``), the moving average (``training.ema``); then, with a
checkpoint, the resume, in one block. The enriched config is written to ``config.json``.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from glassbox import data as D
from glassbox.io import write_json

from . import distributed
from .budget import Budget
from .checkpoint import load_checkpoint
from .datasets import describe_data, load_data, load_split, preprocessing_spec, to_tensors
from .distill import teacher_outputs
from .distributed import SINGLE, Dist
from .ema import EMA
from .models import create_model, model_info
from .optim import build_optimizer, build_scheduler
from .options import ConfigError


@dataclass
class Run:
    """Everything the epoch loop needs, built by ``prepare``."""
    cfg: dict
    out: Path
    model: nn.Module
    opt: torch.optim.Optimizer
    sched: object
    gen: torch.Generator
    spec: dict
    train: tuple
    val: tuple
    test: tuple | None = None          # loaded up front for per-epoch test curves or a time budget
    teacher: torch.Tensor | None = None
    history: list = field(default_factory=list)
    best: float | None = None
    best_epoch: int = 0
    start_epoch: int = 1
    snapshots: list = field(default_factory=list)
    drawn: float = 0.0                 # when curves.png was last drawn
    dist: Dist = SINGLE                # this process's place in a torchrun job
    net: nn.Module | None = None       # what the training steps run: DDP over ``model`` under torchrun
    budget: Budget | None = None       # with a time_budget (training.budget)
    ema: EMA | None = None             # with cfg["ema"]: the averaged weights (training.ema)

    @property
    def scored(self) -> nn.Module:
        """The weights that are validated, checkpointed as ``model`` and exported."""
        return self.model if self.ema is None else self.ema.module


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_args_for_data(cfg: dict) -> dict:
    """The model's constructor arguments, completed from the dataset: a model takes the dataset's
    channels (and, when it is defined for any size, its image size) and a classifier its number of
    classes unless told otherwise, so no model silently turns CIFAR-10 or LFW into 1-channel 28-px
    images or LFW's people into 10 classes. A size or channel count set
    both on the dataset and on the model, differently, is a ConfigError."""
    name, args, ds = cfg["model"]["name"], dict(cfg["model"]["args"]), cfg["dataset"]
    info = D.dataset_info(ds["name"])
    for arg, key, value in (("in_chans", "channels", info["channels"]), ("img_size", "size", info["size"][0])):
        wanted = ds.get(key)
        wanted = wanted[0] if isinstance(wanted, list) else wanted
        if arg in args and wanted is not None and int(args[arg]) != int(wanted):
            raise ConfigError(f"{cfg['name']}: model argument {arg}={args[arg]} contradicts dataset.{key}={wanted}; "
                              f"set one of them")
        if arg not in args and (arg == "in_chans" or model_info(name).default_size is None or wanted is not None):
            args[arg] = int(wanted if wanted is not None else value)
    if model_info(name).task == "classifier" and "num_classes" not in args and info.get("num_classes"):
        args["num_classes"] = int(info["num_classes"])  # LFW people: 62 or 5,749 classes, not the default 10
    return args


@torch.no_grad()
def init_weights(model: nn.Module, ic: dict) -> None:
    """Re-initialise every Linear/Conv weight (``normal`` N(0, std^2), ``zeros``, ``xavier``,
    ``kaiming``) with zero biases; ``default`` keeps PyTorch's own. The reports' linear models
    started from N(0, 1e-4)-sized weights, which this reproduces."""
    if ic["name"] == "default":
        return
    init = {"normal": lambda w: nn.init.normal_(w, 0.0, float(ic["std"])), "zeros": nn.init.zeros_,
            "xavier": nn.init.xavier_uniform_, "kaiming": nn.init.kaiming_normal_}[ic["name"]]
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)):
            init(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build_model(cfg: dict) -> nn.Module:
    """The registry's model for the config's data, initialised as the config says."""
    try:
        model = create_model(cfg["model"]["name"], **model_args_for_data(cfg))
    except (TypeError, ValueError) as e:  # bad --model-arg: one line, not a traceback
        raise ConfigError(f"{cfg['name']}: cannot build {cfg['model']['name']!r}: {e}") from None
    init_weights(model, cfg["init"])
    return model


def _resumed_config(cfg: dict, state: dict) -> dict:
    """The checkpoint's config with what a resume may extend: ``epochs`` and the ``time_budget``
    (a run keeps its mode, by epochs or by budget; either can be raised)."""
    old = state["config"]
    budget = old.get("time_budget")
    if budget and cfg.get("time_budget"):
        budget = max(float(budget), float(cfg["time_budget"]))
    return {**old, "epochs": max(int(cfg["epochs"]), int(old["epochs"])), "time_budget": budget}


def _check_data(cfg: dict, state: dict | None, train_images: int, dist: Dist) -> None:
    """Refuse a resume on another validation split, and a global batch the ranks cannot share."""
    if state is not None and state["config"]["dataset"].get("val_fingerprint") not in (
            None, cfg["dataset"]["val_fingerprint"]):
        # A different validation split would validate on images the model has trained on.
        raise D.DatasetError(f"{cfg['name']}: the validation split differs from the one this run started with "
                             f"(data or split code changed); resuming would leak training images into model "
                             f"selection. Start the run afresh (without --resume) or restore the data.")
    bs = int(cfg["batch_size"])
    if dist.enabled and (bs < dist.world_size or train_images < bs):
        raise ConfigError(f"{cfg['name']}: {dist.world_size} processes need batch_size >= {dist.world_size} and "
                          f"at least batch_size training images (batch_size is the global batch)")


def _budget(cfg: dict, state: dict | None, steps_per_epoch: int, sizes: tuple[int, int, int], dist: Dist,
            start: float) -> Budget | None:
    """The run's time budget (None without one), continued from the checkpoint's on resume."""
    if not cfg["time_budget"]:
        return None
    saved = (state.get("budget") if state is not None else None) or {}
    train, val, test = sizes
    # With test curves every epoch's validation scores the test split too: the budget plans (and scales its
    # reserve for the closing test scoring) from what that pass scores, not from the validation split alone.
    scored = val + (test if cfg["test_curves"] else 0)
    return Budget(float(cfg["time_budget"]), steps_per_epoch, train_images=train // dist.world_size,
                  val_images=scored // dist.world_size, test_images=test, classifier=cfg["task"] == "classifier",
                  start=start, sync=functools.partial(distributed.broadcast_float, d=dist), **saved)


def resume(run: Run, state: dict, log) -> None:
    """Continue from ``last.pt``: weights (both sets with an average), optimizer, schedule, both
    generators, history, best score and snapshots."""
    run.model.load_state_dict(state.get("train_model", state["model"]))
    if run.ema is not None:
        run.ema.module.load_state_dict(state["model"])
        run.ema.steps = int(state.get("ema_steps", 0))
    run.opt.load_state_dict(state["optimizer"])
    run.sched.load_state_dict(state["scheduler"])
    # ``rng`` holds the batch-order generator's state, so a resumed run draws the same batches
    # (and augmentations) as an uninterrupted one would have.
    run.gen.set_state(state["rng"].to(run.gen.device) if run.gen.device.type == "cpu" else state["rng"])
    if "torch_rng" in state:  # dropout's random numbers continue too (the global CPU generator)
        torch.set_rng_state(state["torch_rng"])
    run.history, run.start_epoch = list(state["history"]), int(state["epoch"]) + 1
    run.best, run.best_epoch = state["metrics"].get("best_val"), state["metrics"].get("best_epoch", 0)
    run.snapshots = list(state.get("snapshots", []))
    b, cfg = state.get("budget"), run.cfg
    log(f"{cfg['name']}: resuming from epoch {state['epoch']} of {cfg['epochs']}"
        + (f", {b['used_s']:.0f} s of its {cfg['time_budget']:.0f} s budget used" if run.budget and b else ""))


def prepare(cfg: dict, out: Path, resume_run: bool, log=print, dist: Dist = SINGLE,
            device: torch.device | None = None) -> Run:
    """Resume state, model, data, optimizer and schedule; the config enriched with what the run
    resolved (model args, classes, normalization, split sizes and fingerprint) and written out."""
    t0 = time.perf_counter()
    state = load_checkpoint(out / "last.pt") if resume_run and (out / "last.pt").is_file() else None
    if state is not None:
        cfg = _resumed_config(cfg, state)
    torch.manual_seed(cfg["seed"])
    device = device or select_device(cfg["device"])
    model = build_model(cfg)
    cfg = {**cfg, "model": {"name": cfg["model"]["name"], "args": dict(model.args)}}
    spec = preprocessing_spec(cfg, model)
    train_ds, val_ds = load_data(cfg)
    cfg["dataset"] = describe_data(cfg, spec, train_ds, val_ds)
    _check_data(cfg, state, len(train_ds), dist)
    cfg["resolved_device"] = str(device)
    model.to(device)
    if cfg["channels_last"]:
        model.to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg, model)
    steps_per_epoch = max(1, len(train_ds) // int(cfg["batch_size"]))
    test = to_tensors(load_split(cfg, "test"), spec, device) if cfg["test_curves"] or cfg["time_budget"] else None
    budget = _budget(cfg, state, steps_per_epoch, (len(train_ds), len(val_ds), len(test[1]) if test else 0), dist, t0)
    run = Run(cfg, out, model, opt, build_scheduler(cfg, opt, steps_per_epoch, budget),
              torch.Generator(device=device).manual_seed(int(cfg["seed"])), spec,
              to_tensors(train_ds, spec, device), to_tensors(val_ds, spec, device), test, dist=dist, budget=budget)
    if cfg["distill"]["teacher"]:
        run.teacher = teacher_outputs(cfg, train_ds).to(device)
        log(f"{cfg['name']}: distilling from {cfg['distill']['teacher']} ({cfg['distill']['loss']})")
    if cfg["ema"]:
        run.ema = EMA(model, cfg["ema"])
        run.ema.follow(opt, model)
    if state is not None:
        resume(run, state, log)
    run.net = distributed.wrap(model, dist)  # after the resumed weights: DDP starts from rank 0's
    distributed.install_step_hashes(opt, model, dist)
    if dist.is_main:
        write_json(out / "config.json", cfg)
    return run
