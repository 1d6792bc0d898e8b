"""``analyze accuracy``: accuracy, per-class precision/recall/F1, confusion matrix, confident mistakes,
and the training curves from the manifest.

    analyze accuracy --model lenet --split test

A model trained on a long-tailed set (its manifest's training config sets ``dataset.longtail``, as
``train-all --study cifar-longtail`` does) also gets its accuracy on the head classes (kept whole)
and on the tail classes (reduced in training) separately.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tabulate import tabulate

from glassbox.data import head_tail_accuracy

from . import metrics, plots
from .common import batched, model_input, unit_images, write_json


def run(client, man: dict, ds, out: Path, limit: int | None = None, mistakes: int = 24,
        progress: bool = True) -> dict:
    model, classes = man["name"], man["labels"]
    if limit:
        ds = ds.subset(np.arange(min(limit, len(ds))))
    res = batched(client.classify, model, model_input(man, ds.images), top_k=1, return_logits=True,
                  desc=f"{model} classify", progress=progress)
    pred = res.indices[:, 0]
    report = metrics.classification_report(ds.labels, pred, classes)
    figures = ["confusion.png"]
    plots.save(plots.confusion_figure(np.array(report["confusion_matrix"]), classes,
                                      f"{model}: confusion matrix ({ds.name} {len(ds)} images, "
                                      f"acc {report['accuracy']:.2%})"),
               out / "confusion.png")
    wrong = np.flatnonzero(pred != ds.labels)
    worst = wrong[np.argsort(-res.probs[wrong, 0], kind="stable")][:mistakes]
    if len(worst):
        titles = [f"{classes[pred[i]][:10]} {res.probs[i, 0]:.0%}\n(true {classes[ds.labels[i]][:10]})" for i in worst]
        plots.save(plots.image_grid(unit_images(man, ds.images[worst]), titles,
                                    suptitle=f"{model}: the most confident mistakes"), out / "mistakes.png")
        figures.append("mistakes.png")
    history = man.get("training", {}).get("history") or []
    if history:
        plots.save(plots.curves_figure(history, f"{model}: training curves"), out / "curves.png")
        figures.append("curves.png")
    trained_on = ((man.get("source") or {}).get("config") or {}).get("dataset") or {}
    report.update(head_tail_accuracy(ds.labels, pred, trained_on.get("longtail")))
    report.update({"model": model, "dataset": ds.name, "images": int(len(ds)),
                   "most_confident_mistakes": [{"index": int(i), "true": classes[ds.labels[i]],
                                                "predicted": classes[pred[i]], "probability": float(res.probs[i, 0])}
                                               for i in worst],
                   "history": history, "figures": figures})
    write_json(out / "accuracy.json", report)
    return report


def table(report: dict) -> str:
    lines = [f"accuracy {report['accuracy']:.4f} on {report['images']} images, macro F1 {report['macro_f1']:.4f}"]
    if "tail_classes" in report:  # trained on a long-tailed set
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(f"head classes {fmt(report['head_acc'])}, tail classes {fmt(report['tail_acc'])} "
                     f"(tail: classes {', '.join(map(str, report['tail_classes']))}, reduced in training)")
    rows = [[c["class"][:14], c["precision"], c["recall"], c["f1"], c["support"]] for c in report["per_class"]]
    lines.append(tabulate(rows, ["class", "precision", "recall", "f1", "support"], floatfmt=".3f"))
    return "\n".join(lines)
