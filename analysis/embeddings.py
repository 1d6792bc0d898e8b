"""``analyze embeddings``: PCA and t-SNE maps of layer activations, and how well classes separate.

    analyze embeddings --model lenet --layer fc1 --layer fc2 --out reports/emb
    analyze embeddings --model lenet --layer all --thumbnails

scikit-learn and openTSNE are imported inside the functions that use them: `import analysis.*`
stays light, and scipy (under scikit-learn) trips over the `sys.modules["torch"] = None` trick
of the torch-free import check.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from tabulate import tabulate
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from glassbox.data import class_balanced_sample

from . import metrics, plots
from .common import batched, model_input, unit_images, write_json


def default_jobs() -> int:
    """Threads for t-SNE and the scikit-learn metrics: half the cores, at least one.

    Why not all of them: OpenMP threads that outnumber the free cores spin-wait, and on a busy machine
    t-SNE then runs many times slower than on one thread (``benchmarks/tsne_bench.py --threads 1 2``;
    the figures are in the README).
    """
    return max(1, (os.cpu_count() or 2) // 2)


def tsne(x: np.ndarray, seed: int = 0, jobs: int = 1) -> np.ndarray:
    """2-D t-SNE with openTSNE, gradients by Barnes-Hut below 10,000 points, FFT above ('auto').

    Why openTSNE: it was faster than scikit-learn's TSNE at every size measured, and 'auto' picks the
    faster of its two gradient methods for each size (``benchmarks/tsne_bench.py``; figures in the README).
    """
    from openTSNE import TSNE
    from sklearn.decomposition import PCA
    x = metrics.flatten(x).astype(np.float64)
    # PCA to 50 dims first (the usual t-SNE recipe): the k-NN graph is the cost, and 4,704-dim
    # conv activations make it slow without changing the neighbourhoods much.
    if x.shape[1] > 50:
        x = PCA(n_components=min(50, len(x)), random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3.5)))
    return np.asarray(TSNE(n_components=2, perplexity=perplexity, n_jobs=jobs, random_state=seed,
                           negative_gradient_method="auto", verbose=False).fit(x))


def pca(x: np.ndarray) -> tuple[np.ndarray, list[float]]:
    from sklearn.decomposition import PCA
    p = PCA(n_components=2, random_state=0)
    xy = p.fit_transform(metrics.flatten(x))
    return xy, [float(v) for v in p.explained_variance_ratio_]


def model_layers(man: dict) -> list[str]:
    """What can be embedded, input to output: the pixels, every named layer, the logits; a VAE's latent mean."""
    if man["task"] == "vae":
        return ["input", "latent"]
    return ["input", *[layer["name"] for layer in man["layers"]], "logits"]


def run(client, man: dict, ds, layers: list[str], per_class: int, out: Path, thumbnails: bool | list[str],
        seed: int = 0, progress: bool = True, jobs: int | None = None) -> dict:
    model = man["name"]
    jobs = jobs or default_jobs()
    all_layers = model_layers(man)
    wanted = all_layers if "all" in layers else list(dict.fromkeys(layers))
    sample = class_balanced_sample(ds, per_class, seed=seed)
    x = model_input(man, sample.images)
    served = [layer for layer in wanted if layer != "input"]
    if man["task"] == "vae":  # the encoder's mean is the VAE's representation
        acts = ({"latent": batched(client.encode, model, x, desc=f"{model} encode", progress=progress).mean}
                if served else {})
    else:
        acts = batched(client.embed, model, x, served, desc=f"{model} embed", progress=progress) if served else {}
    acts["input"] = x
    classes = list(man["labels"]) or list(ds.classes)
    results, maps, coords, figures = {}, [], {}, []
    for layer in tqdm(wanted, desc=f"{model} embeddings", disable=not progress):
        a = metrics.flatten(acts[layer])
        with threadpool_limits(jobs):  # BLAS/OpenMP in PCA, k-NN, silhouette: same reason as default_jobs
            pca_xy, var = pca(a)
            t0 = time.perf_counter()
            tsne_xy = tsne(a, seed, jobs)
            tsne_s = time.perf_counter() - t0
            sep = metrics.separation(a, tsne_xy, sample.labels, seed=seed)
        sep["tsne_seconds"] = round(tsne_s, 2)
        sep["pca_variance"] = var
        results[layer] = sep
        maps.append((layer, tsne_xy))
        coords[layer] = {"pca": np.round(pca_xy, 4).tolist(), "tsne": np.round(tsne_xy, 4).tolist()}
        figures.append(plots.save(plots.embedding_figure(layer, pca_xy, tsne_xy, sample.labels, classes, sep, model,
                                                         var),
                                  out / f"embeddings_{layer}.png").name)
        if thumbnails is True or (thumbnails and layer in thumbnails):  # drawing images is the slow part
            fig = plots.thumbnail_map(tsne_xy, unit_images(man, sample.images), sample.labels, classes,
                                      title=f"{model}: t-SNE of '{layer}' with the images")
            figures.append(plots.save(fig, out / f"embeddings_{layer}_thumbnails.png").name)
    if len(maps) > 1:
        figures.append(plots.save(plots.layers_grid(maps, sample.labels, classes, results, model),
                                  out / "embeddings_layers.png").name)
    # The JSON holds every figure's data: the per-layer numbers and the 2-D coordinates plotted.
    summary = {"model": model, "dataset": ds.name, "images": int(len(sample)), "per_class": per_class,
               "seed": seed, "classes": classes, "layers": results,
               "figures": figures,
               "labels": sample.labels.tolist(), "coordinates": coords}
    write_json(out / "embeddings.json", summary)
    return summary


def table(summary: dict) -> str:
    rows = [[layer, s["dims"], s["knn_acc_layer"], s["knn_acc_2d"], s["trustworthiness"], s["silhouette_layer"]]
            for layer, s in summary["layers"].items()]
    return tabulate(rows, ["layer", "dims", "kNN layer", "kNN t-SNE", "trust", "silhouette"], floatfmt=".3f")
