"""Loss and accuracy curves of a run, drawn beside its checkpoint as ``curves.png``."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: training runs headless
import matplotlib.pyplot as plt  # noqa: E402

from .checkpoint import atomic_write  # noqa: E402


def plot_history(history: list[dict], path: str | Path, title: str = "") -> None:
    epochs = [h["epoch"] for h in history]
    panels = [("loss", "loss")] + ([("acc", "accuracy")] if "val_acc" in history[0] else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        for split, style in (("train", "-o"), ("val", "-s")):
            ax.plot(epochs, [h[f"{split}_{key}"] for h in history], style, ms=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
