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

from .config import INITS, OPTIMIZERS, PRECISIONS, SCHEDULES, ConfigError, load_profile, resolve_config, study_titles


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


def _export(run_dir: Path, repository: str, data_dir: str | None) -> dict:
    from .export import export_checkpoint
    res = export_checkpoint(run_dir / "best.pt", repository, data_dir=data_dir)
    return {"exported": f"{res.name}/{res.version}", "export_seconds": round(res.seconds, 1)}


@click.command(cls=_KeepArgs, context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.option("--model", "model", default="lenet", help="Registry name of the model (see --list-models).")
@click.option("--model-arg", multiple=True, metavar="KEY=VALUE",
              help="Constructor argument, e.g. width=16 (repeatable; JSON values).")
@click.option("--dataset", default="fashion-mnist", help="fashion-mnist, mnist, cifar10, lfw or lfw-min20.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Directory holding the dataset files (else $GLASSBOX_DATA_DIR, then system locations).")
@click.option("--subset", type=int, default=None, help="Train on a random subset of this many training images.")
@click.option("--val-fraction", type=float, default=0.1,
              help="Fraction of the training set held out for validation (model selection).")
@click.option("--longtail", is_flag=True, help="Keep only 10% of classes 0-4 (the long-tail CIFAR-10 variant).")
@click.option("--epochs", type=int, default=10, help="Number of epochs (with --time-budget: the most it may run).")
@click.option("--time-budget", default=None, metavar="DURATION",
              help="Wall-time budget, e.g. 90s, 5m, 1h or seconds: the lr schedule runs on the fraction of it used "
                   "and training stops when the next epoch would not fit.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32",
              help="bf16: forward and loss under bfloat16 autocast (CUDA or CPU; float32 weights).")
@click.option("--nproc", type=click.IntRange(1), default=1,
              help="Data-parallel processes on this machine: runs this command under torchrun (gloo on CPU, "
                   "NCCL on CUDA); batch-size stays the global batch.")
@click.option("--batch-size", type=int, default=128, help="Training batch size.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="adamw", help="Optimizer.")
@click.option("--lr", type=float, default=2e-3, help="Peak learning rate.")
@click.option("--momentum", type=click.FloatRange(0), default=0.9, help="SGD momentum (0: plain SGD).")
@click.option("--nesterov", is_flag=True, help="SGD: Nesterov momentum (needs --momentum above 0).")
@click.option("--weight-decay", type=float, default=5e-4,
              help="Decoupled weight decay on weights (not biases or norms).")
@click.option("--schedule", type=click.Choice(SCHEDULES), default="cosine",
              help="Learning-rate schedule: constant; step (x gamma every --step-size epochs); exp (x gamma every "
                   "epoch); cosine (to zero).")
@click.option("--warmup-epochs", type=click.FloatRange(0), default=None,
              help="Linear warmup before any schedule [default: 1 for cosine, 0 otherwise].")
@click.option("--step-size", type=click.IntRange(1), default=10, help="Epochs between decays for the step schedule.")
@click.option("--gamma", type=float, default=0.1, help="Decay factor for the step and exp schedules.")
@click.option("--loss", "loss_name", type=click.Choice(["ce", "mse"]), default="ce",
              help="Classifier loss: cross-entropy, or MSE against one-hot targets (the reports' linear models).")
@click.option("--mse-on", type=click.Choice(["logits", "softmax"]), default="logits", help="What --loss mse compares.")
@click.option("--l1", type=float, default=0.0, help="L1 (lasso) penalty on weights, added to the loss.")
@click.option("--l2", type=float, default=0.0, help="L2 (ridge) penalty on weights, added to the loss.")
@click.option("--penalize-bias", is_flag=True, help="The L1/L2 penalties cover the biases too (as the reports did).")
@click.option("--init", "init_name", type=click.Choice(INITS), default="default",
              help="Weight initialisation of Linear/Conv layers (default: PyTorch's).")
@click.option("--init-std", type=float, default=0.01, help="Standard deviation for --init normal.")
@click.option("--teacher", default=None,
              help="Distil from this teacher: a run folder, a .pt checkpoint or an exported model (ONNX).")
@click.option("--distill-loss", type=click.Choice(["mse", "kl"]), default="mse",
              help="Distillation: MSE on the logits or KL with --temperature.")
@click.option("--temperature", type=click.FloatRange(0, min_open=True), default=4.0, help="Distillation temperature.")
@click.option("--alpha", type=click.FloatRange(0, 1), default=1.0,
              help="Weight of the distillation term (1 - alpha on the labels).")
@click.option("--test-curves", is_flag=True,
              help="Also score the test split every epoch, for the curves only (selection stays on validation).")
@click.option("--snapshot-epoch", type=click.IntRange(1), multiple=True,
              help="Keep (and export) a checkpoint at this epoch (repeatable).")
@click.option("--snapshot-train-acc", type=click.FloatRange(0, 1), multiple=True,
              help="Keep a checkpoint when train accuracy first reaches this level, e.g. 0.95 (repeatable).")
@click.option("--label-smoothing", type=float, default=0.0, help="Label smoothing for cross-entropy.")
@click.option("--clip-grad-norm", type=float, default=None, help="Clip the gradient norm to this value.")
@click.option("--ema", type=float, default=0.0, metavar="DECAY",
              help="Keep an exponential moving average of the weights (e.g. 0.999 per step) and validate, "
                   "checkpoint and export it [default: off]. Test-time flips: --model-arg tta_flip=true.")
@click.option("--patience", type=int, default=None, help="Early stopping: epochs without validation improvement.")
@click.option("--crop-pad", type=int, default=0, help="Augmentation: random crop after padding by this many pixels.")
@click.option("--hflip", is_flag=True, help="Augmentation: random horizontal flips.")
@click.option("--erase", type=click.FloatRange(0, 1), default=0.0, metavar="P",
              help="Augmentation: random erasing, with probability P one rectangle of 2-40% of the image set to 0.")
@click.option("--noise-std", type=float, default=0.0, help="Augmentation: Gaussian noise std (normalised units).")
@click.option("--kl-weight", type=float, default=1.0, help="VAE: weight of the KL term.")
@click.option("--vae-recon", type=click.Choice(["bce", "mse", "l1"]), default="bce", help="VAE reconstruction loss.")
@click.option("--seed", type=int, default=0, help="Random seed (split, init, batches, augmentation).")
@click.option("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N].")
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
        for name in list_models():
            e = model_info(name)
            click.echo(f"{name:10s} {e.task:10s} {e.description}")
        return
    run = {
        "model": {"name": o["model"], "args": _parse_pairs(o["model_arg"])},
        "dataset": {"name": o["dataset"], "data_dir": o["data_dir"], "subset": o["subset"],
                    "val_fraction": o["val_fraction"], "longtail": o["longtail"]},
        "epochs": o["epochs"], "time_budget": o["time_budget"], "precision": o["precision"],
        "batch_size": o["batch_size"], "seed": o["seed"], "device": o["device"],
        "optimizer": {"name": o["optimizer"], "lr": o["lr"], "momentum": o["momentum"], "nesterov": o["nesterov"],
                      "weight_decay": o["weight_decay"]},
        "schedule": {"name": o["schedule"], "warmup_epochs": o["warmup_epochs"], "step_size": o["step_size"],
                     "gamma": o["gamma"]},
        "loss": {"name": o["loss_name"], "mse_on": o["mse_on"], "label_smoothing": o["label_smoothing"], "l1": o["l1"],
                 "l2": o["l2"], "penalize_bias": o["penalize_bias"], "vae_recon": o["vae_recon"],
                 "kl_weight": o["kl_weight"]},
        "init": {"name": o["init_name"], "std": o["init_std"]},
        "distill": {"teacher": o["teacher"], "loss": o["distill_loss"], "temperature": o["temperature"],
                    "alpha": o["alpha"]},
        "test_curves": o["test_curves"],
        "snapshots": {"epochs": list(o["snapshot_epoch"]), "train_acc": list(o["snapshot_train_acc"])},
        "augment": {"crop_pad": o["crop_pad"], "hflip": o["hflip"], "erase": o["erase"], "noise_std": o["noise_std"]},
        "clip_grad_norm": o["clip_grad_norm"], "ema": o["ema"],
        "early_stopping": {"patience": o["patience"], "min_delta": 0.0},
    }
    from .distributed import barrier, from_env, shutdown
    from .engine import fit
    try:
        cfg = resolve_config(run)
        out = Path(o["out"] or Path("runs") / cfg["name"])
        metrics = fit(cfg, out, resume=o["resume"], progress=not o["no_progress"])
        if o["do_export"] and _main_only():
            metrics.update(_export(out, o["repository"], o["data_dir"]))
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

    from .budget import parse_duration, share
    from .config import find_config, profile_time_budget
    from .distributed import barrier, from_env, shutdown
    from .engine import fit
    from .lda import fit_lda
    _launch_torchrun(nproc, "train-all")
    main = from_env().is_main
    echo = click.echo if main else (lambda *_: None)
    try:
        sets = _parse_pairs(overrides, "--set")
        configs, path, meta = load_profile(config or (find_config(study=study) if study else profile), sets)
        total = parse_duration(time_budget) if time_budget else profile_time_budget(path)
    except ConfigError as e:
        _fail(str(e))
    if only:
        unknown = set(only) - {c["name"] for c in configs}
        if unknown:
            _fail(f"no run named {', '.join(sorted(unknown))} in {path}; runs: {', '.join(c['name'] for c in configs)}")
        configs = [c for c in configs if c["name"] in only]
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
        run_dir = out / cfg["name"]
        try:
            t_run = time.perf_counter()
            if resume and (run_dir / "metrics.json").is_file():
                m = json.loads((run_dir / "metrics.json").read_text())
                echo(f"{cfg['name']}: already finished, skipped")
            else:
                teacher = cfg["distill"]["teacher"]
                if teacher and teacher.startswith("@"):  # "@teacher": a run of this profile, trained before
                    cfg["distill"]["teacher"] = str(out / teacher[1:])
                if cfg["method"] == "lda":
                    m = fit_lda(cfg, run_dir)
                else:
                    m = fit(cfg, run_dir, resume=resume, progress=not no_progress)
            # What the run took (earlier sessions included), the same figure on every rank.
            used += float(m.get("budget_used_s") or m.get("wall_seconds") or (time.perf_counter() - t_run))
            if do_export and cfg.get("export", True) and main:
                m.update(_export(run_dir, repository, cfg["dataset"].get("data_dir")))
            barrier(from_env())
        except _errors() as e:
            _fail(f"{cfg['name']}: {e}")
        rows.append({"run": cfg["name"], "model": cfg["model"]["name"], "dataset": cfg["dataset"]["name"],
                     "test_acc": m.get("test_acc"), "test_loss": m.get("test_loss"),
                     "best_val": m.get("best_val"), "val_metric": m.get("val_metric"),
                     "epochs": m.get("epochs_run"), "wall_seconds": m.get("wall_seconds"),
                     "time_budget_s": m.get("time_budget_s"), "budget_used_s": m.get("budget_used_s"),
                     "exported": m.get("exported"), "export_seconds": m.get("export_seconds"),
                     "train_images_per_s": m.get("train_images_per_s"),
                     "seconds_to_val_acc": m.get("seconds_to_val_acc"),
                     "checkpoint": str(run_dir / "best.pt")})
        if main:
            write_json(out / "summary.json", {"profile": str(path), "time_budget_s": total, "runs": rows,
                                              "total_seconds": round(time.perf_counter() - t0, 1)})
    shutdown()
    echo(format_summary(rows))
    echo(f"total {time.perf_counter() - t0:.0f}s; summary: {out / 'summary.json'}")
    _leave_torchrun_worker()


def format_summary(rows: list[dict]) -> str:
    w = max([18, *(len(r["run"]) for r in rows)])

    def num(v, fmt: str, width: int) -> str:
        return format(v, fmt) if isinstance(v, (int, float)) else f"{'-':>{width}s}"
    budgeted = any(r.get("time_budget_s") for r in rows)
    head = f"{'run':{w}s} {'dataset':14s} {'test acc':>9s} {'test loss':>10s} {'best val':>9s} {'epochs':>6s} " \
           f"{'wall s':>7s}" + (f" {'budget s':>8s}" if budgeted else "") + "  exported"
    lines = [head, "-" * len(head)]
    for r in rows:
        acc = f"{r['test_acc'] * 100:8.2f}%" if r["test_acc"] is not None else f"{'-':>9s}"
        lines.append(f"{r['run']:{w}s} {r['dataset']:14s} {acc} {num(r['test_loss'], '10.4f', 10)} "
                     f"{num(r['best_val'], '9.4f', 9)} {num(r['epochs'], '6d', 6)} {num(r['wall_seconds'], '7.1f', 7)}"
                     + (f" {num(r.get('time_budget_s'), '8.1f', 8)}" if budgeted else "")
                     + f"  {r['exported'] or '-'}")
    for r in rows:  # speed, and how soon validation accuracy reached 85% and 90%
        if r.get("train_images_per_s"):
            reached = r.get("seconds_to_val_acc") or {}
            lines.append(f"{r['run']}: {r['train_images_per_s']:.0f} training images/s"
                         + "".join(f"; val acc {float(k):.0%} after " + (f"{v:.0f} s" if v is not None else "-")
                                   for k, v in reached.items()))
    return "\n".join(lines)


if __name__ == "__main__":  # python -m training.cli {train,train-all} ...: what --nproc runs under torchrun
    commands = {"train": train, "train-all": train_all}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        _fail(f"usage: python -m training.cli {{{','.join(commands)}}} [OPTIONS]")
    commands[sys.argv[1]](sys.argv[2:], prog_name=sys.argv[1])
