"""Run configs: defaults, profile files (TOML or YAML) and resolution into the full config.

A profile is a list of runs; each run names a model and a dataset and overrides any default:

    [defaults]            # optional, applies to every run of the file
    epochs = 5

    [[runs]]
    model = "lenet"
    dataset = "fashion-mnist"
    optimizer = { name = "adamw", lr = 0.002 }

A study is a comparison: a base run (``[defaults]``) and either a ``[grid]`` of overrides or a list
of named ``[[variants]]`` (or both: every variant at every grid point), described by ``[study]``:

    [study]
    title = "Learning rate on the MNIST CNN"
    report = "001"                      # the course report it reproduces
    reported = "0.5 diverges late"      # the report's own figure, for the README table
    measures = []                       # metrics.json keys shown as columns by ``analyze compare``
    [defaults]
    model = "convnet"
    [grid]
    "optimizer.lr" = [0.01, 0.05, 0.1, 0.5]

Shipped studies live in ``training/studies/`` (``train-all --study NAME``).

The resolved config (docs/architecture.md §3) is what the checkpoint, ``config.json`` and the
exported manifest record, so a run can be reproduced from any of them.
"""
from __future__ import annotations

import copy
import itertools
import tomllib
from pathlib import Path

import yaml

PROFILES_DIR = Path(__file__).parent / "profiles"
STUDIES_DIR = Path(__file__).parent / "studies"

DEFAULTS: dict = {
    "name": None,            # run name (directory under --out); defaults to model[-dataset]
    "model": {"name": "lenet", "args": {}},
    "dataset": {"name": "fashion-mnist", "data_dir": None, "subset": None, "val_fraction": 0.1,
                "longtail": False, "normalize": True,  # normalize false: pixels in [0, 1]
                # longtail: true or {classes, keep}; rebalance: method none, augment (flipped and noised
                # copies of the short classes) or oversample (repeated) - glassbox/data/longtail.py
                "rebalance": {"method": "none", "noise_std": 0.05, "flip": 0.5}},
    "epochs": 10,
    "batch_size": 128,
    "eval_batch_size": 1024,
    "seed": 0,
    "device": "auto",
    "channels_last": True,
    "optimizer": {"name": "adamw", "lr": 2e-3, "weight_decay": 5e-4, "momentum": 0.9, "nesterov": False},
    # warmup_epochs None: 1 for cosine, 0 for the others (any schedule takes a warmup when given one)
    "schedule": {"name": "cosine", "warmup_epochs": None, "step_size": 10, "gamma": 0.1},
    # name "ce" (cross-entropy) or "mse" (on one-hot targets; mse_on "logits" or "softmax");
    # penalize_bias: the L1/L2 penalties cover biases too (the reports'); vae_recon bce, mse or l1
    "loss": {"name": "ce", "mse_on": "logits", "label_smoothing": 0.0, "l1": 0.0, "l2": 0.0,
             "penalize_bias": False, "vae_recon": "bce", "kl_weight": 1.0,
             # for imbalanced classes, training loss only: class_weights "balanced" (n / (classes * count));
             # logit_adjust tau: cross-entropy on logits + tau * log(class prior) (Menon et al. 2021)
             "class_weights": "none", "logit_adjust": 0.0},
    "init": {"name": "default", "std": 0.01},
    # Knowledge distillation: teacher = a run folder, a .pt checkpoint or an exported model;
    # loss "mse" (on logits) or "kl" (softened by temperature); alpha weighs it against the labels.
    "distill": {"teacher": None, "loss": "mse", "temperature": 4.0, "alpha": 1.0},
    "test_curves": False,    # also score the test split every epoch, for the curves only
    # Snapshot checkpoints at these epochs and when train accuracy first crosses these levels;
    # each is exported (snapshots/exported) for ``analyze snapshots``.
    "snapshots": {"epochs": [], "train_acc": []},
    # erase: probability of random erasing (one rectangle of 2% to erase_max_area of the image, set to 0)
    "augment": {"crop_pad": 0, "hflip": False, "erase": 0.0, "erase_max_area": 0.4, "noise_std": 0.0},
    "clip_grad_norm": None,
    # Exponential moving average of the weights (and BatchNorm statistics), decay per step (0: off).
    # With it, validation, best.pt, the test score and the export use the averaged weights.
    "ema": 0.0,
    "early_stopping": {"patience": None, "min_delta": 0.0},
    "export": True,
    # Wall-time budget of the run (seconds, or "90s", "5m", "1h"): the schedule runs on the fraction
    # of it used and the run stops when the next epoch would not fit; epochs becomes an upper bound
    # (training/budget.py). cost: the run's weight when train-all shares a profile-wide budget.
    "time_budget": None,
    "cost": 1.0,
    # "fp32", or "bf16": forward and loss under bfloat16 autocast (float32 weights; CPU or CUDA)
    "precision": "fp32",
    # "engine" (torch, training.engine.fit) or "lda" (scikit-learn, training.lda: one class against the rest)
    "method": "engine",
    "lda": {"train_images": 10000, "shrinkage": None},
}

