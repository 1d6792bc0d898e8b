"""Seeded subsets and splits: what the seeds used, reproducible from the run config."""
from __future__ import annotations

import numpy as np

from .base import ArrayDataset


def random_subset(ds: ArrayDataset, n: int, seed: int = 0) -> ArrayDataset:
    """A fixed-size random subset (the seeds' "simplified Fashion-MNIST" had 1,000 images)."""
    if n >= len(ds):
        return ds
    return ds.subset(np.sort(np.random.default_rng(seed).choice(len(ds), n, replace=False)))


def train_val_split(ds: ArrayDataset, val_fraction: float = 0.1, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """Stratified, seeded split: every class keeps the same share in both parts."""
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(ds.labels):
        idx = np.flatnonzero(ds.labels == c)
        rng.shuffle(idx)
        val.append(idx[: int(round(len(idx) * val_fraction))])
    val_idx = np.sort(np.concatenate(val)) if val else np.array([], np.int64)
    train_idx = np.setdiff1d(np.arange(len(ds)), val_idx)
    return ds.subset(train_idx), ds.subset(val_idx)


def longtail(ds: ArrayDataset, classes=(0, 1, 2, 3, 4), keep: float = 0.1, seed: int = 0) -> ArrayDataset:
    """The long-tail variant: keep only ``keep`` of the images of ``classes``, all of the others."""
    rng = np.random.default_rng(seed)
    mask = np.ones(len(ds), bool)
    for c in classes:
        idx = np.flatnonzero(ds.labels == c)
        drop = rng.permutation(idx)[int(round(len(idx) * keep)):]
        mask[drop] = False
    return ds.subset(np.flatnonzero(mask))


def class_balanced_sample(ds: ArrayDataset, per_class: int, seed: int = 0) -> ArrayDataset:
    """``per_class`` images of every class (fewer where a class has fewer), in class order."""
    rng = np.random.default_rng(seed)
    picks = [np.sort(rng.permutation(np.flatnonzero(ds.labels == c))[:per_class]) for c in range(len(ds.classes))]
    return ds.subset(np.concatenate(picks) if picks else np.array([], np.int64))
