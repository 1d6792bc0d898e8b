"""The training engine: ``train_one_epoch``, ``evaluate`` and ``fit`` (torchvision-references style).

    from training.config import resolve_config
    from training.engine import fit
    summary = fit(resolve_config({"model": "lenet", "epochs": 3}), "runs/lenet")

``fit`` is linear: ``prepare`` (resume, data, model, optimizer, the enriched config), the epoch loop,
then ``finish`` (the test split with the best checkpoint, weight measures, snapshot exports). What
differs between a classifier and a VAE is looked up in ``training.tasks``.

Data is loaded once, preprocessed by the same numpy ``glassbox.data.preprocess`` the server uses,
and held as tensors; a batch is one index-gather, so there is no per-sample Python on the hot path.
Model selection uses the validation split only; the test split is scored once, at the end, with the
best checkpoint.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from glassbox import data as D
from glassbox import plots
from glassbox.io import write_json

from . import distributed
from .augment import augment, augments_anything
from .budget import Budget
from .checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from .config import ConfigError
from .distributed import SINGLE, Dist
from .ema import EMA
from .models import create_model, model_info
from .tasks import Totals, task_of


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


def preprocessing_spec(cfg: dict, model: nn.Module) -> dict:
    """The normalization recorded with the model; the manifest copies it for the server."""
    c, size = model.in_chans, model.img_size
    if task_of(cfg).unit_pixels or not cfg["dataset"].get("normalize", True):
        mean, std = [0.0] * c, [1.0] * c  # pixels in [0, 1], as the reports' linear models saw them
    else:
        info = D.dataset_info(cfg["dataset"]["name"])
        mean, std = list(info["mean"]), list(info["std"])
        if len(mean) != c:  # gray dataset into an RGB model or the reverse
            mean, std = [float(np.mean(mean))] * c, [float(np.mean(std))] * c
    return {"channels": c, "size": [size, size], "mean": mean, "std": std}


def load_split(cfg: dict, split: str) -> D.ArrayDataset:
    ds_cfg = cfg["dataset"]
    ds = D.load_dataset(ds_cfg["name"], split=split, data_dir=ds_cfg.get("data_dir"), **D.reader_options(ds_cfg))
    if split == "train":
        if ds_cfg.get("longtail"):
            ds = D.longtail(ds, **D.longtail_spec(ds_cfg["longtail"]), seed=cfg["seed"])
        if ds_cfg.get("subset"):
            ds = D.random_subset(ds, int(ds_cfg["subset"]), seed=cfg["seed"])
    elif ds_cfg.get("test_subset"):
        ds = D.random_subset(ds, int(ds_cfg["test_subset"]), seed=cfg["seed"])
    return ds


def to_tensors(ds: D.ArrayDataset, spec: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(D.preprocess(ds.images, spec)).to(device)
    return x, torch.from_numpy(np.asarray(ds.labels, dtype=np.int64)).to(device)


def fingerprint(ds: D.ArrayDataset) -> str:
    """A short hash of a split's images and labels: resume refuses to continue on a different split."""
    h = hashlib.sha256(np.ascontiguousarray(ds.images).tobytes())
    h.update(np.ascontiguousarray(ds.labels).tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def init_weights(model: nn.Module, ic: dict) -> None:
    """Re-initialise every Linear/Conv weight (``normal`` N(0, std^2), ``zeros``, ``xavier``,
    ``kaiming``) with zero biases; ``default`` keeps PyTorch's own. The reports' linear models
    started from N(0, 1e-4)-sized weights, which this reproduces."""
    if ic["name"] == "default":
        return
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)):
            {"normal": lambda w: nn.init.normal_(w, 0.0, float(ic["std"])), "zeros": nn.init.zeros_,
             "xavier": nn.init.xavier_uniform_, "kaiming": nn.init.kaiming_normal_}[ic["name"]](m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build_optimizer(cfg: dict, model: nn.Module) -> torch.optim.Optimizer:
    o = cfg["optimizer"]
    lr, wd = float(o["lr"]), float(o.get("weight_decay", 0.0))
    # No weight decay on biases and norm parameters: decaying them only hurts.
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}]
    if o["name"] == "sgd":
        cls, kw = torch.optim.SGD, {"momentum": float(o.get("momentum", 0.9)), "nesterov": bool(o.get("nesterov"))}
    else:
        cls, kw = {"adam": torch.optim.Adam, "nadam": torch.optim.NAdam, "adamw": torch.optim.AdamW}[o["name"]], {}
    # The fused kernels (one pass over every parameter, CPU and CUDA) make the step ~10% of a
    # LeNet batch-128 step cheaper here; NAdam has none (TypeError) and a device without them
    # refuses (RuntimeError): both fall back to the default implementation.
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


