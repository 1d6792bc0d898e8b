"""Command line: ``train`` one model, ``train-all`` a profile of runs.

    train --model lenet --epochs 3 --out runs/lenet
    train-all --profile quick --out runs/quick          # the demo's training step
    train-all --config my_runs.toml --out runs/mine

Each run leaves best.pt, last.pt, config.json, history.json, metrics.json and curves.png in
``<out>/<run name>/``; ``train-all`` also writes ``<out>/summary.json`` and, unless
``--no-export``, exports every run into the model repository (``exported/``).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from .config import load_profile, resolve_config, set_dotted, study_titles
from .options import OPTIONS, ConfigError, Option


def _fail(msg: str, code: int = 2):
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


def _errors():
    """The errors a user can fix, turned into one line and exit code 2 instead of a traceback
    (a refused export too: its table names each output beyond the tolerances)."""
    from glassbox.data import DatasetError

    from .export.parity import ParityError
    return (ConfigError, DatasetError, FileNotFoundError, ParityError)


def _parse_pairs(pairs: tuple[str, ...], option: str = "--model-arg") -> dict:
    """KEY=VALUE pairs; values are JSON where they parse (numbers, true, lists), else strings."""
    args = {}
    for p in pairs:
        if "=" not in p:
            raise click.BadParameter(f"expected KEY=VALUE, got {p!r}", param_hint=option)
        k, v = p.split("=", 1)
        try:
            args[k] = json.loads(v)
        except json.JSONDecodeError:
            args[k] = v
    return args


class _KeepArgs(click.Command):
    """A command that keeps its raw arguments (``ctx.meta["argv"]``), for ``--nproc`` to pass them on."""

    def parse_args(self, ctx, args):
        ctx.meta["argv"] = list(args)
        return super().parse_args(ctx, args)


def _launch_torchrun(nproc: int, command: str) -> None:
    """``--nproc N`` outside torchrun: run this very command line under torchrun with N processes."""
    import os

    from .distributed import launch
    if nproc <= 1 or "WORLD_SIZE" in os.environ:
        return
    argv, args = click.get_current_context().meta["argv"], []
    skip = False
    for a in argv:  # drop --nproc N / --nproc=N, keep the rest as given
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            args.append(a)
    sys.exit(launch(nproc, command, args))


def _leave_torchrun_worker() -> None:
    """A torchrun worker that finished its work exits at once (output flushed, process group already
    destroyed): gloo's threads can abort the process during interpreter teardown ("terminate called
    without an active exception", seen once in CI), which torchrun would report as a failed run."""
    from .distributed import from_env
    if from_env().enabled:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _main_only():
    """True on rank 0 of a torchrun job (and in a plain process): who prints and exports."""
    from .distributed import from_env
    return from_env().is_main


def _export(run_dir: Path, repository: str, data_dir: str | None, quantize: str | None = None) -> dict:
    from .export import export_checkpoint
    res = export_checkpoint(run_dir / "best.pt", repository, data_dir=data_dir)
    out = {"exported": f"{res.name}/{res.version}", "export_seconds": round(res.seconds, 1)}
    if quantize == "int8":  # config key quantize: a refused variant is reported, not a failed run
        from .export.quantize import QuantizeRefused, export_int8
        try:
            q = export_int8(res.path, repository, data_dir=data_dir)
            out["int8"] = f"{q.name}/{q.version}"
        except QuantizeRefused as e:
            click.echo(f"warning: {e}", err=True)
            out["int8"] = "refused"
    return out


def _schema_option(o: Option):
    """The ``train`` flag of a schema entry: a switch for a boolean, repeatable for a list or table."""
    if isinstance(o.default, bool):
        return click.option(o.flag, o.key.replace(".", "_"), is_flag=True, help=o.help)
    t = o.type or (str if isinstance(o.default, (list, dict)) else type(o.default))
    if o.choices:
        t = click.Choice(o.choices)
    elif o.low is not None and t in (int, float):
        t = (click.IntRange if t is int else click.FloatRange)(
            o.low, o.high, min_open=o.open in ("low", "both"), max_open=o.open in ("high", "both"))
    multiple = isinstance(o.default, (list, dict))
    return click.option(o.flag, o.key.replace(".", "_"), type=t, multiple=multiple, metavar=o.metavar,
                        default=() if multiple else o.default, help=o.help)


