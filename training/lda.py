"""Linear discriminant analysis, one class against the rest (report 001), as a study run.

    train-all --study lda-mnist --out runs/lda-mnist

Not a torch model: scikit-learn's LDA on raw pixels in [0, 1], one binary problem per class, fitted
on ``train_images`` training images and scored on a class-balanced test set (as many images of the
class as of all the others together), so that "always the rest" scores 50%, not 90%.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from glassbox import data as D
from glassbox.io import write_json


def _pixels(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def fit_lda(cfg: dict, out: Path, log=print) -> dict:
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    t0 = time.perf_counter()
    lc, ds = cfg["lda"], cfg["dataset"]
    train = D.random_subset(D.load_dataset(ds["name"], "train", data_dir=ds.get("data_dir")),
                            int(lc["train_images"]), seed=cfg["seed"])
    test = D.load_dataset(ds["name"], "test", data_dir=ds.get("data_dir"))
    x, xt = _pixels(train.images), _pixels(test.images)
    rng = np.random.default_rng(cfg["seed"])
    per_class = []
    for c, name in enumerate(test.classes):
        model = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=lc["shrinkage"]).fit(x, train.labels == c)
        pos, neg = np.flatnonzero(test.labels == c), np.flatnonzero(test.labels != c)
        idx = np.concatenate([pos, rng.choice(neg, len(pos), replace=False)])
        acc = float((model.predict(xt[idx]) == (test.labels[idx] == c)).mean())
        per_class.append(acc)
        log(f"{cfg['name']}: {name} against the rest: {acc:.2%} on {len(idx)} balanced test images")
    metrics = {"val_metric": "none", "best_val": None, "best_epoch": 0, "test_acc": float(np.mean(per_class)),
               "per_class_acc": per_class, "min_class_acc": min(per_class), "max_class_acc": max(per_class),
               "test_images": 2 * int(np.bincount(test.labels).mean()), "epochs_run": 1,
               "wall_seconds": round(time.perf_counter() - t0, 1)}
    write_json(out / "config.json", cfg)
    write_json(out / "history.json", [])
    write_json(out / "metrics.json", metrics)
    return metrics
