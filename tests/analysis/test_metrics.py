"""The analysis metrics (analysis/metrics.py) on synthetic arrays: separation, k-NN and silhouette, the
classification report, the VAE's scores, map normalisation. No server and no dataset files: they pin down
the numbers the end-to-end tests (tests/analysis/test_analysis.py) only check for sense.

    .venv/bin/pytest -x -q tests/analysis/test_metrics.py
"""

import numpy as np
import pytest

from analysis import metrics
from tests.helpers.data import blobs


def test_separation_tells_separable_from_random():
    x, y = blobs()
    good = metrics.separation(x, x[:, :2] + x[:, 2:4], y)
    assert good["knn_acc_layer"] == 1.0 and good["silhouette_layer"] > 0.8
    assert good["dims"] == 8 and good["points"] == 160 and 0.5 < good["trustworthiness"] <= 1.0
    noise = np.random.default_rng(1).standard_normal(x.shape)
    bad = metrics.separation(noise, noise[:, :2], y)
    assert bad["knn_acc_layer"] < 0.5 and abs(bad["silhouette_layer"]) < 0.1
    # A 2-D map that keeps every neighbourhood is perfectly trustworthy.
    assert metrics.trustworthiness(x[:, :2], x[:, :2].copy()) == pytest.approx(1.0)


def test_knn_and_silhouette_degenerate_inputs_are_nan_not_errors():
    x, y = blobs(n_per=1)
    assert np.isnan(metrics.knn_accuracy(x, y))           # one image per class: no 2-fold CV
    assert np.isnan(metrics.silhouette(x, np.zeros(len(x), int)))


def test_trustworthiness_subsamples_large_inputs(monkeypatch):
    monkeypatch.setattr(metrics, "TRUSTWORTHINESS_MAX_POINTS", 100)
    x, _ = blobs(n_per=100)
    assert 0.5 < metrics.trustworthiness(x, x[:, :2]) <= 1.0


def test_classification_report_rows_are_true_classes():
    classes = ["a", "b", "c"]
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 1, 0])
    r = metrics.classification_report(y_true, y_pred, classes)
    cm = np.array(r["confusion_matrix"])
    assert cm.tolist() == [[1, 2, 0], [0, 2, 0], [1, 0, 0]]
    assert list(cm.sum(axis=1)) == [c["support"] for c in r["per_class"]] == [3, 2, 1]
    assert r["accuracy"] == pytest.approx(3 / 6)
    b = r["per_class"][1]
    assert b["precision"] == pytest.approx(0.5) and b["recall"] == 1.0 and b["f1"] == pytest.approx(2 / 3)
    assert r["per_class"][2]["f1"] == 0.0  # never predicted: 0, not a warning or NaN


def test_vae_metrics_known_values():
    x = np.full((2, 1, 4, 4), 0.5, np.float32)
    recon = x + 0.1                                                  # MSE 0.01 -> PSNR 20 dB
    mean, logvar = np.zeros((2, 3)), np.zeros((2, 3))               # the prior itself: KL 0
    m = metrics.vae_metrics(x, recon, mean, logvar)
    assert m["mse"] == pytest.approx(0.01, rel=1e-4) and m["psnr"] == pytest.approx(20.0, abs=1e-3)
    assert m["kl"] == pytest.approx(0.0, abs=1e-9) and m["latent_dim"] == 3 and m["pixels_per_image"] == 16
    bce = -16 * (0.5 * np.log(0.6) + 0.5 * np.log(0.4))
    assert m["bce"] == pytest.approx(bce, rel=1e-5) and m["elbo"] == pytest.approx(-bce, rel=1e-5)
    m = metrics.vae_metrics(x, recon, np.ones((2, 3)), np.zeros((2, 3)))
    assert m["kl"] == pytest.approx(1.5)                            # 0.5 * sum(mean^2)
    assert np.isfinite(metrics.vae_metrics(x, x, mean, logvar)["psnr"])  # a perfect copy stays finite


def test_normalize_maps_per_image():
    cams = np.stack([np.arange(16.0).reshape(4, 4), np.full((4, 4), 7.0), -np.arange(16.0).reshape(4, 4) * 1e-6])
    n = metrics.normalize_maps(cams)
    assert n.dtype == np.float32 and n.shape == cams.shape
    assert n[0].min() == 0 and n[0].max() == 1 and n[2].min() == 0 and n[2].max() == pytest.approx(1)
    assert (n[1] == 0).all()  # a flat map has nothing to show
