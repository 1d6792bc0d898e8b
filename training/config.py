"""Run configs: defaults, profile files (TOML or YAML) and resolution into the full config.

A profile is a list of runs; each run names a model and a dataset and overrides any default:

    [defaults]            # optional, applies to every run of the file
    epochs = 5

    [[runs]]
    model = "lenet"
    dataset = "fashion-mnist"
    optimizer = { name = "adamw", lr = 0.002 }

The resolved config (docs/architecture.md §3) is what the checkpoint, ``config.json`` and the
exported manifest record, so a run can be reproduced from any of them.
"""
from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import yaml

PROFILES_DIR = Path(__file__).parent / "profiles"

DEFAULTS: dict = {
    "name": None,            # run name (directory under --out); defaults to model[-dataset]
    "model": {"name": "lenet", "args": {}},
    "dataset": {"name": "fashion-mnist", "data_dir": None, "subset": None, "val_fraction": 0.1,
                "longtail": False},
    "epochs": 10,
    "batch_size": 128,
    "eval_batch_size": 1024,
    "seed": 0,
    "device": "auto",
    "channels_last": True,
    "optimizer": {"name": "adamw", "lr": 2e-3, "weight_decay": 5e-4, "momentum": 0.9, "nesterov": True},
    "schedule": {"name": "cosine", "warmup_epochs": 1, "step_size": 10, "gamma": 0.1},
    "loss": {"label_smoothing": 0.0, "l1": 0.0, "l2": 0.0, "vae_recon": "bce", "kl_weight": 1.0},
    "augment": {"crop_pad": 0, "hflip": False, "noise_std": 0.0},
    "clip_grad_norm": None,
    "early_stopping": {"patience": None, "min_delta": 0.0},
    "export": True,
}

OPTIMIZERS = ("sgd", "adam", "nadam", "adamw")
SCHEDULES = ("constant", "step", "cosine")


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
    if cfg["optimizer"]["name"] not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {cfg['optimizer']['name']!r}; choose from {', '.join(OPTIMIZERS)}")
    if cfg["schedule"]["name"] not in SCHEDULES:
        raise ConfigError(f"unknown schedule {cfg['schedule']['name']!r}; choose from {', '.join(SCHEDULES)}")
    if cfg["loss"]["vae_recon"] not in ("bce", "mse"):
        raise ConfigError("loss.vae_recon must be 'bce' or 'mse'")
    if int(cfg["epochs"]) < 1 or int(cfg["batch_size"]) < 1:
        raise ConfigError("epochs and batch_size must be positive")
    if not 0 < float(cfg["dataset"]["val_fraction"]) < 1:
        raise ConfigError("dataset.val_fraction must be between 0 and 1")
    if cfg["name"] is None:
        ds = cfg["dataset"]["name"]
        cfg["name"] = name if ds == "fashion-mnist" else f"{name}-{ds}"
    return cfg


def load_profile(profile: str | Path) -> tuple[list[dict], Path]:
    """Read a profile by name (``quick``, ``full``) or path; return resolved run configs."""
    path = Path(profile)
    if not path.suffix:
        path = PROFILES_DIR / f"{profile}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.toml")))
        raise ConfigError(f"no profile {str(profile)!r}: give a TOML/YAML file or one of: {known}")
    text = path.read_text()
    try:
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot parse {path}: {e}") from None
    runs = (data or {}).get("runs")
    if not runs:
        raise ConfigError(f"{path} has no [[runs]]")
    configs = [resolve_config(r, data.get("defaults")) for r in runs]
    names = [c["name"] for c in configs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: run names must be unique, got {names}")
    return configs, path
