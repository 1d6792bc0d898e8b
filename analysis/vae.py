"""``analyze vae``: reconstructions, interpolation strips, samples from the prior, and the ELBO terms.

    analyze vae --model cvae --steps 10 --pair 3,17 --pair 5,40
    analyze vae --model cvae-faces000 --show 400 --pair-names "Jennifer_Aniston,Tony_Blair" --alphas 0,0.5,1
    analyze vae --model cvae-faces000 --direction "Serena_Williams,Laura_Bush;George_W_Bush,Colin_Powell"

Pairs by person name and attribute directions are in ``faces.py``. Options not given on the command
line come from the run's ``[analysis]`` table (recorded in the manifest's config; the faces studies
name their people there), else the defaults: 10 reconstructions, ``steps`` alphas from 0 to 1.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import faces, metrics, plots
from .common import batched, call, unit_images, write_json
from .errors import BadOption

DEFAULT_STRENGTHS = [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0]


def study_options(man: dict) -> dict:
    """The ``[analysis]`` table of the config the model was trained with ({} when none)."""
    return dict((man.get("source") or {}).get("config", {}).get("analysis") or {})


def run(client, man: dict, ds, out: Path, steps: int = 10, pairs: list[tuple[int, int]] | None = None,
        n_pairs: int = 4, samples: int = 32, images: int = 1000, seed: int = 0, progress: bool = True,
        show: int | None = None, alphas: list[float] | None = None, pair_names: list[str] | None = None,
        direction: str | None = None, direction_faces: list[str] | None = None,
        strengths: list[float] | None = None) -> dict:
    model = man["name"]
    rng = np.random.default_rng(seed)
    opts = study_options(man)
    show = int(show if show is not None else opts.get("show", 10))
    alphas = alphas if alphas is not None else opts.get("alphas")
    alphas = np.asarray(alphas if alphas is not None else np.linspace(0, 1, steps), np.float32)
    pair_names = list(pair_names if pair_names is not None else opts.get("pair_names", []))
    direction = direction if direction is not None else opts.get("direction")
    direction_faces = list(direction_faces if direction_faces is not None else opts.get("direction_faces", []))
    strengths = list(strengths if strengths is not None else opts.get("strengths", DEFAULT_STRENGTHS))
    named, groups, targets = _faces(ds, pairs, pair_names, direction, direction_faces)

    idx = np.sort(rng.choice(len(ds), min(images, len(ds)), replace=False))
    x = unit_images(man, ds.images[idx])  # VAEs take pixels in [0, 1]
    enc = batched(client.encode, model, x, desc=f"{model} encode", progress=progress)
    recon = batched(client.reconstruct, model, x, desc=f"{model} reconstruct", progress=progress)
    scores = metrics.vae_metrics(x, recon, enc.mean, enc.logvar)
    show = max(1, min(show, len(x)))
    plots.save(reconstructions_figure(x[:show], recon[:show], f"{model}: {show} reconstructions (MSE "
                                      f"{scores['mse']:.4f}, PSNR {scores['psnr']:.1f} dB)"),
               out / "vae_reconstructions.png")

    ends = [((f"#{a} {_name(ds, a)}", a), (f"#{b} {_name(ds, b)}", b)) for a, b in pairs or []] + named
    if not ends:
        ends = [((f"#{a} {_name(ds, a)}", a), (f"#{b} {_name(ds, b)}", b))
                for a, b in (tuple(int(v) for v in rng.choice(len(ds), 2, replace=False)) for _ in range(n_pairs))]
    _interpolations(client, man, ds, ends, alphas, out / "vae_interpolations.png", progress)
    figures = ["vae_reconstructions.png", "vae_interpolations.png"]

    dir_info = None
    if groups:
        if not targets:  # the named pairs' faces, else the first images of the sample
            targets = [f for pair in named for f in pair] or [(f"#{i} {_name(ds, i)}", int(i)) for i in idx[:4]]
        dir_info = _direction(client, man, ds, groups, targets, strengths, out / "vae_direction.png", progress)
        figures.append("vae_direction.png")

    z = rng.standard_normal((samples, int(man["latent_dim"]))).astype(np.float32)
    prior = call(client.decode, model, z)
    plots.save(plots.image_grid(prior, suptitle=f"{model}: samples decoded from the prior N(0, I)"),
               out / "vae_samples.png")
    figures.append("vae_samples.png")
    result = {"model": model, "dataset": ds.name, "split_indices_scored": "random, seed %d" % seed, **scores,
              "show": show, "pairs": [[a, b] for (_, a), (_, b) in ends],
              "pair_labels": [[la, lb] for (la, _), (lb, _) in ends], "pair_names": pair_names,
              "steps": len(alphas), "alphas": alphas.tolist(), "direction": dir_info, "prior_samples": samples,
              "figures": figures}
    write_json(out / "vae.json", result)
    return result


def _faces(ds, pairs, pair_names: list[str], direction: str | None, direction_faces: list[str]):
    """The pairs' indices, named faces and the direction's people checked against the dataset (before
    minutes of work, not after): (named pairs, direction groups or None, direction target faces)."""
    for a, b in pairs or []:
        if not (0 <= a < len(ds) and 0 <= b < len(ds)):
            raise BadOption(f"pair {a},{b}: indices must be in 0..{len(ds) - 1} ({ds.name} {len(ds)} images)",
                            option="--pair")
    named = [tuple(faces.face(ds, n, "--pair-names") for n in faces.parse_pair_names(p)) for p in pair_names]
    groups = faces.parse_direction(direction) if direction else None
    targets = [faces.face(ds, n, "--direction-faces") for n in direction_faces]
    if groups:
        for n in groups[0] + groups[1]:
            faces.person(ds, n, "--direction")
    return named, groups, targets


def _interpolations(client, man: dict, ds, ends: list, alphas: np.ndarray, path: Path, progress: bool) -> None:
    """One strip per pair of ends: the images decoded along the line between their latent means."""
    model = man["name"]
    strips = []
    for (_, a), (_, b) in tqdm(ends, desc=f"{model} interpolate", disable=not progress, leave=False):
        pair = unit_images(man, ds.images[[a, b]])
        strips.append(call(client.interpolate, model, pair[0], pair[1], alphas=alphas.tolist()))
    plots.save(plots.rows_figure(strips, [f"{la}\n-> {lb}" for (la, _), (lb, _) in ends],
                                 [f"{al:.2f}" for al in alphas],
                                 suptitle=f"{model}: latent interpolation, alpha {alphas[0]:g} -> {alphas[-1]:g}"),
               path)


def _direction(client, man: dict, ds, groups, targets: list, strengths: list[float], path: Path,
               progress: bool) -> dict:
    """The attribute direction (mean latent of group A minus that of group B) added to each target face
    in steps of ``strengths``; the direction's summary, with the faces and strengths drawn."""
    model = man["name"]
    d, info = faces.direction(client, man, ds, *groups, progress=progress)
    z = batched(client.encode, model, unit_images(man, ds.images[[i for _, i in targets]]), progress=False).mean
    rows = [call(client.decode, model, (zi[None] + np.asarray(strengths, np.float32)[:, None] * d[None])
                 .astype(np.float32)) for zi in z]
    plots.save(plots.rows_figure(rows, [label for label, _ in targets], [f"{s:+g}" for s in strengths],
                                 suptitle=f"{model}: face + s x (mean latent of {_group(info['a'])} "
                                          f"- mean of {_group(info['b'])})"),
               path)
    info.update(faces=[label for label, _ in targets], strengths=strengths)
    return info


def reconstructions_figure(x: np.ndarray, recon: np.ndarray, title: str, ncols: int = 20):
    """Originals over their reconstructions, in row pairs of up to ``ncols`` (400 images: 20 row pairs)."""
    rows, labels = [], []
    for i in range(0, len(x), ncols):
        rows += [x[i:i + ncols], recon[i:i + ncols]]
        labels += ["original", "reconstruction"]
    fig = plots.rows_figure(rows, labels, suptitle=title, cell=1.2 if len(x) <= ncols else 0.6)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))  # keep half an inch for the title
    return fig


def _group(names: list[str]) -> str:
    return ", ".join(names[:2]) + (f" and {len(names) - 2} more" if len(names) > 2 else "")


def _name(ds, i: int) -> str:
    return str(ds.classes[int(ds.labels[i])])[:12] if len(ds.classes) else ""