def schema_flags(command):
    """Add a flag for every option of the schema that names one, in the schema's order."""
    for o in reversed([o for o in OPTIONS if o.flag]):
        command = _schema_option(o)(command)
    return command


def _run_from_flags(o: dict) -> dict:
    """The run the flags describe (every flagged option, defaults included), then ``--set``."""
    run: dict = {}
    for opt in OPTIONS:
        if opt.flag:
            value = o[opt.key.replace(".", "_")]
            if isinstance(opt.default, dict):
                value = _parse_pairs(value, opt.flag)
            set_dotted(run, opt.key, list(value) if isinstance(opt.default, list) else value)
    for key, value in _parse_pairs(o["overrides"], "--set").items():
        set_dotted(run, key, value)
    return run


@click.command(cls=_KeepArgs, context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@schema_flags
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Set any option of the run, dotted keys, JSON values (e.g. loss.class_weights=balanced); "
                   "the options are listed in training/options.py (repeatable).")
@click.option("--nproc", type=click.IntRange(1), default=1,
              help="Data-parallel processes on this machine: runs this command under torchrun (gloo on CPU, "
                   "NCCL on CUDA); batch-size stays the global batch.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run directory [default: runs/<model>[-<dataset>]].")
@click.option("--resume", is_flag=True, help="Continue from <out>/last.pt.")
@click.option("--export/--no-export", "do_export", default=False,
              help="Export the best checkpoint to the model repository.")
@click.option("--repository", default="exported", help="Model repository for --export.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("--list-models", is_flag=True, help="List the registry and exit.")
def train(**o):
    """Train one model of the registry on one dataset."""
    from .models import list_models, model_info
    _launch_torchrun(o["nproc"], "train")
    if o["list_models"]:
        from tabulate import tabulate
        rows = [(name, model_info(name).task, model_info(name).description) for name in list_models()]
        click.echo(tabulate(rows, headers=("model", "task", "description"), tablefmt="plain"))
        return
    run = _run_from_flags(o)
    from .distributed import barrier, from_env, shutdown
    from .engine import fit
    try:
        cfg = resolve_config(run)
        out = Path(o["out"] or Path("runs") / cfg["name"])
        metrics = fit(cfg, out, resume=o["resume"], progress=not o["no_progress"])
        if o["do_export"] and _main_only():
            metrics.update(_export(out, o["repository"], cfg["dataset"]["data_dir"], cfg.get("quantize")))
        # Leave together: a rank that tears gloo down while rank 0 still exports can abort in
        # gloo's threads ("terminate called without an active exception").
        barrier(from_env())
    except _errors() as e:
        _fail(str(e))
    finally:
        shutdown()
    if _main_only():
        click.echo(f"{cfg['name']}: "
                   + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in metrics.items()
                               if k.startswith(("test_", "best_", "exported", "epochs_run", "time_budget"))))
        click.echo(f"checkpoint: {out / 'best.pt'}")
    _leave_torchrun_worker()


def _studies_help() -> str:
    return "A shipped study (a comparison from the course reports): " + "; ".join(
        f"{name} ({title})" if title else name for name, title in study_titles().items()) + "."


