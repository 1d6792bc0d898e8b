"""``export``: checkpoints -> the model repository, gated by torch/onnxruntime parity.

    export runs/quick/lenet/best.pt
    export runs/quick --repository exported        # every run directory under runs/quick
"""
from __future__ import annotations

import sys
from pathlib import Path

import click


def find_checkpoints(paths: tuple[str, ...]) -> list[Path]:
    found = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif (p / "best.pt").is_file():
            found.append(p / "best.pt")
        elif p.is_dir() and (runs := sorted(p.glob("*/best.pt"))):
            found.extend(runs)
        else:
            raise click.UsageError(f"{p}: not a checkpoint, a run directory with best.pt, or a train-all output")
    return found


@click.command(context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--repository", default="exported", help="Model repository to add the new versions to.")
@click.option("--name", default=None, help="Model name in the repository (one checkpoint only) [default: the registry "
                                           "name, with -<dataset> unless Fashion-MNIST].")
@click.option("--parity-images", type=int, default=1000, help="Real test images the parity gate compares on.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Where the test images are (else the checkpoint's data dir, then the usual search).")
def export(paths, repository, name, parity_images, data_dir):
    """Export checkpoints (files, run directories, or train-all outputs) to ONNX with a parity gate.

    Each model becomes exported/<name>/<version>/ with its graphs, Triton configs and a manifest.
    Nothing is written for a model whose parity check fails (exit code 1).
    """
    from ..data import DatasetError
    from . import ParityError, export_checkpoint
    ckpts = find_checkpoints(paths)
    if name and len(ckpts) > 1:
        raise click.UsageError("--name needs exactly one checkpoint")
    rows, failed = [], 0
    for ck in ckpts:
        try:
            r = export_checkpoint(ck, repository, name, parity_images=parity_images, data_dir=data_dir)
        except (ParityError, DatasetError, FileNotFoundError, ValueError) as e:
            click.echo(f"error: {ck}: {e}", err=True)
            failed += 1
            continue
        for graph, rec in r.manifest["parity"].items():
            worst = max(rec["outputs"].values(), key=lambda s: s["max_abs"])
            rows.append((f"{r.name}/{r.version}", graph, worst["max_abs"], worst["max_rel"],
                         rec.get("argmax_agreement"), r.seconds))
    if rows:
        click.echo(f"{'model':20s} {'graph':11s} {'max abs':>10s} {'max rel':>10s} {'argmax':>7s} {'seconds':>8s}")
        for m, g, a, rel, agree, s in rows:
            click.echo(f"{m:20s} {g:11s} {a:10.2e} {rel:10.2e} {'-' if agree is None else f'{agree:.0%}':>7s} {s:8.1f}")
    sys.exit(1 if failed else 0)
