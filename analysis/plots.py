"""Matplotlib figures of the analysis CLI (Agg backend, no display needed).

Every function takes plain numpy arrays and returns a `matplotlib.figure.Figure`; `save()` writes it.
Try one on synthetic data:

    .venv/bin/python -c "import numpy as np, analysis.plots as p; \
        f = p.embedding_figure('fc1', np.random.randn(100, 2), np.random.randn(100, 2), \
        np.arange(100) % 10, [str(i) for i in range(10)]); p.save(f, '/tmp/emb.png')"
"""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.offsetbox import AnnotationBbox, OffsetImage  # noqa: E402

from glassbox.plots import curves_figure, save  # noqa: E402,F401  (one saver, one curves figure)

HEATMAP_CMAP = "inferno"       # perceptually uniform, reads in grayscale too
WEIGHTS_CMAP = "RdBu_r"        # diverging: the sign of a weight matters as much as its size
FEATURES_CMAP = "viridis"      # activations after ReLU are >= 0: sequential
CONFUSION_CMAP = "Blues"       # sequential counts
LEGEND_MAX_CLASSES = 20        # above this a legend is unreadable; colours stay, legend goes


def class_colors(n: int) -> np.ndarray:
    """n distinguishable RGBA colours: tab10 / tab20 for few classes, evenly spaced turbo otherwise."""
    if n <= 10:
        return plt.get_cmap("tab10")(np.arange(n))
    if n <= 20:
        return plt.get_cmap("tab20")(np.arange(n))
    return plt.get_cmap("turbo")(np.linspace(0.05, 0.95, n))


def to_display(img: np.ndarray) -> np.ndarray:
    """One image as imshow wants it: [H, W] or [H, W, 3] floats in [0, 1].

    Accepts uint8 or float images shaped [H, W], [H, W, C] or [C, H, W] (C in 1, 3).
    """
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.transpose(img, (1, 2, 0))  # [C, H, W] -> [H, W, C]
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    img = img.astype(np.float32)
    if img.max(initial=0) > 1.0 + 1e-6:
        img = img / 255.0
    return np.clip(img, 0.0, 1.0)