@click.command(cls=_KeepArgs, context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.option("--profile", default="quick", help="Built-in profile (quick, full) or a path to a TOML/YAML profile.")
@click.option("--config", "config", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A TOML/YAML profile or study file (overrides --profile).")
@click.option("--study", default=None, help=_studies_help())
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a setting of every run, dotted keys, JSON values (e.g. epochs=2, dataset.subset=500, "
                   "optimizer.lr=0.01): a shortened run of a long study (repeatable).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output directory [default: runs/<profile>].")
@click.option("--only", multiple=True, help="Train only the runs with these names (repeatable).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Dataset directory for every run that sets none.")
@click.option("--time-budget", default=None, metavar="DURATION",
              help="Training time for the whole profile (e.g. 10m; replaces the profile's time_budget), shared "
                   "over its runs by their cost; time a run leaves unused goes to the runs after it.")
@click.option("--nproc", type=click.IntRange(1), default=1,
              help="Data-parallel processes on this machine: runs this command under torchrun.")
@click.option("--export/--no-export", "do_export", default=True,
              help="Export every trained run to the model repository.")
@click.option("--repository", default="exported", help="Model repository to export into.")
@click.option("--resume", is_flag=True, help="Resume runs that have a last.pt; skip runs already finished.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def train_all(profile, config, study, overrides, out, only, data_dir, time_budget, nproc, do_export, repository,
              resume, no_progress):
    """Train every run of a profile or study, print a summary table and write <out>/summary.json.

    A study also writes <out>/study.json, which `analyze compare <out>` reads to draw the variants'
    curves side by side. --resume skips finished runs and continues interrupted ones.

    With a time budget (--time-budget or a top-level time_budget in the profile), each run in turn
    gets (budget - time the earlier runs took) * its cost / the costs of the runs left; the budget
    covers the runs' training (data loading, epochs, test scoring), not their exports.
    """
    from glassbox.io import write_json

    from .budget import share
    from .distributed import barrier, from_env, shutdown
    _launch_torchrun(nproc, "train-all")
    main = from_env().is_main
    echo = click.echo if main else (lambda *_: None)
    try:
        configs, path, meta, total = _profile_runs(config, profile, study, overrides, only, time_budget)
    except ConfigError as e:
        _fail(str(e))
    out = Path(out or Path("runs") / path.stem)
    echo(f"train-all: {len(configs)} runs from {path} -> {out}")
    if total:
        echo(f"time budget {total:.0f} s shared by cost: "
             + ", ".join(f"{c['name']} {c['cost']:g}" for c in configs if c["method"] == "engine"))
    if meta is not None and main:
        write_json(out / "study.json", {**meta, "variants": [c["name"] for c in configs]})
    rows, t0, used = [], time.perf_counter(), 0.0
    for i, cfg in enumerate(configs):
        if data_dir and not cfg["dataset"].get("data_dir"):
            cfg["dataset"]["data_dir"] = data_dir
        if total and cfg["method"] == "engine":
            cfg["time_budget"] = share(total, used, [c["cost"] for c in configs[i:] if c["method"] == "engine"])
        run_dir, t_run = out / cfg["name"], time.perf_counter()
        try:
            m = _fit_one(cfg, run_dir, out, resume, no_progress, echo)
            # What the run took (earlier sessions included), the same figure on every rank.
            used += float(m.get("budget_used_s") or m.get("wall_seconds") or (time.perf_counter() - t_run))
            if do_export and cfg.get("export", True) and main:
                m.update(_export(run_dir, repository, cfg["dataset"].get("data_dir"), cfg.get("quantize")))
            barrier(from_env())
        except _errors() as e:
            _fail(f"{cfg['name']}: {e}")
        rows.append(_summary_row(cfg, m, run_dir))
        if main:
            write_json(out / "summary.json", {"profile": str(path), "time_budget_s": total, "runs": rows,
                                              "total_seconds": round(time.perf_counter() - t0, 1)})
    shutdown()
    echo(format_summary(rows))
    echo(f"total {time.perf_counter() - t0:.0f}s; summary: {out / 'summary.json'}")
    _leave_torchrun_worker()


def _profile_runs(config: str | None, profile: str, study: str | None, overrides: tuple, only: tuple,
                  time_budget: str | None):
    """The runs of a profile or study (``--set`` applied, ``--only`` kept), its path, the study's
    description (None for a profile) and the profile-wide time budget (None without one)."""
    from .budget import parse_duration
    from .config import find_config, profile_time_budget
    sets = _parse_pairs(overrides, "--set")
    configs, path, meta = load_profile(config or (find_config(study=study) if study else profile), sets)
    total = parse_duration(time_budget) if time_budget else profile_time_budget(path)
    if only:
        if unknown := set(only) - {c["name"] for c in configs}:
            raise ConfigError(f"no run named {', '.join(sorted(unknown))} in {path}; "
                              f"runs: {', '.join(c['name'] for c in configs)}")
        configs = [c for c in configs if c["name"] in only]
    return configs, path, meta, total


def _fit_one(cfg: dict, run_dir: Path, out: Path, resume: bool, no_progress: bool, echo) -> dict:
    """Train one run of a profile (or, with --resume, skip it when it has finished); its metrics."""
    from .engine import fit
    from .lda import fit_lda
    if resume and (run_dir / "metrics.json").is_file():
        echo(f"{cfg['name']}: already finished, skipped")
        return json.loads((run_dir / "metrics.json").read_text())
    teacher = cfg["distill"]["teacher"]
    if teacher and teacher.startswith("@"):  # "@teacher": a run of this profile, trained before
        cfg["distill"]["teacher"] = str(out / teacher[1:])
    if cfg["method"] == "lda":
        return fit_lda(cfg, run_dir)
    return fit(cfg, run_dir, resume=resume, progress=not no_progress)


# summary.json's row key -> the metrics.json key it copies
ROW_METRICS = {"test_acc": "test_acc", "test_loss": "test_loss", "best_val": "best_val", "val_metric": "val_metric",
               "epochs": "epochs_run", "wall_seconds": "wall_seconds", "time_budget_s": "time_budget_s",
               "budget_used_s": "budget_used_s", "exported": "exported", "export_seconds": "export_seconds",
               "train_images_per_s": "train_images_per_s", "seconds_to_val_acc": "seconds_to_val_acc"}


def _summary_row(cfg: dict, m: dict, run_dir: Path) -> dict:
    return {"run": cfg["name"], "model": cfg["model"]["name"], "dataset": cfg["dataset"]["name"],
            **{k: m.get(key) for k, key in ROW_METRICS.items()}, "checkpoint": str(run_dir / "best.pt")}


def format_summary(rows: list[dict]) -> str:
    """The runs' table, then a line a run with its speed and how soon validation accuracy reached
    85% and 90%."""
    from tabulate import tabulate
    budgeted = any(r.get("time_budget_s") for r in rows)
    cols = [("run", "run", None), ("dataset", "dataset", None), ("test acc", "test_acc", ".2%"),
            ("test loss", "test_loss", ".4f"), ("best val", "best_val", ".4f"), ("epochs", "epochs", "d"),
            ("wall s", "wall_seconds", ".1f")] + ([("budget s", "time_budget_s", ".1f")] if budgeted else [])
    cols.append(("exported", "exported", None))
    table = [[_cell(r.get(key), fmt) for _, key, fmt in cols] for r in rows]
    lines = [tabulate(table, headers=[c[0] for c in cols], disable_numparse=True,
                      colalign=["left", "left"] + ["right"] * (len(cols) - 3) + ["left"])]
    for r in rows:
        if r.get("train_images_per_s"):
            reached = r.get("seconds_to_val_acc") or {}
            lines.append(f"{r['run']}: {r['train_images_per_s']:.0f} training images/s"
                         + "".join(f"; val acc {float(k):.0%} after " + (f"{v:.0f} s" if v is not None else "-")
                                   for k, v in reached.items()))
    return "\n".join(lines)


def _cell(value, fmt: str | None) -> str:
    if value is None or value == "":
        return "-"
    return format(value, fmt) if fmt and isinstance(value, (int, float)) else str(value)


if __name__ == "__main__":  # python -m training.cli {train,train-all} ...: what --nproc runs under torchrun
    commands = {"train": train, "train-all": train_all}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        _fail(f"usage: python -m training.cli {{{','.join(commands)}}} [OPTIONS]")
    commands[sys.argv[1]](sys.argv[2:], prog_name=sys.argv[1])
