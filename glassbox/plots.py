"""The figures more than one part draws: saving a figure, and a run's training curves.

    from glassbox.plots import curves_figure, save
    save(curves_figure(history, "lenet"), "runs/quick/lenet/curves.png")

matplotlib with the Agg backend (files only: training and the server run headless).
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .io import atomic_write  # noqa: E402

DPI = 130


def save(fig, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``fig`` as PNG (white background, tight bounding box), atomically, and close it."""
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight",
                                                          facecolor="white"))
    finally:
        plt.close(fig)


def finite(v) -> bool:
    """A real number that is not NaN or infinite (history values may be null or NaN when a run diverged)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def curves_figure(history: list[dict], title: str = "Training curves"):
    """Loss and accuracy per epoch: train, val and, when recorded, test (a VAE has no accuracy)."""
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    kinds = ["loss"] + (["acc"] if any(finite(h.get("val_acc", h.get("train_acc"))) for h in history) else [])
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 3.8), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        for split, style in (("train", "-o"), ("val", "-s"), ("test", "-^")):
            key = f"{split}_{kind}"
            pts = [(e, h[key]) for e, h in zip(epochs, history, strict=True) if finite(h.get(key))]
            if pts:
                label = split + (" (curves only)" if split == "test" else "")
                ax.plot(*zip(*pts, strict=True), style, ms=3, label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "epoch 2.5"
        ax.set_ylabel("accuracy" if kind == "acc" else "loss")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig
