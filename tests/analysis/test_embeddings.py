"""t-SNE of the embeddings (analysis/embeddings.py) on synthetic blobs: fast, and it keeps classes apart.

    .venv/bin/pytest -x -q tests/analysis/test_embeddings.py
"""
import time

import numpy as np

from analysis import embeddings, metrics
from tests.helpers.data import blobs


def test_tsne_is_fast_and_keeps_classes_apart():
    x, y = blobs(n_per=100, k=5, dims=60)   # > 50 dims: goes through the PCA step
    t0 = time.perf_counter()
    xy = embeddings.tsne(x, seed=0, jobs=1)
    took = time.perf_counter() - t0
    assert xy.shape == (500, 2) and np.isfinite(xy).all()
    assert metrics.knn_accuracy(xy, y) > 0.95
    assert took < 20, f"t-SNE of 500 points took {took:.1f}s"
    assert np.allclose(xy, embeddings.tsne(x, seed=0, jobs=1))   # seeded: the same map twice