OPTIMIZERS = ("sgd", "adam", "nadam", "adamw")
SCHEDULES = ("constant", "step", "exp", "cosine")
INITS = ("default", "normal", "zeros", "xavier", "kaiming")
CHOICES = {  # config key -> allowed values: checked before any data is read
    ("optimizer", "name"): OPTIMIZERS, ("schedule", "name"): SCHEDULES, ("init", "name"): INITS,
    ("loss", "name"): ("ce", "mse"), ("loss", "mse_on"): ("logits", "softmax"),
    ("loss", "vae_recon"): ("bce", "mse", "l1"), ("distill", "loss"): ("mse", "kl"),
    ("loss", "class_weights"): ("none", "balanced"),
}
PRECISIONS = ("fp32", "bf16")
# A run's optional [analysis] table: what ``analyze vae`` draws for it by default (the faces studies
# name their people here; see analysis/faces.py). Recorded with the config, so the manifest carries it.
ANALYSIS_KEYS = ("pair_names", "direction", "direction_faces", "strengths", "alphas", "show")


class ConfigError(ValueError):
    """A profile or option that cannot be run; the CLIs print it as one line."""


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _normalise_run(run: dict) -> dict:
    """Accept the short forms ``model = "lenet"`` and ``dataset = "mnist"``."""
    run = dict(run)
    if isinstance(run.get("model"), str):
        run["model"] = {"name": run["model"], "args": run.pop("model_args", {})}
    elif "model_args" in run:  # a study variant that changes only the arguments
        run["model"] = deep_merge(run.get("model") or {}, {"args": run.pop("model_args")})
    if isinstance(run.get("dataset"), str):
        run["dataset"] = {"name": run["dataset"]}
    return run