def teacher_outputs(cfg: dict, train: D.ArrayDataset) -> torch.Tensor:
    """The teacher's logits for every training image, computed once (without augmentation) and
    reused every epoch. The teacher is a run (its best.pt, or a .pt file) run with torch, or an
    exported model (a version folder, a model folder, or its classifier.onnx) run with onnxruntime;
    each preprocesses the images its own way, as it was trained."""
    from glassbox.manifest import read_manifest, versions
    src = Path(cfg["distill"]["teacher"])
    if src.is_dir() and (src / "best.pt").is_file():
        src = src / "best.pt"
    if src.suffix == ".pt":
        teacher, ckpt = model_from_checkpoint(src)
        ds = ckpt["config"]["dataset"]
        x = torch.from_numpy(D.preprocess(train.images, {k: ds[k] for k in ("channels", "size", "mean", "std")}))
        return predict(teacher, x, {"eval_batch_size": 1024, "channels_last": False})
    if src.is_file() and src.name == "classifier.onnx":
        src = src.parent
    elif src.is_dir() and not (src / "manifest.json").is_file() and versions(src):
        src = src / str(versions(src)[-1])
    if not (src / "manifest.json").is_file():
        raise ConfigError(f"teacher {cfg['distill']['teacher']!r}: "
                          "not a run folder, checkpoint (.pt) or exported model")
    import onnxruntime as ort
    man = read_manifest(src)
    sess = ort.InferenceSession(str(src / man["graphs"]["classifier"]["file"]), providers=["CPUExecutionProvider"])
    x = D.preprocess(train.images, man["preprocessing"])
    return torch.from_numpy(np.concatenate([sess.run(["logits"], {"input": x[s:s + 1024]})[0]
                                            for s in range(0, len(x), 1024)]))


def weight_measures(model: nn.Module) -> dict:
    """Size and sparsity of the weights (matrices and kernels; biases and norms excluded): the L2
    norm and how many have |w| > 1e-3, as report 001 compared lasso and ridge."""
    w = torch.cat([p.detach().flatten() for p in model.parameters() if p.ndim > 1])
    return {"weight_l2": float(w.norm()), "weights_above_1e-3": int((w.abs() > 1e-3).sum()), "weights_total": w.numel()}


def first_layer(model: nn.Module) -> np.ndarray:
    """The first weight matrix or kernel bank, for drawing (report 001's ten 28x28 weight images)."""
    return next(p for p in model.parameters() if p.ndim > 1).detach().cpu().float().numpy()


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


def _resumed_config(cfg: dict, state: dict) -> dict:
    """The checkpoint's config with what a resume may extend: ``epochs`` and the ``time_budget``
    (a run keeps its mode, by epochs or by budget; either can be raised)."""
    old = state["config"]
    budget = old.get("time_budget")
    if budget and cfg.get("time_budget"):
        budget = max(float(budget), float(cfg["time_budget"]))
    return {**old, "epochs": max(int(cfg["epochs"]), int(old["epochs"])), "time_budget": budget}


