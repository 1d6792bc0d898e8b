"""Run configs: profile files (TOML or YAML) and their resolution into the full config.

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

from glassbox.data import longtail_spec, rebalance_spec

from .budget import parse_duration
from .options import DEFAULTS, ConfigError, check_values

PROFILES_DIR = Path(__file__).parent / "profiles"
STUDIES_DIR = Path(__file__).parent / "studies"

# A run's optional [analysis] table: what ``analyze vae`` draws for it by default (the faces studies
# name their people here; see analysis/faces.py). Recorded with the config, so the manifest carries it.
ANALYSIS_KEYS = ("pair_names", "direction", "direction_faces", "strengths", "alphas", "show")


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
    """Merge DEFAULTS <- file defaults <- run, and check what can be checked without data: each
    value against its option (``training.options``), then the rules that span several keys."""
    from .models import list_models, model_info

    cfg = deep_merge(deep_merge(DEFAULTS, _normalise_run(defaults or {})), _normalise_run(run))
    name = cfg["model"]["name"]
    if name not in list_models():
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    cfg["task"] = model_info(name).task
    check_values(cfg)
    if cfg["schedule"]["warmup_epochs"] is None:
        cfg["schedule"]["warmup_epochs"] = 1 if cfg["schedule"]["name"] == "cosine" else 0
    if cfg["method"] == "lda":
        cfg["export"] = False  # a scikit-learn model has no ONNX graphs here
    _check_combinations(cfg)
    cfg["time_budget"] = parse_duration(cfg["time_budget"])
    cfg["cost"] = _cost(cfg["cost"])
    if cfg["name"] is None:
        ds = cfg["dataset"]["name"]
        cfg["name"] = name if ds == "fashion-mnist" else f"{name}-{ds}"
    return cfg


def _check_combinations(cfg: dict) -> None:
    """The rules between options (one option's own values are ``check_values``')."""
    o, lc = cfg["optimizer"], cfg["loss"]
    if o["name"] == "sgd" and o.get("nesterov") and float(o.get("momentum", 0)) <= 0:
        raise ConfigError("Nesterov momentum needs a momentum above 0 (give --momentum, or drop --nesterov)")
    if cfg["distill"]["teacher"] and cfg["task"] != "classifier":
        raise ConfigError("distillation needs a classifier student")
    try:
        longtail_spec(cfg["dataset"]["longtail"]), rebalance_spec(cfg["dataset"]["rebalance"])
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if lc["name"] != "ce" and (lc["class_weights"] != "none" or float(lc["logit_adjust"])):
        raise ConfigError("loss.class_weights and loss.logit_adjust apply to the cross-entropy loss (loss.name ce)")
    if cfg["precision"] == "bf16" and cfg["task"] == "vae" and lc["vae_recon"] == "bce":
        raise ConfigError("precision bf16 cannot train a VAE with the bce reconstruction loss (CUDA autocast refuses "
                          "binary_cross_entropy); use loss.vae_recon mse or l1, or precision fp32")
    from .export.explain import METHODS
    explain = cfg["explain"]
    if not isinstance(explain, list) or (unknown := [m for m in explain if m not in METHODS]):
        raise ConfigError(f"explain must be a list of methods from {', '.join(METHODS)}, got {explain!r}")
    if unknown := sorted(set(cfg.get("analysis") or {}) - set(ANALYSIS_KEYS)):
        raise ConfigError(f"unknown analysis keys {', '.join(unknown)}; known: {', '.join(ANALYSIS_KEYS)}")


def _cost(raw) -> float:
    try:
        cost = float(raw)
    except (TypeError, ValueError):
        cost = -1.0
    if isinstance(raw, bool) or not 0 < cost < float("inf"):
        raise ConfigError(f"cost must be a positive number (a run's weight in a shared time budget), got {raw!r}")
    return cost


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