def resolve_config(run: dict, defaults: dict | None = None) -> dict:
    """Merge DEFAULTS <- file defaults <- run, and check what can be checked without data."""
    from .models import list_models, model_info

    cfg = deep_merge(deep_merge(DEFAULTS, _normalise_run(defaults or {})), _normalise_run(run))
    name = cfg["model"]["name"]
    if name not in list_models():
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    cfg["task"] = model_info(name).task
    for (section, key), allowed in CHOICES.items():
        if cfg[section][key] not in allowed:
            raise ConfigError(f"unknown {section}.{key} {cfg[section][key]!r}; choose from {', '.join(allowed)}")
    if int(cfg["epochs"]) < 1 or int(cfg["batch_size"]) < 1:
        raise ConfigError("epochs and batch_size must be positive")
    o = cfg["optimizer"]
    if o["name"] == "sgd" and o.get("nesterov") and float(o.get("momentum", 0)) <= 0:
        raise ConfigError("Nesterov momentum needs a momentum above 0 (give --momentum, or drop --nesterov)")
    if float(o["lr"]) < 0 or float(o.get("weight_decay", 0)) < 0 or float(o.get("momentum", 0)) < 0:
        raise ConfigError("optimizer lr, weight_decay and momentum must not be negative")
    if cfg["schedule"]["warmup_epochs"] is None:
        cfg["schedule"]["warmup_epochs"] = 1 if cfg["schedule"]["name"] == "cosine" else 0
    if float(cfg["schedule"]["warmup_epochs"]) < 0 or int(cfg["schedule"]["step_size"]) < 1:
        raise ConfigError("schedule.warmup_epochs must be >= 0 and schedule.step_size >= 1")
    if cfg["method"] not in ("engine", "lda"):
        raise ConfigError(f"unknown method {cfg['method']!r}; choose from engine, lda")
    if cfg["method"] == "lda":
        cfg["export"] = False  # a scikit-learn model has no ONNX graphs here
    if cfg["distill"]["teacher"] and cfg["task"] != "classifier":
        raise ConfigError("distillation needs a classifier student")
    if cfg["distill"]["teacher"] and not 0 <= float(cfg["distill"]["alpha"]) <= 1:
        raise ConfigError("distill.alpha must be between 0 and 1")
    if not 0 <= float(cfg["ema"]) < 1:
        raise ConfigError(f"ema (the moving average's decay per step) must be in [0, 1), not {cfg['ema']}")
    if not 0 < float(cfg["dataset"]["val_fraction"]) < 1:
        raise ConfigError("dataset.val_fraction must be between 0 and 1")
    from glassbox.data import longtail_spec, rebalance_spec
    try:
        longtail_spec(cfg["dataset"]["longtail"]), rebalance_spec(cfg["dataset"]["rebalance"])
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not float(cfg["loss"]["logit_adjust"]) >= 0:
        raise ConfigError("loss.logit_adjust (tau) must be >= 0")
    if cfg["loss"]["name"] != "ce" and (cfg["loss"]["class_weights"] != "none" or float(cfg["loss"]["logit_adjust"])):
        raise ConfigError("loss.class_weights and loss.logit_adjust apply to the cross-entropy loss (loss.name ce)")
    from .budget import parse_duration
    cfg["time_budget"] = parse_duration(cfg["time_budget"])
    raw = cfg["cost"]
    try:
        cfg["cost"] = float(raw)
    except (TypeError, ValueError):
        cfg["cost"] = -1.0
    if isinstance(raw, bool) or not 0 < cfg["cost"] < float("inf"):
        raise ConfigError(f"cost must be a positive number (a run's weight in a shared time budget), got {raw!r}")
    if cfg["precision"] not in PRECISIONS:
        raise ConfigError(f"unknown precision {cfg['precision']!r}; choose from {', '.join(PRECISIONS)}")
    if cfg["precision"] == "bf16" and cfg["task"] == "vae" and cfg["loss"]["vae_recon"] == "bce":
        raise ConfigError("precision bf16 cannot train a VAE with the bce reconstruction loss (CUDA autocast refuses "
                          "binary_cross_entropy); use loss.vae_recon mse or l1, or precision fp32")
    if unknown := sorted(set(cfg.get("analysis") or {}) - set(ANALYSIS_KEYS)):
        raise ConfigError(f"unknown analysis keys {', '.join(unknown)}; known: {', '.join(ANALYSIS_KEYS)}")
    if cfg["name"] is None:
        ds = cfg["dataset"]["name"]
        cfg["name"] = name if ds == "fashion-mnist" else f"{name}-{ds}"
    return cfg


def set_dotted(d: dict, key: str, value) -> dict:
    """``set_dotted(run, "optimizer.lr", 0.1)``: a nested override, as study grids and ``--set`` give them."""
    *path, last = key.split(".")
    node = d
    for k in path:
        if k in ("model", "dataset") and isinstance(node.get(k), str):  # the short form names it
            node[k] = {"name": node[k]}
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {k} is not a table")
    node[last] = value
    return d


