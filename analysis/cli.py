"""``analyze``: figures and numbers from a running Glassbox server, and from training's run folders.

    analyze embeddings --model lenet --layer fc1 --out reports/lenet
    analyze embeddings --model lenet --layer all --thumbnails
    analyze gradcam --model lenet --target predicted --sensitivity 5
    analyze accuracy --model lenet
    analyze explain --model resnet --images 500   # every explanation method: deletion/insertion, randomisation
    analyze vae --model cvae --steps 10
    analyze vae --model cvae-faces000 --show 400 --pair-names "Jennifer_Aniston,Tony_Blair" --alphas 0,0.5,1
    analyze report --out reports/demo
    analyze compare runs/weight-decay --zoom 10             # a study's variants side by side (no server)
    analyze snapshots runs/features/lenet --layer conv1     # features across training snapshots (no server)
    analyze report --study runs/weight-decay --out reports/studies

Every command writes PNGs and a JSON of every figure it computed into --out, and prints a summary.
"""
from __future__ import annotations

import functools
from pathlib import Path

import click

from .common import connect, dataset, manifest, write_json
from .errors import AnalysisError, BadOption

CTX = {"show_default": True, "help_option_names": ["-h", "--help"]}


def common(model_required: bool = True):
    def wrap(fn):
        @click.option("--server", default="127.0.0.1:8500",
                      help="host:port of a running `serve`; several comma-separated: calls go to them in turn.")
        @click.option("--model", required=model_required,
                      help="Model name in the server's repository (see ListModels).")
        @click.option("--dataset", "dataset_name", default=None,
                      help="Dataset to draw images from [default: the model's].")
        @click.option("--split", type=click.Choice(["train", "test"]), default="test", help="Dataset split.")
        @click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                      help="Dataset directory (else the usual search).")
        @click.option("--out", type=click.Path(file_okay=False), default="reports",
                      help="Output directory (a subfolder per model).")
        @click.option("--seed", type=int, default=0, help="Seed for the image sample.")
        @functools.wraps(fn)
        def inner(**kw):
            return fn(**kw)
        return inner
    return wrap


def _setup(server, model, dataset_name, split, data_dir):
    client = connect(server)
    man = manifest(client, model)
    return client, man, dataset(man, dataset_name, split, data_dir)


def _require_classifier(man: dict, command: str) -> None:
    if man["task"] != "classifier":
        raise click.ClickException(f"model {man['name']!r} is a {man['task']}; 'analyze {command}' needs a classifier"
                                   + (" (try 'analyze vae')" if man["task"] == "vae" else ""))


