"""A study's training curves, every variant overlaid (``analyze compare``; figures in analysis/plots.py).

    .venv/bin/python -c "from analysis import curves, plots; h = [{'epoch': e, 'train_loss': 1 / e, \
        'val_loss': 1.2 / e} for e in range(1, 30)]; plots.save(curves.compare_curves_figure({'a': h}), '/tmp/c.png')"
"""
from __future__ import annotations

import math

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from .plots import class_colors, plt  # pyplot as plots set it up: the Agg backend, no display

CURVE_KINDS = {"loss": "loss", "acc": "accuracy", "recon": "reconstruction loss", "kl": "KL divergence"}
SPLIT_STYLES = {"train": "-", "val": "--", "test": ":", "label": "-."}
SPLIT_NAMES = {"train": "train", "val": "val", "test": "test (curves only)", "label": "train, label loss"}
LOG_SPAN = 100.0               # a loss axis spanning more than two decades is drawn log-scaled


def _num(v) -> float:
    """A history value as a float; null (a diverged run's NaN) and non-numbers -> NaN (a gap in the line)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def curve_series(history: list[dict], kind: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """split -> (epochs, values) of the ``kind`` curves a history records ("label": ``train_label_loss``)."""
    epochs = np.array([h.get("epoch", i + 1) for i, h in enumerate(history)], float)
    keys = {split: f"{split}_{kind}" for split in ("train", "val", "test")}
    if kind == "loss":
        keys["label"] = "train_label_loss"  # a distilled student's loss against the labels
    series = {}
    for split, key in keys.items():
        ys = np.array([_num(h.get(key)) for h in history], float)
        if np.isfinite(ys).any():
            series[split] = (epochs, ys)
    return series


def curve_kinds(histories: list[list[dict]]) -> list[str]:
    """The kinds of curves any history records, loss first (a VAE: loss, recon, kl; no accuracy)."""
    return [k for k in CURVE_KINDS if k == "loss" or any(curve_series(h, k) for h in histories)]


def _draw_window(ax, histories: dict[str, list[dict]], colors, kind: str, lo: float, hi: float) -> None:
    """Every variant's ``kind`` curves between epochs lo and hi: one colour per variant, one style per split."""
    values = []
    for (name, hist), color in zip(histories.items(), colors, strict=True):
        for split, (x, y) in curve_series(hist, kind).items():
            m = (x >= lo) & (x <= hi)
            if m.any():
                ax.plot(x[m], y[m], SPLIT_STYLES[split], color=color, lw=1.3, marker="o", ms=2,
                        label=f"{name} {split}")
                values.append(y[m])
    finite = np.concatenate(values) if values else np.array([])
    finite = finite[np.isfinite(finite)]
    if kind != "acc" and finite.size and finite.min() > 0 and finite.max() / finite.min() > LOG_SPAN:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "epoch 2.5"
    ax.grid(alpha=0.3, which="both" if ax.get_yscale() == "log" else "major")
    ax.tick_params(labelsize=8)


def compare_curves_figure(histories: dict[str, list[dict]], title: str = "", subtitle: str = "", zoom: int = 10,
                          labels: dict[str, str] | None = None):
    """Loss (and accuracy, or a VAE's recon/KL) of every variant overlaid, one row per kind of curve.

    Columns: all epochs, then the first and last ``zoom`` epochs when a run is longer than that.
    Colour = variant (``labels`` may rename them in the legend); train solid, val dashed, test dotted,
    a distilled run's label loss dash-dotted. Lines carry the label "<variant> <split>".
    """
    kinds = curve_kinds(list(histories.values()))
    epochs = [h.get("epoch", i + 1) for hist in histories.values() for i, h in enumerate(hist)]
    first, last = (min(epochs), max(epochs)) if epochs else (1, 1)
    windows = [("all epochs", -math.inf, math.inf)]
    if last - first + 1 > zoom:
        windows += [(f"first {zoom} epochs", -math.inf, first + zoom - 1),
                    (f"last {zoom} epochs", last - zoom + 1, math.inf)]
    colors = class_colors(len(histories))
    fig, axes = plt.subplots(len(kinds), len(windows), figsize=(5.2 * len(windows), 3.4 * len(kinds) + 0.6),
                             squeeze=False)
    for r, kind in enumerate(kinds):
        for c, (window, lo, hi) in enumerate(windows):
            ax = axes[r, c]
            _draw_window(ax, histories, colors, kind, lo, hi)
            ax.set_title(f"{CURVE_KINDS[kind]}, {window}", fontsize=10)
            if c == 0:
                ax.set_ylabel(CURVE_KINDS[kind] + (" (log scale)" if ax.get_yscale() == "log" else ""))
            if r == len(kinds) - 1:
                ax.set_xlabel("epoch")
    splits = [s for s in SPLIT_STYLES if any(s in curve_series(h, k) for h in histories.values() for k in kinds)]
    handles = [Line2D([], [], color=colors[i], lw=2.5, label=(labels or {}).get(n, n)) for i, n in enumerate(histories)]
    handles += [Line2D([], [], color="0.3", ls=SPLIT_STYLES[s], lw=1.5, label=SPLIT_NAMES[s]) for s in splits]
    fig.suptitle("\n".join(t for t in (title, subtitle) if t), fontsize=12)
    fig.tight_layout()
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=9)
    return fig
