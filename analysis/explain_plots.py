"""Figures of ``analyze explain``: the mean deletion / insertion curves, and the image x method grid.

    curves_figure(res["curves"], "resnet")       # two panels, one line per method and baseline
    grid_figure(images01, {"ig": maps}, right, predicted_names, "resnet")
"""
from __future__ import annotations

import numpy as np

from glassbox.plots import plt


def curves_figure(curves: dict, model: str):
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, kind in zip(axes, ("deletion", "insertion"), strict=True):
        for name, c in curves.items():
            baseline = name in ("random", "centre")
            style = {"linestyle": "--", "color": "grey" if name == "random" else "black"} if baseline else {}
            ax.plot(c["fractions"], c[kind], label=name, **style)
        ax.set_xlabel("fraction of pixels " + ("removed" if kind == "deletion" else "inserted"))
        ax.set_ylabel("probability of the explained class")
        ax.set_title(f"{model}: {kind} ({'lower' if kind == 'deletion' else 'higher'} area is better)")
        ax.set_ylim(0, 1.02)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def _norm(m: np.ndarray) -> np.ndarray:
    m = m - m.min()
    return m / m.max() if m.max() > 0 else m


def grid_figure(images: np.ndarray, maps: dict[str, np.ndarray], right: np.ndarray, predicted: list[str],
                model: str):
    """Rows: images (correct predictions first, then wrong ones); columns: the image, then each
    method's map (min-max normalised per image, for display only) over it."""
    n, cols = len(images), 1 + len(maps)
    fig, axes = plt.subplots(max(n, 1), cols, figsize=(1.6 * cols, 1.6 * max(n, 1)), squeeze=False)
    for i in range(n):
        img = images[i].transpose(1, 2, 0)
        gray = img[..., 0] if img.shape[-1] == 1 else img.mean(-1)
        axes[i, 0].imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        axes[i, 0].set_ylabel(f"{'right' if right[i] else 'WRONG'}\n{predicted[i]}", fontsize=7)
        for j, (name, m) in enumerate(maps.items(), start=1):
            axes[i, j].imshow(gray, cmap="gray", vmin=0, vmax=1)
            axes[i, j].imshow(_norm(m[i]), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            if i == 0:
                axes[i, j].set_title(name, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{model}: explanations of the predicted class")
    fig.tight_layout()
    return fig
