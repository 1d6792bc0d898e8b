"""Numbers behind the figures: class separation, classification and VAE metrics (numpy + scikit-learn).

Pure functions on arrays, no server and no plotting, so they are testable on synthetic data:

    .venv/bin/python -c "import numpy as np, analysis.metrics as m; \
        x = np.random.randn(200, 5); y = np.arange(200) % 4; print(m.separation(x, x[:, :2], y))"
"""
from __future__ import annotations

import math

import numpy as np

#: trustworthiness needs the full pairwise distance matrix (n^2 floats); above this it uses a subsample.
TRUSTWORTHINESS_MAX_POINTS = 2000


def flatten(x: np.ndarray) -> np.ndarray:
    """[N, ...] -> float32 [N, D]."""
    x = np.asarray(x)
    return x.reshape(len(x), -1).astype(np.float32, copy=False)


def knn_accuracy(x: np.ndarray, labels: np.ndarray, k: int = 5, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated (stratified k-fold) accuracy of a k-nearest-neighbour classifier on `x`."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    x, labels = flatten(x), np.asarray(labels)
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    folds = int(min(folds, counts.min()))
    if folds < 2 or len(counts) < 2:
        return float("nan")
    k = int(max(1, min(k, len(x) - len(x) // folds - 1)))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_score(KNeighborsClassifier(n_neighbors=k), x, labels, cv=cv)
    return float(np.mean(scores))


def trustworthiness(x_high: np.ndarray, x_low: np.ndarray, k: int = 5, seed: int = 0) -> float:
    """scikit-learn's trustworthiness of the 2-D map (1 = every map neighbour is a true neighbour).

    Computed on at most TRUSTWORTHINESS_MAX_POINTS points (a fixed random subset) to bound memory.
    """
    from sklearn.manifold import trustworthiness as _tw

    x_high, x_low = flatten(x_high), flatten(x_low)
    n = len(x_high)
    if n > TRUSTWORTHINESS_MAX_POINTS:
        idx = np.random.default_rng(seed).choice(n, TRUSTWORTHINESS_MAX_POINTS, replace=False)
        x_high, x_low, n = x_high[idx], x_low[idx], TRUSTWORTHINESS_MAX_POINTS
    k = int(min(k, (n - 1) // 2 - 1))
    if k < 1:
        return float("nan")
    return float(_tw(x_high, x_low, n_neighbors=k))


def silhouette(x: np.ndarray, labels: np.ndarray, seed: int = 0, max_points: int = 5000) -> float:
    """Mean silhouette coefficient of the classes in `x` (Euclidean), in [-1, 1]."""
    from sklearn.metrics import silhouette_score

    x, labels = flatten(x), np.asarray(labels)
    if len(np.unique(labels)) < 2 or len(x) <= len(np.unique(labels)):
        return float("nan")
    sample = max_points if len(x) > max_points else None
    return float(silhouette_score(x, labels, sample_size=sample, random_state=seed))


def separation(x_layer: np.ndarray, x_2d: np.ndarray, labels: np.ndarray, k: int = 5, seed: int = 0) -> dict:
    """How well classes separate in a layer and in its 2-D map.

    Returns trustworthiness (of the map), k-NN accuracy in the map and in the layer's own space
    (cross-validated), and silhouette scores in both.
    """
    return {
        "trustworthiness": trustworthiness(x_layer, x_2d, k=k, seed=seed),
        "knn_acc_2d": knn_accuracy(x_2d, labels, k=k, seed=seed),
        "knn_acc_layer": knn_accuracy(x_layer, labels, k=k, seed=seed),
        "silhouette_layer": silhouette(x_layer, labels, seed=seed),
        "silhouette_2d": silhouette(x_2d, labels, seed=seed),
        "k": k,
        "points": int(len(labels)),
        "dims": int(flatten(x_layer[:1]).shape[1]) if len(x_layer) else 0,
    }


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, confusion matrix (rows = true class, columns = predicted) and per-class P/R/F1."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = np.arange(len(classes))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_class = [
        {"index": int(i), "class": classes[i], "precision": float(p[i]), "recall": float(r[i]),
         "f1": float(f[i]), "support": int(s[i])}
        for i in labels
    ]
    present = s > 0
    return {
        "accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else float("nan"),
        "n": int(len(y_true)),
        "confusion_matrix": cm.astype(int).tolist(),
        "per_class": per_class,
        "macro_f1": float(np.mean(f[present])) if present.any() else float("nan"),
    }


def vae_metrics(x: np.ndarray, recon: np.ndarray, mean: np.ndarray, logvar: np.ndarray) -> dict:
    """Reconstruction quality and ELBO terms, per image, averaged over images.

    `x` and `recon` are images in [0, 1] of the same shape [N, C, H, W]. BCE and KL are summed over
    pixels / latent dimensions of an image (the VAE training loss), then averaged over images.
    PSNR is per image (peak 1.0) and averaged; `psnr_of_mean_mse` is the PSNR of the mean MSE.
    """
    x = flatten(x).astype(np.float64)
    r = flatten(recon).astype(np.float64)
    mean, logvar = flatten(mean).astype(np.float64), flatten(logvar).astype(np.float64)
    mse = np.mean((x - r) ** 2, axis=1)
    psnr = 10.0 * np.log10(1.0 / np.maximum(mse, 1e-12))
    eps = 1e-7
    rc = np.clip(r, eps, 1 - eps)
    bce = -np.sum(x * np.log(rc) + (1 - x) * np.log(1 - rc), axis=1)
    kl = -0.5 * np.sum(1 + logvar - mean**2 - np.exp(logvar), axis=1)
    mean_mse = float(np.mean(mse))
    return {
        "n": int(len(x)),
        "mse": mean_mse,
        "psnr": float(np.mean(psnr)),
        "psnr_of_mean_mse": float(10.0 * math.log10(1.0 / max(mean_mse, 1e-12))),
        "bce": float(np.mean(bce)),
        "kl": float(np.mean(kl)),
        "elbo": float(-np.mean(bce + kl)),
        "pixels_per_image": int(x.shape[1]),
        "latent_dim": int(mean.shape[1]),
    }


def normalize_maps(cams: np.ndarray) -> np.ndarray:
    """Min-max normalize each map of [N, H, W] to [0, 1] independently (a flat map becomes 0)."""
    cams = np.asarray(cams, dtype=np.float32)
    lo = cams.reshape(len(cams), -1).min(axis=1)[:, None, None]
    hi = cams.reshape(len(cams), -1).max(axis=1)[:, None, None]
    span = hi - lo
    out = np.where(span > 0, (cams - lo) / np.where(span > 0, span, 1), 0.0)
    return out.astype(np.float32)