class _Command(click.Command):
    """The one place where the analysis library's errors become click's: one line and exit 1, or the
    command's usage error naming the option (exit 2)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BadOption as e:
            raise click.BadParameter(str(e), ctx=ctx, param_hint=e.option) from None
        except AnalysisError as e:
            raise click.ClickException(str(e)) from None


class _Group(click.Group):
    command_class = _Command  # every ``@cli.command``


@click.group(cls=_Group, context_settings=CTX)
def cli():
    """Analyse models served by a Glassbox server: embeddings, Grad-CAM, accuracy, VAEs, HTML report."""


@cli.command(context_settings=CTX)
@common()
@click.option("--layer", "layers", multiple=True,
              help="Layer to embed (repeatable); 'input' = the pixels, 'all' = input, every layer and logits "
                   "(a VAE has 'latent', its encoder mean) [default: fc1, else the model's last layer].")
@click.option("--per-class", type=click.IntRange(2, 5000), default=50,
              help="Images per class in the class-balanced sample.")
@click.option("--thumbnails", is_flag=True, help="Also draw the t-SNE map with the images at their coordinates.")
@click.option("--jobs", type=click.IntRange(1, 64), default=None,
              help="Threads for t-SNE and the metrics [default: half the cores; "
                   "more than the free cores is much slower].")
def embeddings(server, model, dataset_name, split, data_dir, out, seed, layers, per_class, thumbnails, jobs):
    """PCA and t-SNE of layer activations, and how well classes separate in each layer."""
    from . import embeddings as emb
    client, man, ds = _setup(server, model, dataset_name, split, data_dir)
    valid = [*emb.model_layers(man), "all"]
    if not layers:
        layers = ["fc1"] if "fc1" in valid else valid[-3:-2]
    bad = [layer for layer in layers if layer not in valid]
    if bad:
        raise click.BadParameter(f"unknown layer {', '.join(bad)} of {model!r}; layers: {', '.join(valid)}",
                                 param_hint="--layer")
    summary = emb.run(client, man, ds, list(layers), per_class, Path(out) / model, thumbnails, seed, jobs=jobs)
    click.echo(emb.table(summary))
    click.echo(f"wrote {Path(out) / model}/embeddings*.png and embeddings.json")


@cli.command(context_settings=CTX)
@common()
@click.option("--target", default="predicted",
              help="Class whose map to draw: predicted, true, or a class name or index.")
@click.option("--per-class", type=click.IntRange(1, 50), default=2, help="Images per class in the grid.")
@click.option("--sensitivity", default=None, metavar="CLASS",
              help="Also draw, for one image of every class, the map of this fixed class.")
def gradcam(server, model, dataset_name, split, data_dir, out, seed, target, per_class, sensitivity):
    """A grid of images with their Grad-CAM heatmaps overlaid."""
    from . import gradcam as gc
    client, man, ds = _setup(server, model, dataset_name, split, data_dir)
    _require_classifier(man, "gradcam")
    res = gc.run(client, man, ds, target, per_class, Path(out) / model, sensitivity, seed)
    g = res["grid"]
    agree = sum(t == p for t, p in zip(g["true"], g["predicted"], strict=True)) / max(1, len(g["true"]))
    click.echo(f"{model}: Grad-CAM of {g['images']} images (target {target}); model right on {agree:.0%} of them")
    click.echo(f"wrote {Path(out) / model}/gradcam*.png and gradcam.json")


@cli.command(context_settings=CTX)
@common()
@click.option("--limit", type=click.IntRange(1), default=None, help="Score only the first N images of the split.")
def accuracy(server, model, dataset_name, split, data_dir, out, seed, limit):
    """Accuracy, per-class precision/recall/F1, confusion matrix, confident mistakes, training curves."""
    from . import accuracy as acc
    client, man, ds = _setup(server, model, dataset_name, split, data_dir)
    _require_classifier(man, "accuracy")
    report = acc.run(client, man, ds, Path(out) / model, limit)
    click.echo(acc.table(report))
    click.echo(f"wrote {Path(out) / model}/confusion.png, mistakes.png, accuracy.json")


@cli.command(context_settings=CTX)
@common()
@click.option("--methods", default=None, metavar="M,M,...",
              help="Explanation methods to compare [default: every one the model carries].")
@click.option("--images", type=click.IntRange(1, 10000), default=500, help="Test images scored (a seeded subset).")
@click.option("--steps", type=click.IntRange(2, 784), default=16,
              help="Points of each deletion / insertion curve (1/steps of the pixels per step).")
def explain(server, model, dataset_name, split, data_dir, out, seed, methods, images, steps):
    """Attribution methods side by side: deletion / insertion AUC against random and centre maps,
    the share of images each beats the random map on, and the model-randomisation check."""
    from . import explain as ex
    client, man, ds = _setup(server, model, dataset_name, split, data_dir)
    _require_classifier(man, "explain")
    res = ex.run(client, man, ds, Path(out) / model, methods=methods.split(",") if methods else None, images=images,
                 steps=steps, seed=seed)
    click.echo(f"{model}: {res['images']} {split} images, predicted class, {steps}-step curves")
    for line in ex.table_lines(res):
        click.echo(line)
    for m, words in res["verdicts"].items():
        click.echo(f"{m}: {words}")
    click.echo(f"wrote {Path(out) / model}/explain.json, explain_curves.png, explain_grid.png")


def _pair(value: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in value.split(","))
        return a, b
    except ValueError:
        raise click.BadParameter(f"expected two indices like 3,17, got {value!r}", param_hint="--pair") from None


@cli.command(context_settings=CTX)
@common()
@click.option("--steps", type=click.IntRange(2, 256), default=10, help="Images per interpolation strip (alpha 0 to 1).")
@click.option("--alphas", default=None, metavar="A,B,...",
              help="Explicit interpolation weights in [0, 1], e.g. 0,0.25,0.5,1 (instead of --steps).")
@click.option("--pair", "pairs", multiple=True,
              help="Two image indices to interpolate between, e.g. 3,17 (repeatable) [default: random pairs].")
@click.option("--pair-names", "pair_names", multiple=True, metavar="A_NAME,B_NAME",
              help="Interpolate between a face of each of two people named in the dataset, e.g. "
                   "Jennifer_Aniston,Tony_Blair (Name:k: their k-th image; repeatable).")
@click.option("--direction", default=None, metavar="A1,A2;B1,B2",
              help="Attribute direction: the mean latent of people A minus that of people B, added to faces in steps.")
@click.option("--direction-faces", default=None, metavar="NAME,...",
              help="Faces the direction is added to [default: the --pair-names faces, else 4 sampled images].")
@click.option("--strengths", default=None, metavar="S,...",
              help="Multiples of the direction added, one column each [default: -1,-0.5,0,0.5,1,1.5,2].")
@click.option("--show", type=click.IntRange(1, 2000), default=None,
              help="Reconstructions drawn (report 000 drew 400) [default: the run's [analysis] show, else 10].")
@click.option("--samples", type=click.IntRange(1, 4096), default=32, help="Images decoded from the prior.")
@click.option("--images", type=click.IntRange(2), default=1000, help="Images scored for MSE, PSNR and the ELBO terms.")
def vae(server, model, dataset_name, split, data_dir, out, seed, steps, alphas, pairs, pair_names, direction,
        direction_faces, strengths, show, samples, images):
    """Reconstructions, interpolations (by index or person name), attribute directions, prior samples, MSE / PSNR
    and ELBO terms. Options not given come from the run's [analysis] table (see the faces studies)."""
    from . import faces
    from . import vae as v
    alphas = faces.parse_floats(alphas, "--alphas", 0.0, 1.0) if alphas is not None else None
    strengths = faces.parse_floats(strengths, "--strengths") if strengths is not None else None
    for p in pair_names:
        faces.parse_pair_names(p)
    if direction is not None:
        faces.parse_direction(direction)
    client, man, ds = _setup(server, model, dataset_name, split, data_dir)
    if man["task"] != "vae":
        raise click.ClickException(f"model {model!r} is a {man['task']}, not a VAE")
    res = v.run(client, man, ds, Path(out) / model, steps, [_pair(p) for p in pairs], samples=samples, images=images,
                seed=seed, show=show, alphas=alphas, pair_names=list(pair_names) or None, direction=direction,
                direction_faces=[n.strip() for n in direction_faces.split(",")] if direction_faces else None,
                strengths=strengths)
    click.echo(f"{model}: MSE {res['mse']:.5f}, PSNR {res['psnr']:.2f} dB, BCE {res['bce']:.2f}, KL {res['kl']:.2f}, "
               f"ELBO {res['elbo']:.2f} on {res['n']} images")
    if res["direction"]:
        d = res["direction"]
        click.echo(f"direction: {len(d['a'])} people ({d['images_a']} images) minus {len(d['b'])} people "
                   f"({d['images_b']} images), norm {d['norm']:.3f}")
    click.echo(f"wrote {Path(out) / model}/{', '.join(res['figures'])} and vae.json")