def prepare(cfg: dict, out: Path, resume: bool, log=print, dist: Dist = SINGLE,
            device: torch.device | None = None) -> Run:
    """Resume state, data, model, optimizer and schedule; the config enriched with what the run
    resolved (model args, classes, normalization, split sizes and fingerprint) and written out."""
    t0 = time.perf_counter()
    state = None
    if resume and (out / "last.pt").is_file():
        state = load_checkpoint(out / "last.pt")
        cfg = _resumed_config(cfg, state)
    torch.manual_seed(cfg["seed"])
    device = device or select_device(cfg["device"])
    try:
        model = create_model(cfg["model"]["name"], **model_args_for_data(cfg))
    except (TypeError, ValueError) as e:  # bad --model-arg: one line, not a traceback
        raise ConfigError(f"{cfg['name']}: cannot build {cfg['model']['name']!r}: {e}") from None
    init_weights(model, cfg["init"])
    cfg = {**cfg, "model": {"name": cfg["model"]["name"], "args": dict(model.args)}}
    spec = preprocessing_spec(cfg, model)
    train_ds, val_ds = D.train_val_split(load_split(cfg, "train"), float(cfg["dataset"]["val_fraction"]),
                                         seed=cfg["seed"])
    train_ds = D.rebalance(train_ds, cfg["dataset"].get("rebalance"), seed=cfg["seed"])  # after the split: no leak
    cfg["dataset"] = {**cfg["dataset"], "classes": list(train_ds.classes), "channels": spec["channels"],
                      "class_counts": np.bincount(train_ds.labels, minlength=len(train_ds.classes)).tolist(),
                      "size": spec["size"], "mean": spec["mean"], "std": spec["std"],
                      "train_images": len(train_ds), "val_images": len(val_ds),
                      "val_fingerprint": fingerprint(val_ds)}
    if (state is not None
            and state["config"]["dataset"].get("val_fingerprint") not in (None, cfg["dataset"]["val_fingerprint"])):
        # A different validation split would validate on images the model has trained on.
        raise D.DatasetError(f"{cfg['name']}: the validation split differs from the one this run started with "
                             f"(data or split code changed); resuming would leak training images into model "
                             f"selection. Start the run afresh (without --resume) or restore the data.")
    bs = int(cfg["batch_size"])
    if dist.enabled and (bs < dist.world_size or len(train_ds) < bs):
        raise ConfigError(f"{cfg['name']}: {dist.world_size} processes need batch_size >= {dist.world_size} and "
                          f"at least batch_size training images (batch_size is the global batch)")
    cfg["resolved_device"] = str(device)
    model.to(device)
    if cfg["channels_last"]:
        model.to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg, model)
    steps_per_epoch = max(1, len(train_ds) // bs)
    test = to_tensors(load_split(cfg, "test"), spec, device) if cfg["test_curves"] or cfg["time_budget"] else None
    budget = None
    if cfg["time_budget"]:
        b = state.get("budget") if state is not None else None
        budget = Budget(float(cfg["time_budget"]), steps_per_epoch, train_images=len(train_ds) // dist.world_size,
                        val_images=len(val_ds) // dist.world_size, test_images=len(test[1]),
                        classifier=cfg["task"] == "classifier", start=t0,
                        sync=functools.partial(distributed.broadcast_float, d=dist), **(b or {}))
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
        model.load_state_dict(state.get("train_model", state["model"]))
        if run.ema is not None:
            run.ema.module.load_state_dict(state["model"])
            run.ema.steps = int(state.get("ema_steps", 0))
        opt.load_state_dict(state["optimizer"])
        run.sched.load_state_dict(state["scheduler"])
        # ``rng`` holds the batch-order generator's state, so a resumed run draws the same batches
        # (and augmentations) as an uninterrupted one would have.
        run.gen.set_state(state["rng"].to(run.gen.device) if run.gen.device.type == "cpu" else state["rng"])
        if "torch_rng" in state:  # dropout's random numbers continue too (the global CPU generator)
            torch.set_rng_state(state["torch_rng"])
        run.history, run.start_epoch = list(state["history"]), int(state["epoch"]) + 1
        run.best, run.best_epoch = state["metrics"].get("best_val"), state["metrics"].get("best_epoch", 0)
        run.snapshots = list(state.get("snapshots", []))
        log(f"{cfg['name']}: resuming from epoch {state['epoch']} of {cfg['epochs']}"
            + (f", {b['used_s']:.0f} s of its {cfg['time_budget']:.0f} s budget used" if budget and b else ""))
    run.net = distributed.wrap(model, dist)  # after the resumed weights: DDP starts from rank 0's
    distributed.install_step_hashes(opt, model, dist)
    if dist.is_main:
        write_json(out / "config.json", cfg)
    return run


def _snapshot_tags(run: Run, row: dict) -> list[str]:
    """Snapshot triggers hit by this epoch: a chosen epoch, or train accuracy first crossing a level."""
    sc, taken = run.cfg["snapshots"], {s["tag"] for s in run.snapshots}
    tags = [f"epoch-{row['epoch']}"] if row["epoch"] in sc["epochs"] else []
    tags += [f"train_acc-{level:g}" for level in sc["train_acc"] if row.get("train_acc", 0) >= level]
    return [t for t in tags if t not in taken]


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


def train_epochs(run: Run, progress: bool, log) -> None:
    cfg, task = run.cfg, task_of(run.cfg)
    min_delta, patience = cfg["early_stopping"]["min_delta"], cfg["early_stopping"]["patience"]
    for epoch in range(run.start_epoch, int(cfg["epochs"]) + 1):
        if not _budget_allows(run, epoch, log):
            break
        te = time.perf_counter()
        stop = None if run.budget is None else (lambda: run.budget.out_of_time)
        row = {"epoch": epoch, **train_one_epoch(run.net, run.opt, run.sched, *run.train, cfg, run.gen, epoch,
                                                 progress, run.teacher, run.dist, stop)}
        row["train_seconds"] = round(time.perf_counter() - te, 2)
        row.update(_validate(run))
        row["lr"] = run.opt.param_groups[0]["lr"]
        row["seconds"] = round(time.perf_counter() - te, 2)
        run.history.append(row)
        value = row[task.val_key]
        improved = run.best is None or (value > run.best + min_delta if task.higher_is_better
                                        else value < run.best - min_delta)
        if improved:
            run.best, run.best_epoch = value, epoch
        for tag in _snapshot_tags(run, row):
            run.snapshots.append({"tag": tag, "epoch": epoch, "train_acc": row.get("train_acc"),
                                  "checkpoint": f"snapshots/{tag}.pt"})
        ckpt = {"model": run.scored.state_dict(), "optimizer": run.opt.state_dict(),
                "scheduler": run.sched.state_dict(),
                "epoch": epoch, "metrics": {"val_metric": task.val_key, "best_val": run.best,
                                            "best_epoch": run.best_epoch},
                "history": run.history, "config": cfg, "rng": run.gen.get_state().cpu(),
                "torch_rng": torch.get_rng_state(), "snapshots": run.snapshots,
                "budget": None if run.budget is None else run.budget.state(run.sched.last_epoch)}
        if run.ema is not None:  # ``model`` holds the averaged weights; resume needs the trained ones too
            ckpt.update(train_model=run.model.state_dict(), ema_steps=run.ema.steps)
        if run.dist.is_main:  # one writer; the other ranks hold the same state
            for s in run.snapshots:
                if s["epoch"] == epoch:
                    save_checkpoint(run.out / s["checkpoint"], ckpt)
            if improved:
                save_checkpoint(run.out / "best.pt", ckpt)
            save_checkpoint(run.out / "last.pt", ckpt)
            write_json(run.out / "history.json", run.history)
            # Drawing costs ~0.3 s: with hundreds of short epochs, redraw at most every 30 s (and at the end).
            if time.perf_counter() - run.drawn > 30:
                plots.save(plots.curves_figure(run.history, cfg["name"]), run.out / "curves.png")
                run.drawn = time.perf_counter()
        shown = {k: round(v, 4) for k, v in row.items()
                 if k not in ("epoch", "lr", "seconds", "train_seconds", "train_images")}
        log(f"{cfg['name']} epoch {epoch}/{cfg['epochs']} {shown} {row['seconds']:.1f}s" + (" *" if improved else ""))
        if not math.isfinite(row["train_loss"]):
            log(f"{cfg['name']}: training diverged (loss {row['train_loss']}), stopped")
            break
        if patience and epoch - run.best_epoch >= int(patience):
            log(f"{cfg['name']}: early stop, no {task.val_key} improvement for {patience} epochs")
            break


def speed(history: list[dict], levels=(0.85, 0.9)) -> dict:
    """Training images per second (the epochs' training time only) and, for classifiers, the
    seconds of epochs (training and validation) until validation accuracy first reached each level."""
    rows = [r for r in history if r.get("train_seconds") and "train_images" in r]
    if not rows:
        return {}
    out = {"train_images_per_s": round(sum(r["train_images"] for r in rows) / sum(r["train_seconds"] for r in rows),
                                       1)}
    if all("val_acc" in r for r in history):
        elapsed, reached = 0.0, {}
        for r in history:
            elapsed += r["seconds"]
            for level in levels:
                if r["val_acc"] >= level and str(level) not in reached:
                    reached[str(level)] = round(elapsed, 1)
        out["seconds_to_val_acc"] = {str(level): reached.get(str(level)) for level in levels}
    return out


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
        metrics["per_class_acc"] = [float((pred[y == c] == c).float().mean()) if (y == c).any() else None
                                    for c in range(len(cfg["dataset"]["classes"]))]
        metrics.update(D.head_tail_accuracy(y.cpu().numpy(), pred.cpu().numpy(), cfg["dataset"].get("longtail")))
        metrics.update(weight_measures(run.model))
        np.save(run.out / "first_layer.npy", first_layer(run.model))
    if run.snapshots:
        export_snapshots(run, log)
    if run.budget is not None:  # rank 0 alone here: its own clock, not the broadcast one
        metrics.update(time_budget_s=run.budget.total, budget_used_s=round(run.budget.elapsed(local=True), 1))
    if run.dist.enabled:
        metrics["world_size"] = run.dist.world_size
    save_checkpoint(run.out / "best.pt", {**best_ckpt, "metrics": metrics})
    write_json(run.out / "metrics.json", metrics)
    return metrics


def export_snapshots(run: Run, log) -> None:
    """Export each snapshot (parity-gated like any export) into ``<run>/snapshots/exported``, so
    ``analyze snapshots`` reads its layers through the ONNX graphs' named outputs."""
    from .export import export_checkpoint
    index = []
    for s in run.snapshots:
        name = f"{run.cfg['name']}-{s['tag']}".replace(".", "_")
        res = export_checkpoint(run.out / s["checkpoint"], run.out / "snapshots" / "exported", name,
                                parity_images=64, data_dir=run.cfg["dataset"].get("data_dir"))
        index.append({**s, "model": name, "version": res.version})
        log(f"{run.cfg['name']}: snapshot {s['tag']} exported as {name}/{res.version}")
    write_json(run.out / "snapshots" / "index.json", index)


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
