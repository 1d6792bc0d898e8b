"""Long-tailed training sets and what rebalances them (report 003), numpy only.

    from glassbox.data import longtail, longtail_spec, rebalance, head_tail_accuracy
    spec = longtail_spec(True)                      # {"classes": [0, 1, 2, 3, 4], "keep": 0.1}
    lt = longtail(ds, **spec, seed=0)                # 10% of each tail class, all of the others
    train, val = train_val_split(lt, 0.1, seed=0)    # val: the same class shares as train
    train = rebalance(train, {"method": "augment", "noise_std": 0.05}, seed=0)  # tail up to the head's count
    head_tail_accuracy(labels, predicted, spec)      # {"head_acc": ..., "tail_acc": ...}

In a run config (``train-all --study cifar-longtail``)::

    dataset = { name = "cifar10", longtail = { classes = [0, 1, 2, 3, 4], keep = 0.1 },
                rebalance = { method = "augment", noise_std = 0.05 } }

``longtail``: false, true (the report's: classes 0-4, 10% kept) or a table. The reduction is seeded
by the run's seed and applied to the official training split *before* the stratified
validation split, so validation has the long-tailed class shares of the training set (450 train and
50 validation images per tail class of CIFAR-10 at val_fraction 0.1): model selection sees what a
user of such data would have. The test split stays the official, balanced one.

``rebalance`` works on the training part only, after the split (no copy of a validation image can
reach training). Every class with fewer images than the largest gets extra ones until it has as
many; classes already at the top are untouched, so on a balanced set it is a no-op:

- ``augment`` (report 003): copies of the class's own images, taken in seeded random order (each
  image once before any twice), each horizontally flipped with probability ``flip`` (default 0.5)
  and given fresh Gaussian noise of std ``noise_std`` in [0, 1] pixel units (rounded back to uint8).
- ``oversample``: class-balanced sampling as random oversampling: the same images repeated
  unchanged, so every epoch draws each class equally often (a static form of sampling by
  1/class-count, on the same epoch length as ``augment``).
- ``none`` (default): the set as it is.
"""
from __future__ import annotations

import numpy as np

from .base import ArrayDataset

REPORT_TAIL = {"classes": [0, 1, 2, 3, 4], "keep": 0.1}
METHODS = ("none", "augment", "oversample")


def longtail_spec(value) -> dict | None:
    """A config's ``dataset.longtail`` (false / true / {classes, keep}) as {classes, keep}, or None."""
    if value is None or value is False:
        return None
    if value is True:
        return dict(REPORT_TAIL)
    if not isinstance(value, dict) or set(value) - {"classes", "keep"}:
        raise ValueError(f"dataset.longtail must be true, false or {{classes = [...], keep = 0.1}}, got {value!r}")
    spec = {**REPORT_TAIL, **value}
    classes, keep = spec["classes"], spec["keep"]
    if (not isinstance(classes, list) or not classes or not all(isinstance(c, int) and c >= 0 for c in classes)
            or isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1):
        raise ValueError(f"dataset.longtail needs classes a non-empty list of class indices and 0 < keep <= 1, "
                         f"got {value!r}")
    return {"classes": sorted(set(classes)), "keep": float(keep)}


def rebalance_spec(value) -> dict:
    """A config's ``dataset.rebalance`` (a method name or {method, noise_std, flip}) in full."""
    spec = {"method": "none", "noise_std": 0.05, "flip": 0.5}
    if value is not None:
        spec.update({"method": value} if isinstance(value, str) else dict(value))
    if set(spec) != {"method", "noise_std", "flip"} or spec["method"] not in METHODS:
        raise ValueError(f"dataset.rebalance: method one of {', '.join(METHODS)} (with noise_std and flip for "
                         f"augment), got {value!r}")
    if not (0 <= float(spec["noise_std"]) and 0 <= float(spec["flip"]) <= 1):
        raise ValueError(f"dataset.rebalance: noise_std >= 0 and 0 <= flip <= 1, got {value!r}")
    return spec


def extra_indices(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of the images to copy so every class reaches the largest class's count: per short
    class, its images in a random order, cycled (each once before any twice)."""
    counts = np.bincount(labels)
    target, picks = counts.max(initial=0), []
    for c in np.flatnonzero((counts > 0) & (counts < target)):
        own = rng.permutation(np.flatnonzero(labels == c))
        picks.append(np.resize(own, target - counts[c]))  # np.resize repeats the array cyclically
    return np.concatenate(picks) if picks else np.zeros(0, np.int64)


def rebalance(ds: ArrayDataset, value, seed: int = 0) -> ArrayDataset:
    """``ds`` with its short classes brought up to the largest class's count (see the module doc);
    the copies are appended after the originals, which stay first and unchanged."""
    spec = rebalance_spec(value)
    if spec["method"] == "none" or len(ds) == 0:
        return ds
    rng = np.random.default_rng([seed, 3])  # its own stream: not the split's or the subset's draws
    src = extra_indices(ds.labels, rng)
    if not len(src):
        return ds
    copies = ds.images[src]
    if spec["method"] == "augment":
        flip = rng.random(len(src)) < float(spec["flip"])
        copies[flip] = copies[flip][:, :, ::-1]  # width is axis 2 for [N, H, W] and [N, H, W, C]
        if float(spec["noise_std"]) > 0:
            noise = rng.normal(0.0, float(spec["noise_std"]) * 255.0, copies.shape).astype(np.float32)
            copies = np.clip(np.rint(copies + noise), 0, 255).astype(np.uint8)
    return ArrayDataset(np.concatenate([ds.images, copies]), np.concatenate([ds.labels, ds.labels[src]]),
                        list(ds.classes), ds.name)


def head_tail_accuracy(labels, predicted, longtail) -> dict:
    """Accuracy on the images of the head classes (kept whole) and of the tail classes (reduced by
    ``longtail``, a config value or spec); {} when the training set was not long-tailed."""
    spec = longtail_spec(longtail)
    if spec is None:
        return {}
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    tail = np.isin(labels, spec["classes"])
    right = labels == predicted
    return {"head_acc": float(right[~tail].mean()) if (~tail).any() else None,
            "tail_acc": float(right[tail].mean()) if tail.any() else None,
            "tail_classes": spec["classes"]}
