"""Seeded subsets and splits, reproducible from the run config's seed.

    from glassbox.data import train_val_split, longtail, random_subset, class_balanced_sample
    train, val = train_val_split(ds, val_fraction=0.1, seed=0)   # stratified, disjoint
    lt = longtail(ds, classes=(0, 1, 2, 3, 4), keep=0.1, seed=0)  # 10% of classes 0-4, all of the rest
    small = random_subset(ds, 1000, seed=0)
    bal = class_balanced_sample(ds, per_class=20, seed=0)

Everything is vectorised: one permutation, then a stable sort by label gives each sample its rank
within its class (no per-class Python loop, which matters for LFW's 5,749 classes). Results keep
the dataset's original order (indices sorted), so a subset of a subset stays predictable.
"""
from __future__ import annotations

import numpy as np

from .base import ArrayDataset


def _rank_within_class(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random rank 0..count-1 of every sample within its class, and the class counts per sample."""
    n = len(labels)
    perm = rng.permutation(n)
    order = perm[np.argsort(labels[perm], kind="stable")]  # grouped by class, shuffled inside
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]]) if n else np.array([], np.int64)
    counts = np.diff(np.r_[starts, n])
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - np.repeat(starts, counts)
    per_sample_count = np.empty(n, np.int64)
    per_sample_count[order] = np.repeat(counts, counts)
    return rank, per_sample_count


def stratified_mask(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask picking round(fraction * count) random samples of every class."""
    rank, count = _rank_within_class(np.asarray(labels), rng)
    return rank < np.rint(count * fraction)


def random_subset(ds: ArrayDataset, n: int, seed: int = 0) -> ArrayDataset:
    """``n`` random samples (all of them, in order, when ``n >= len(ds)``)."""
    if n >= len(ds):
        return ds
    return ds.subset(np.sort(np.random.default_rng(seed).choice(len(ds), n, replace=False)))


def train_val_split(ds: ArrayDataset, val_fraction: float = 0.1, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """Stratified, seeded split into (train, val): each class gives round(val_fraction * count)
    samples to val, so class shares are the same in both parts."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    val = stratified_mask(ds.labels, val_fraction, np.random.default_rng(seed))
    return ds.subset(np.flatnonzero(~val)), ds.subset(np.flatnonzero(val))


def longtail(ds: ArrayDataset, classes=(0, 1, 2, 3, 4), keep: float = 0.1, seed: int = 0) -> ArrayDataset:
    """The long-tail variant: round(keep * count) random images of each of ``classes``, all others."""
    rank, count = _rank_within_class(ds.labels, np.random.default_rng(seed))
    reduced = np.isin(ds.labels, np.asarray(classes, np.int64))
    return ds.subset(np.flatnonzero(~reduced | (rank < np.rint(count * keep))))


def class_balanced_sample(ds: ArrayDataset, per_class: int, seed: int = 0) -> ArrayDataset:
    """``per_class`` random images of every class (all of a class that has fewer)."""
    rank, _ = _rank_within_class(ds.labels, np.random.default_rng(seed))
    return ds.subset(np.flatnonzero(rank < per_class))
