"""``analyze explain``: every explanation method a model carries, side by side, and how faithful each is.

    analyze explain --model resnet --images 500 --steps 16 --out reports
    analyze explain --model lenet --methods gradcam,ig

Through the server only: the maps come from ``Explain`` (the predicted class of each image), the
deletion / insertion curves read the target's probability from the served classifier in batches
(``faithfulness.py``), and the randomisation check compares each method's maps with those of
``<model>-randomized`` (written by ``export --randomized``) when the server has it.

Writes ``explain.json`` (the table, curves, verdicts), ``explain_curves.png`` and
``explain_grid.png`` (image x method, correct and wrong predictions) into ``--out/<model>``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from glassbox.data import random_subset
from glassbox.plots import save

from . import faithfulness as ff
from .common import call, model_input, unit_images, write_json
from .errors import AnalysisError
from .explain_plots import curves_figure, grid_figure

BASELINES = ("random", "centre")


def carried(man: dict) -> list[str]:
    section = man.get("explain") or {}
    return list(section.get("methods") or (["gradcam"] if "gradcam" in man.get("graphs", {}) else []))


def _probs_fn(client, model: str):
    def probs(images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        logits = call(client.classify, model, images, top_k=1, return_logits=True).logits.astype(np.float64)
        p = np.exp(logits - logits.max(1, keepdims=True))
        return (p / p.sum(1, keepdims=True))[np.arange(len(targets)), targets]
    return probs


def _maps(client, model: str, x: np.ndarray, methods: list[str], targets: np.ndarray, seed: int) -> dict:
    return {m: call(client.explain, model, x, m, targets, seed=seed + 1).maps for m in methods}


def _randomised(client, model: str, x, methods, targets, seed, trained: dict) -> dict:
    name = f"{model}-randomized"
    if name not in {m.name for m in call(client.list_models) if m.ready}:
        return {}
    return {m: ff.randomisation(trained[m], v) for m, v in _maps(client, name, x, methods, targets, seed).items()}


def run(client, man: dict, ds, out: Path, *, methods: list[str] | None = None, images: int = 500, steps: int = 16,
        seed: int = 0) -> dict:
    model = man["name"]
    have = carried(man)
    methods = methods or have
    if missing := [m for m in methods if m not in have]:
        raise AnalysisError(f"model {model!r} does not carry {', '.join(missing)}; it carries {', '.join(have)}")
    sub = random_subset(ds, min(images, len(ds.images)), seed=seed)
    x = model_input(man, sub.images)
    logits = call(client.classify, model, x, top_k=1, return_logits=True).logits
    targets = logits.argmax(1).astype(np.int64)
    maps = _maps(client, model, x, methods, targets, seed)
    maps["random"], maps["centre"] = ff.random_maps(x[:, 0].shape, seed), ff.centre_maps(x[:, 0].shape)
    black = model_input(man, np.zeros((1, *sub.images.shape[1:]), np.uint8))[0, :, 0, 0]
    curves = {k: ff.deletion_insertion(_probs_fn(client, model), x, v, targets, steps=steps, removed=black, seed=seed)
              for k, v in maps.items()}
    aucs = {k: {"deletion": ff.auc(c["deletion"]), "insertion": ff.auc(c["insertion"])} for k, c in curves.items()}
    table = ff.summarise(aucs)
    randomised = _randomised(client, model, x, methods, targets, seed, maps)
    for m, r in randomised.items():
        table[m]["randomisation_spearman"] = r["spearman"]
    res = {"model": model, "images": int(len(x)), "steps": steps, "seed": seed, "methods": methods,
           "targets": "predicted", "accuracy": float(np.mean(targets == sub.labels)), "table": table,
           "verdicts": ff.verdicts(table, randomised),
           "randomised_model": f"{model}-randomized" if randomised else None,
           "curves": {k: {"fractions": c["fractions"].tolist(), "deletion": c["deletion"].mean(0).tolist(),
                          "insertion": c["insertion"].mean(0).tolist()} for k, c in curves.items()}}
    out.mkdir(parents=True, exist_ok=True)
    save(curves_figure(res["curves"], model), out / "explain_curves.png")
    right = targets == sub.labels
    pick = np.concatenate([np.flatnonzero(right)[:4], np.flatnonzero(~right)[:4]])
    save(grid_figure(unit_images(man, sub.images[pick]), {m: maps[m][pick] for m in methods}, right[pick],
                     [man["labels"][t] for t in targets[pick]], model), out / "explain_grid.png")
    write_json(out / "explain.json", res)
    return res


def table_lines(res: dict) -> list[str]:
    """The faithfulness table as text lines (the CLI prints them, the README quotes them)."""
    lines = [f"{'method':11s} {'deletion AUC':>12s} {'insertion AUC':>13s} {'beats random (del/ins)':>23s} "
             f"{'random. rho':>11s}"]
    for name, row in res["table"].items():
        rho = row.get("randomisation_spearman")
        lines.append(f"{name:11s} {row['deletion_auc']:12.3f} {row['insertion_auc']:13.3f} "
                     f"{row['beats_random_deletion']:11.0%} / {row['beats_random_insertion']:<9.0%} "
                     f"{'' if rho is None else f'{rho:11.2f}'}")
    return lines