def expand_study(data: dict, path: Path) -> list[dict]:
    """A study's runs: each ``[[variants]]`` entry (or one unnamed variant) times every point of
    ``[grid]`` (dotted keys to lists of values), each merged over ``[defaults]``. Every variant has
    the same seed unless it sets one, so variants of one model start from the same weights."""
    variants = data.get("variants") or [{}]
    grid = data.get("grid") or {}
    for k, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid.{k} must be a non-empty list")
    runs = []
    for v in variants:
        for point in itertools.product(*grid.values()):
            run = _normalise_run(copy.deepcopy(v))
            labels = [run.pop("name")] if "name" in run else []
            for k, value in zip(grid, point, strict=True):
                set_dotted(run, k, value)
                labels.append(f"{k.rsplit('.', 1)[-1]}={value}")
            run["name"] = "-".join(labels) or "base"
            runs.append(run)
    return runs


def read_config_file(path: Path) -> dict:
    text = path.read_text()
    try:
        return (yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else tomllib.loads(text)) or {}
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot parse {path}: {e}") from None


def find_config(profile: str | Path | None = None, study: str | None = None) -> Path:
    """A profile (``quick``, ``full``), a study (``lr-mnist``) or a path to either."""
    if study:
        path = STUDIES_DIR / f"{study}.toml"
        if not path.is_file():
            raise ConfigError(f"no study {study!r}; studies: {', '.join(list_studies())}")
        return path
    path = Path(profile)
    if not path.suffix:
        path = PROFILES_DIR / f"{profile}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.toml")))
        raise ConfigError(f"no profile {str(profile)!r}: give a TOML/YAML file or one of: {known}; "
                          f"studies (--study): {', '.join(list_studies())}")
    return path


def load_profile(profile: str | Path, overrides: dict | None = None) -> tuple[list[dict], Path, dict | None]:
    """Read a profile or study file (by name or path); return its resolved run configs, the path,
    and the study's description (``[study]``; None for a profile). ``overrides`` (dotted keys,
    ``train-all --set``) apply to every run, e.g. a shortened run of a long study."""
    path = find_config(profile)
    data = read_config_file(path)
    study = data.get("study")
    runs = expand_study(data, path) if study is not None else data.get("runs")
    if not runs:
        raise ConfigError(f"{path} has no [[runs]] (a profile) and no [study] (a study)")
    # The short forms first, so that ``--set model.args.x=...`` lands over ``model_args``, not under it.
    runs = [_normalise_run(r) for r in runs]
    for run in runs:
        for k, v in (overrides or {}).items():
            set_dotted(run, k, v)
    configs = [resolve_config(r, data.get("defaults")) for r in runs]
    names = [c["name"] for c in configs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: run names must be unique, got {names}")
    if study is not None:
        study = {"name": path.stem, "title": path.stem, "report": "", "reported": "", "measures": [], "zoom": 10,
                 "notes": "", **study, "variants": names, "overrides": overrides or {},
                 "test_curves": any(c["test_curves"] for c in configs)}
    return configs, path, study


def profile_time_budget(path: Path) -> float | None:
    """A profile file's top-level ``time_budget`` (seconds): the budget ``train-all`` shares over its
    runs by their ``cost`` (training/budget.py); None when the file sets none."""
    from .budget import parse_duration
    return parse_duration(read_config_file(Path(path)).get("time_budget"))


def list_studies() -> list[str]:
    return sorted(p.stem for p in STUDIES_DIR.glob("*.toml"))


def study_titles() -> dict[str, str]:
    """name -> title of every shipped study, for ``train-all --help``."""
    out = {}
    for name in list_studies():
        try:
            out[name] = read_config_file(STUDIES_DIR / f"{name}.toml").get("study", {}).get("title", "")
        except ConfigError:
            out[name] = "(unreadable)"
    return out