@cli.command(context_settings=CTX)
@click.argument("runs_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory [default: RUNS_DIR/compare].")
@click.option("--zoom", type=click.IntRange(1), default=None,
              help="Epochs in the first/last zoom panels [default: study.json's zoom, else 10].")
@click.option("--metric", type=click.Choice(["acc", "loss"]), default=None,
              help="Validation metric of the table [default: acc when the runs record it, else loss].")
def compare(runs_dir, out, zoom, metric):
    """Curves, results table and first-layer weights of a study's variants (a train-all output folder)."""
    from . import compare as cmp
    result = cmp.run(runs_dir, out, zoom, metric)
    s = result["study"]
    click.echo(f"{s['title'] or s['name']}: {len(result['rows'])} variants"
               + (f" (report {s['report']})" if s.get("report") else ""))
    click.echo(cmp.text_table(result))
    for note in result["notes"]:
        click.echo(f"first layer not drawn for {note}")
    click.echo(f"wrote {result['out']}/{', '.join(result['figures'])}, compare.json, compare.md")


@cli.command(context_settings=CTX)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--layer", default=None, help="Layer whose feature maps to draw (a classifier's; not for VAEs).")
@click.option("--images", type=click.IntRange(1, 16), default=4,
              help="Test images (the first of a seeded class-balanced pick).")
@click.option("--channels", type=click.IntRange(1, 64), default=8, help="Feature-map channels per image.")
@click.option("--seed", type=int, default=0, help="Seed for the image pick.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Dataset directory (else the usual search).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory [default: RUN_DIR].")
def snapshots(run_dir, layer, images, channels, seed, data_dir, out):
    """Feature maps (or a VAE's reconstructions) of the same images at each training snapshot of one run."""
    from . import snapshots as snap
    result = snap.run(run_dir, layer, out, images, channels, seed, data_dir)
    for s in result["snapshots"]:
        extra = (f"mean activation {s['mean_activation']:.3g}, active {s['active_fraction']:.0%}"
                 if result["task"] == "classifier" else f"reconstruction MSE {s['mse']:.4f}")
        click.echo(f"{s['tag']}: {extra}")
    click.echo(f"wrote {Path(out or run_dir) / result['figures'][0]} and its .json")


@cli.command(context_settings=CTX)
@click.option("--server", default="127.0.0.1:8500",
              help="host:port of a running `serve`; several comma-separated: calls go to them in turn.")
@click.option("--model", "models", multiple=True, help="Model to include (repeatable) [default: every ready model].")
@click.option("--dataset", "dataset_name", default=None, help="Dataset to draw images from [default: each model's].")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", help="Dataset split.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Dataset directory (else the usual search).")
@click.option("--per-class", type=click.IntRange(2, 5000), default=50, help="Images per class for the embedding maps.")
@click.option("--out", type=click.Path(file_okay=False), default="reports", help="Output directory.")
@click.option("--jobs", type=click.IntRange(1, 64), default=None,
              help="Threads for t-SNE and the metrics [default: half the cores; "
                   "more than the free cores is much slower].")
@click.option("--study", "studies", multiple=True, type=click.Path(path_type=Path),
              help="A study folder (train-all output) to add as a section with its compare figures and table "
                   "(repeatable); with --study and no --model the page holds the studies only and needs no server.")
def report(server, models, dataset_name, split, data_dir, per_class, out, jobs, studies):
    """Every analysis of one or more models in one self-contained HTML page."""
    from . import report as rep
    out = Path(out)
    # Studies first: they read files only, so a bad folder fails before minutes of server work.
    study_results = [rep.analyse_study(d, out) for d in studies]
    if studies and not models:
        path = rep.render({}, out, server, study_results)
        write_json(out / "report.json", {"studies": study_results})
        click.echo(f"report: {path.resolve()}")
        return
    client = connect(server)
    if not models:
        models = [m.name for m in client.list_models() if m.ready]
        if not models:
            raise click.ClickException(f"the server at {server} has no ready model")
    for name in models:  # an unknown name fails now, not after minutes spent on the others
        manifest(client, name)
    results = {}
    for name in models:
        click.echo(f"analysing {name} ...")
        results[name] = rep.analyse_model(client, name, split, data_dir, out, per_class, progress=True, jobs=jobs,
                                          dataset_name=dataset_name)
    path = rep.render(results, out, server, study_results)
    write_json(out / "report.json", {**{n: {k: v for k, v in s.items() if k != "manifest"} for n, s in results.items()},
                                     **({"studies": study_results} if study_results else {})})
    click.echo(f"report: {path.resolve()}")


if __name__ == "__main__":  # python -m analysis.cli ...
    cli()
