"""``analyze vae``: reconstructions, interpolation strips, samples from the prior, and the ELBO terms.

    analyze vae --model cvae --steps 10 --pair 3,17 --pair 5,40
"""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np
from tqdm.auto import tqdm

from . import metrics, plots
from .common import batched, call, unit_images, write_json


def run(client, man: dict, ds, out: Path, steps: int = 10, pairs: list[tuple[int, int]] | None = None,
        n_pairs: int = 4, samples: int = 32, images: int = 1000, seed: int = 0, progress: bool = True) -> dict:
    model = man["name"]
    rng = np.random.default_rng(seed)
    for a, b in pairs or []:  # fail before minutes of work, not after
        if not (0 <= a < len(ds) and 0 <= b < len(ds)):
            raise click.BadParameter(f"pair {a},{b}: indices must be in 0..{len(ds) - 1} ({ds.name} {len(ds)} images)",
                                     param_hint="--pair")
    idx = np.sort(rng.choice(len(ds), min(images, len(ds)), replace=False))
    x = unit_images(man, ds.images[idx])  # VAEs take pixels in [0, 1]
    enc = batched(client.encode, model, x, desc=f"{model} encode", progress=progress)
    recon = batched(client.reconstruct, model, x, desc=f"{model} reconstruct", progress=progress)
    scores = metrics.vae_metrics(x, recon, enc.mean, enc.logvar)
    show = min(10, len(x))
    plots.save(plots.rows_figure([x[:show], recon[:show]], ["original", "reconstruction"],
                                 suptitle=f"{model}: reconstructions (MSE {scores['mse']:.4f}, "
                                          f"PSNR {scores['psnr']:.1f} dB)"),
               out / "vae_reconstructions.png")
    if not pairs:
        pairs = [tuple(int(v) for v in rng.choice(len(ds), 2, replace=False)) for _ in range(n_pairs)]
    strips = []
    for a, b in tqdm(pairs, desc=f"{model} interpolate", disable=not progress, leave=False):
        pair = unit_images(man, ds.images[[a, b]])
        strips.append(call(client.interpolate, model, pair[0], pair[1], steps=steps))
    alphas = np.linspace(0, 1, steps)
    plots.save(plots.rows_figure(strips, [f"#{a} {_name(ds, a)}\n-> #{b} {_name(ds, b)}" for a, b in pairs],
                                 [f"{al:.2f}" for al in alphas],
                                 suptitle=f"{model}: latent interpolation, alpha 0 -> 1"),
               out / "vae_interpolations.png")
    z = rng.standard_normal((samples, int(man["latent_dim"]))).astype(np.float32)
    prior = call(client.decode, model, z)
    plots.save(plots.image_grid(prior, suptitle=f"{model}: samples decoded from the prior N(0, I)"),
               out / "vae_samples.png")
    result = {"model": model, "dataset": ds.name, "split_indices_scored": "random, seed %d" % seed, **scores,
              "pairs": [list(p) for p in pairs], "steps": steps, "alphas": alphas.tolist(), "prior_samples": samples,
              "figures": ["vae_reconstructions.png", "vae_interpolations.png", "vae_samples.png"]}
    write_json(out / "vae.json", result)
    return result


def _name(ds, i: int) -> str:
    return str(ds.classes[int(ds.labels[i])])[:12] if len(ds.classes) else ""