def _show(ax, img, **kw):
    d = to_display(img)
    ax.imshow(d, cmap="gray" if d.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest", **kw)
    ax.set_xticks([])
    ax.set_yticks([])
    return d


def _class_legend(fig_or_ax, classes, colors, **kw):
    if len(classes) > LEGEND_MAX_CLASSES:
        return None
    handles = [plt.Line2D([], [], marker="o", ls="", color=colors[i], markersize=7, label=str(c))
               for i, c in enumerate(classes)]
    return fig_or_ax.legend(handles=handles, title="class", frameon=False, **kw)


def scatter_classes(ax, xy: np.ndarray, labels: np.ndarray, classes: list[str], title: str = "",
                    xlabel: str = "dim 1", ylabel: str = "dim 2", size: float | None = None):
    """2-D points coloured by class (no legend; see `_class_legend`)."""
    colors = class_colors(len(classes))
    labels = np.asarray(labels)
    size = size or float(np.clip(3000.0 / max(len(xy), 1), 2, 18))
    for c in range(len(classes)):
        m = labels == c
        if m.any():
            ax.scatter(xy[m, 0], xy[m, 1], s=size, color=colors[c], alpha=0.8, linewidths=0, label=str(classes[c]))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    return ax


def _metric_line(m: dict | None) -> str:
    if not m:
        return ""
    return (f"k-NN acc: layer {m['knn_acc_layer']:.2f}, map {m['knn_acc_2d']:.2f}  |  "
            f"trust {m['trustworthiness']:.2f}  |  silhouette {m['silhouette_layer']:.2f}")


def embedding_figure(layer: str, pca_xy: np.ndarray, tsne_xy: np.ndarray, labels: np.ndarray,
                     classes: list[str], metrics: dict | None = None, model: str = "",
                     pca_var: list[float] | None = None):
    """PCA and t-SNE of one layer side by side, coloured by class, with a legend of class names."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    pv = f" ({100 * sum(pca_var):.0f}% variance)" if pca_var else ""
    scatter_classes(axes[0], pca_xy, labels, classes, f"PCA{pv}", "PC 1", "PC 2")
    scatter_classes(axes[1], tsne_xy, labels, classes, "t-SNE", "t-SNE 1", "t-SNE 2")
    head = f"{model}: layer '{layer}'" if model else f"layer '{layer}'"
    fig.suptitle(f"{head}, {len(labels)} images\n{_metric_line(metrics)}", fontsize=11)
    _class_legend(fig, classes, class_colors(len(classes)), loc="center left", bbox_to_anchor=(0.99, 0.5), fontsize=8)
    fig.tight_layout()
    return fig


def layers_grid(maps: list[tuple[str, np.ndarray]], labels: np.ndarray, classes: list[str],
                metrics: dict | None = None, model: str = "", method: str = "t-SNE", ncols: int = 3):
    """One 2-D map per layer, input to output, in a grid (3 columns) with one shared legend."""
    n = len(maps)
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.9 * nrows), squeeze=False)
    # not strict: the grid has nrows * ncols >= n axes; the spare ones are switched off below
    for ax, (layer, xy) in zip(axes.flat, maps, strict=False):
        sub = ""
        if metrics and layer in metrics:
            sub = f"\nk-NN {metrics[layer]['knn_acc_layer']:.2f}, silhouette {metrics[layer]['silhouette_layer']:.2f}"
        scatter_classes(ax, xy, labels, classes, f"{layer}{sub}", f"{method} 1", f"{method} 2")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"{model + ': ' if model else ''}{method} of every layer, input to output "
                 f"({len(labels)} images)", fontsize=12)
    _class_legend(fig, classes, class_colors(len(classes)), loc="center left", bbox_to_anchor=(0.99, 0.5), fontsize=9)
    fig.tight_layout()
    return fig


def thumbnail_map(xy: np.ndarray, images: np.ndarray, labels: np.ndarray, classes: list[str],
                  title: str = "", max_images: int = 1000, seed: int = 0):
    """The 2-D map drawn with the images themselves at their coordinates, framed in their class colour."""
    colors = class_colors(len(classes))
    n = len(xy)
    idx = np.arange(n)
    if n > max_images:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_images, replace=False))
    fig, ax = plt.subplots(figsize=(12, 12))
    ax.scatter(xy[:, 0], xy[:, 1], s=1, c="none")  # sets the limits
    side = to_display(images[0]).shape[0]
    zoom = float(np.clip(22.0 / side * (600.0 / max(len(idx), 150)) ** 0.5, 0.25, 1.6))
    for i in idx:
        d = to_display(images[i])
        oi = OffsetImage(d, zoom=zoom, cmap="gray" if d.ndim == 2 else None, norm=None)
        oi.get_children()[0].set_clim(0, 1)
        ab = AnnotationBbox(oi, (xy[i, 0], xy[i, 1]), frameon=True, pad=0.05,
                            bboxprops=dict(edgecolor=colors[int(labels[i])], linewidth=1.2))
        ax.add_artist(ab)
    pad = 0.04 * (xy.max(axis=0) - xy.min(axis=0) + 1e-9)
    ax.set_xlim(xy[:, 0].min() - pad[0], xy[:, 0].max() + pad[0])
    ax.set_ylim(xy[:, 1].min() - pad[1], xy[:, 1].max() + pad[1])
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.set_title(title or f"t-SNE map with the images ({len(idx)} shown; frame colour = class)")
    _class_legend(ax, classes, colors, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9)
    fig.tight_layout()
    return fig


def overlay_grid(images: np.ndarray, maps: np.ndarray, titles: list[str], suptitle: str = "",
                 ncols: int = 8, alpha: float = 0.5, show_originals: bool = True):
    """Images with their normalized heatmaps (values in [0, 1]) overlaid; originals above each row.

    With `show_originals` every image takes two rows: the image, then image + heatmap.
    """
    n = len(images)
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    rows_per = 2 if show_originals else 1
    fig, axes = plt.subplots(nrows * rows_per, ncols, figsize=(1.7 * ncols, 1.9 * nrows * rows_per + 0.6),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    mappable = None
    for i in range(n):
        r, c = divmod(i, ncols)
        if show_originals:
            ax0 = axes[r * 2, c]
            ax0.axis("on")
            _show(ax0, images[i])
            ax0.set_title(titles[i], fontsize=7)
            ax = axes[r * 2 + 1, c]
        else:
            ax = axes[r, c]
            ax.set_title(titles[i], fontsize=7)
        ax.axis("on")
        d = _show(ax, images[i])
        if d.ndim == 3:  # let the heatmap read on colour images too
            ax.images[-1].set_data(d.mean(axis=2))
            ax.images[-1].set_cmap("gray")
        mappable = ax.imshow(maps[i], cmap=HEATMAP_CMAP, alpha=alpha, vmin=0, vmax=1, interpolation="bilinear")
    if mappable is not None:
        cb = fig.colorbar(mappable, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01)
        cb.set_label("Grad-CAM (normalized per image)", fontsize=8)
        cb.ax.tick_params(labelsize=7)
    fig.suptitle(suptitle, fontsize=11)
    return fig


def confusion_figure(cm: np.ndarray, classes: list[str], title: str = "Confusion matrix"):
    """Counts heatmap, rows = true class, columns = predicted; colour = row-normalized fraction."""
    cm = np.asarray(cm)
    k = len(classes)
    rows = cm.sum(axis=1, keepdims=True)
    frac = cm / np.maximum(rows, 1)
    size = max(5.0, 0.55 * k + 2)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(frac, cmap=CONFUSION_CMAP, vmin=0, vmax=1)
    if k <= 30:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7 if k <= 12 else 5,
                            color="white" if frac[i, j] > 0.5 else "black")
    ticks = np.arange(k)
    fontsize = 8 if k <= 12 else 5
    ax.set_xticks(ticks, [str(c) for c in classes], rotation=45, ha="right", fontsize=fontsize)
    ax.set_yticks(ticks, [str(c) for c in classes], fontsize=fontsize)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cb.set_label("fraction of the true class")
    fig.tight_layout()
    return fig


def image_grid(images: np.ndarray, titles: list[str] | None = None, ncols: int = 8, suptitle: str = "",
               cell: float = 1.5):
    """A plain grid of images with optional small titles."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols, (cell + 0.35) * nrows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        ax.axis("on")
        _show(ax, images[i])
        if titles:
            ax.set_title(titles[i], fontsize=7)
    fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    return fig


def rows_figure(rows: list[np.ndarray], row_labels: list[str], col_titles: list[str] | None = None,
                suptitle: str = "", cell: float = 1.2):
    """Rows of images of equal length (originals vs reconstructions, interpolation strips)."""
    nrows = len(rows)
    ncols = max(len(r) for r in rows)
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols + 1.0, cell * nrows + 0.8), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(ncols):
            ax = axes[r, c]
            if c < len(row):
                _show(ax, row[c])
                for s in ax.spines.values():
                    s.set_visible(False)
            else:
                ax.axis("off")
            if r == 0 and col_titles and c < len(col_titles):
                ax.set_title(col_titles[c], fontsize=7)
        axes[r, 0].set_ylabel(row_labels[r], fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    return fig


# --- studies: variants of one experiment side by side (analyze compare, analyze snapshots) ----------------

def weights_figure(rows: list[tuple[str, np.ndarray]], col_titles: list[str] | None = None, title: str = "",
                   cell: float = 1.15):
    """Each row's units as images: [units, H, W] on a diverging colormap symmetric about 0 (one range and
    colour bar per row), or [units, H, W, 3] kernels as RGB with 0.5 grey = 0."""
    ncols = max(len(w) for _, w in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(cell * ncols + 1.8, cell * len(rows) + 0.9), squeeze=False,
                             layout="constrained")
    for r, (label, w) in enumerate(rows):
        vmax = float(np.abs(w).max()) or 1.0  # symmetric: white is exactly 0 (all-zero rows stay white)
        im = None
        for c in range(ncols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(w):
                ax.axis("off")
                continue
            if w.ndim == 4:
                ax.imshow(np.clip(0.5 + w[c] / (2 * vmax), 0, 1), interpolation="nearest")
            else:
                im = ax.imshow(w[c], cmap=WEIGHTS_CMAP, vmin=-vmax, vmax=vmax, interpolation="nearest")
            if r == 0 and col_titles and c < len(col_titles):
                ax.set_title(col_titles[c], fontsize=7)
        axes[r, 0].set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
        if im is not None:
            cb = fig.colorbar(im, ax=axes[r, :].tolist(), fraction=0.02, pad=0.01, shrink=0.9)
            cb.ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=11)
    return fig


def feature_maps_figure(images: np.ndarray, maps: list[tuple[str, np.ndarray]], image_titles: list[str],
                        title: str = "", cell: float = 0.9):
    """Feature maps of the same images across snapshots of one run.

    ``images``: [N, C, H, W] inputs (top row). ``maps``: (row label, [N, K, h, w]) per snapshot; columns are
    image 1's K channels, a gap, image 2's, ... Each column (one image, one channel) shares its colour
    range down the rows, so a map that grows or fades over training reads as such.
    """
    n, k = len(images), max(m.shape[1] for _, m in maps)
    ncols = n * (k + 1) - 1  # one narrow spacer column between images
    widths = ([1.0] * k + [0.3]) * n
    fig, axes = plt.subplots(len(maps) + 1, ncols, figsize=(cell * (n * k + 0.3 * (n - 1)) + 1.6,
                                                           cell * (len(maps) + 1) + 0.9),
                             squeeze=False, gridspec_kw={"width_ratios": widths[:ncols], "wspace": 0.06, "hspace": 0.1})
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        col0 = i * (k + 1)
        ax = axes[0, col0]
        ax.axis("on")
        _show(ax, images[i])
        ax.set_title(image_titles[i], fontsize=7, loc="left")
        for c in range(k):
            stack = [m[i, c] for _, m in maps if c < m.shape[1]]
            finite = np.concatenate([s[np.isfinite(s)].ravel() for s in stack])
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            for r, (_, m) in enumerate(maps, start=1):
                if c < m.shape[1]:
                    ax = axes[r, col0 + c]
                    ax.axis("on")
                    ax.imshow(m[i, c], cmap=FEATURES_CMAP, vmin=lo, vmax=hi if hi > lo else lo + 1e-9,
                              interpolation="nearest")
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if r == 1:
                        ax.set_title(f"ch {c}", fontsize=6)
    for r, (label, _) in enumerate(maps, start=1):
        axes[r, 0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    axes[0, 0].set_ylabel("input", fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=11)
    return fig
