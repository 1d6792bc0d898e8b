"""``export``: checkpoints -> the model repository, gated by torch/onnxruntime parity.

    export runs/quick/lenet/best.pt
    export runs/quick/lenet                        # a run directory (its best.pt)
    export runs/quick --repository exported        # every run directory of a train-all output
    export --layout triton --out triton_repo       # exported/ as a Triton model repository (torch-free)
    export runs/quick --layout triton --out DIR    # export, then write those models' Triton layout

    export runs/quick/resnet --quantize int8       # also resnet-int8, if it passes the INT8 gates
    export runs/quick/resnet --explain all --randomized   # every explanation graph, and resnet-randomized

Exit codes: 0 all exported; 1 a parity gate refused a model, or an INT8 gate refused its variant
(nothing written for it; an INT8 refusal is one line naming the gate and both figures);
2 a usage error, a missing checkpoint or a missing dataset (one line on stderr each).
With ``--layout triton``, models or versions left out of the Triton layout (corrupted, or inputs
and outputs that differ from the newest version's) are one ``warning:`` line each on stderr.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import click


class NoCheckpoint(Exception):
    pass


def find_checkpoints(paths: tuple[str, ...]) -> list[Path]:
    """Checkpoint files for each path: a file, a run directory holding best.pt, or a train-all
    output whose subdirectories hold best.pt. All are resolved before anything is exported."""
    found = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif (p / "best.pt").is_file():
            found.append(p / "best.pt")
        elif p.is_dir() and (runs := sorted(p.glob("*/best.pt"))):
            found.extend(runs)
        elif not p.exists():
            raise NoCheckpoint(f"{p}: no such file or directory")
        else:
            raise NoCheckpoint(f"{p}: not a checkpoint, a run directory with best.pt, or a train-all output")
    return found


def _fail(message: str, code: int):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.command(context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.argument("paths", nargs=-1, metavar="[CHECKPOINT_OR_RUN_DIR]...")
@click.option("--repository", default="exported", type=click.Path(file_okay=False),
              help="Model repository: each model becomes <repository>/<name>/<version>/ (the next free integer).")
@click.option("--name", default=None,
              help="Model name in the repository; only with a single checkpoint. [default: the registry name "
                   "for Fashion-MNIST models, else <arch>-<dataset>, e.g. lenet-mnist]")
@click.option("--parity-images", type=click.IntRange(min=1), default=1000,
              help="How many real test images of the model's dataset the parity gate compares onnxruntime "
                   "and torch on (at batch sizes 1, 7 and 64).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Where the dataset's test files are [default: the checkpoint config's data_dir, then the "
                   "usual search].")
@click.option("--layout", type=click.Choice(["glassbox", "triton"]), default="glassbox",
              help="triton: also write a Triton Inference Server model repository into --out, from the models "
                   "just exported or, without checkpoints, from every model of --repository (no torch needed).")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="The Triton model repository to write (with --layout triton): <out>/<v2 name>/config.pbtxt "
                   "and <out>/<v2 name>/<version>/model.onnx; same-named models in it are replaced.")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="Also publish <name>-int8: static QDQ int8 quantization calibrated on training images, kept "
                   "only if top-1 drops <= 0.5 points, batch-32 latency is >= 1.2x lower and Grad-CAM agrees "
                   "(top-10% IoU >= 0.8); see training/export/quantize.py.")
@click.option("--explain", "explain", default=None, metavar="M,M,...|all|none",
              help="Explanation graphs a classifier carries: gradcam, gradcampp, saliency, ig, smoothgrad (each "
                   "gated against pytorch-grad-cam or Captum) [default: the run config's explain, else gradcam].")
@click.option("--randomized/--no-randomized", default=None,
              help="Also publish <name>-randomized (every layer re-initialised) for the model-randomisation check "
                   "[default: the run config's explain_randomized, else no].")
def export(paths, repository, name, parity_images, data_dir, layout, out, quantize, explain, randomized):
    """Export checkpoints to ONNX graphs in the model repository, gated by a parity check.

    CHECKPOINT_OR_RUN_DIR is a checkpoint file (best.pt), a run directory holding best.pt, or a
    train-all output directory whose subdirectories hold best.pt (each is exported).

    Each model gets a new version with its graphs (classifier + gradcam, or encoder + decoder),
    Triton configs and manifest.json. A model is refused, writing nothing, when onnxruntime and
    torch disagree beyond rtol 1e-3 / atol 1e-5 or on any argmax (exit code 1). A missing
    checkpoint or dataset exits with code 2.

    --layout triton --out DIR writes what tritonserver --model-repository DIR loads unchanged: one
    model per graph, named as the Glassbox v2 endpoint names it (lenet, lenet.gradcam, cvae.encoder).
    """
    if (layout == "triton") != bool(out):
        _fail("--layout triton and --out DIR go together", 2)
    if not paths:
        if layout != "triton":
            _fail("missing CHECKPOINT_OR_RUN_DIR (or --layout triton --out DIR to convert the repository)", 2)
        sys.exit(_write_triton(repository, out, None))
    methods = None if explain is None else _methods(explain)
    code, names = _export(paths, repository, name, parity_images, data_dir, quantize,
                          {"explain": methods, "randomized": randomized})
    if layout == "triton" and names:
        code = max(code, _write_triton(repository, out, names))
    sys.exit(code)


def _write_triton(repository: str, out: str, models: list[str] | None) -> int:
    from .triton import write_triton_repository
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            written = write_triton_repository(repository, out, models)
        except (FileNotFoundError, ValueError, OSError) as e:
            written, error = [], " ".join(str(e).split())
        else:
            error = ""
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    if error:
        click.echo(f"error: {error}", err=True)
        return 2
    if not written:
        click.echo(f"error: no model of {repository} could be written to {out}", err=True)
        return 2
    click.echo(f"{'triton model':24s} {'versions':>10s}  from")
    for tm in written:
        click.echo(f"{tm.name:24s} {','.join(map(str, tm.versions)):>10s}  {tm.source}/{tm.graph}")
    click.echo(f"tritonserver --model-repository {Path(out).resolve()}")
    return 0


def _methods(value: str) -> list[str]:
    from .explain import METHODS
    if value in ("all", "none"):
        return list(METHODS) if value == "all" else []
    methods = [m.strip() for m in value.split(",") if m.strip()]
    if unknown := [m for m in methods if m not in METHODS]:
        _fail(f"--explain: unknown method {', '.join(unknown)}; methods: {', '.join(METHODS)}, all or none", 2)
    return methods


def _export(paths, repository, name, parity_images, data_dir, quantize=None, options=None) -> tuple[int, list[str]]:
    """Export checkpoints into ``repository``: the exit code and the names of the models written."""
    from glassbox.data import DatasetError

    from . import ParityError, export_checkpoint
    try:
        ckpts = find_checkpoints(paths)
    except NoCheckpoint as e:
        _fail(str(e), 2)
    if name and len(ckpts) > 1:
        _fail(f"--name needs exactly one checkpoint, got {len(ckpts)}", 2)
    from ..checkpoint import load_checkpoint
    for ck in ckpts:  # every checkpoint readable before any export starts
        try:
            load_checkpoint(ck)
        except Exception as e:  # noqa: BLE001 - torch.load raises many kinds on a bad file
            _fail(f"{ck}: not a readable Glassbox checkpoint ({' '.join(str(e).split())[:200]})", 2)
    rows, code = [], 0
    for ck in ckpts:
        try:
            r = export_checkpoint(ck, repository, name, parity_images=parity_images, data_dir=data_dir,
                                  **(options or {}))
        except ParityError as e:
            click.echo(f"error: {ck}: {e.summary()}", err=True)
            code = max(code, 1)
            continue
        except (DatasetError, FileNotFoundError, ValueError, KeyError) as e:
            click.echo(f"error: {ck}: {' '.join(str(e).split())}", err=True)
            code = 2
            continue
        parity = r.manifest["parity"]
        worst = max(s["max_abs"] for rec in parity.values() for s in rec["outputs"].values())
        agree = [rec["argmax_agreement"] for rec in parity.values() if "argmax_agreement" in rec]
        rows.append((r.name, r.version, ",".join(r.manifest["graphs"]), worst, min(agree) if agree else None,
                     r.seconds))
        if quantize:
            code = max(code, _quantize(ck, r.path, repository, data_dir))
    if rows:
        click.echo(f"{'model':24s} {'version':>7s}  {'graphs':18s} {'max abs err':>11s} {'argmax':>7s} {'seconds':>8s}")
        for m, v, g, err, agree, s in rows:
            click.echo(f"{m:24s} {v:7d}  {g:18s} {err:11.2e} {'-' if agree is None else f'{agree:.1%}':>7s} {s:8.1f}")
    return code, list(dict.fromkeys(r[0] for r in rows))


def _quantize(ck, version_dir, repository, data_dir) -> int:
    """The INT8 variant of a just-exported version: one line either way; 1 when a gate refused it."""
    from glassbox.data import DatasetError

    from .quantize import QuantizeRefused, export_int8
    try:
        q = export_int8(version_dir, repository, data_dir=data_dir)
    except QuantizeRefused as e:
        click.echo(f"error: {ck}: {e}", err=True)
        return 1
    except (DatasetError, ValueError) as e:
        click.echo(f"error: {ck}: int8: {' '.join(str(e).split())}", err=True)
        return 2
    g = q.manifest["quantization"]["gates"]
    cam = f", Grad-CAM top-10% IoU {g['explanations']['mean_iou']:.3f}" if "explanations" in g else ""
    click.echo(f"{q.name}/{q.version}: top-1 {g['accuracy']['int8']:.2%} (fp32 {g['accuracy']['fp32']:.2%}), "
               f"batch-32 {g['speed']['speedup']:.2f}x faster{cam}")
    return 0
