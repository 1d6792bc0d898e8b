"""``analyze compare``: the variants of one study (a ``train-all`` output folder) side by side.

    analyze compare runs/weight-decay                       # -> runs/weight-decay/compare/
    analyze compare runs/distill --zoom 5 --metric loss --out reports/distill

Reads only what training wrote: ``study.json`` (optional), ``summary.json`` and each variant's
``history.json``, ``metrics.json``, ``config.json`` and ``first_layer.npy``. No server, no torch.
Writes compare_curves.png, first_layer_weights.png (when variants saved a drawable first layer),
compare.json (rows + study info) and compare.md, and returns the table for stdout.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from tabulate import tabulate

from glassbox.data import DatasetError, dataset_info, longtail_spec
from glassbox.io import atomic_write, write_json
from glassbox.plots import finite

from . import curves, plots
from .errors import AnalysisError

DEFAULT_ZOOM = 10
MAX_UNITS = 16      # first-layer units drawn per variant: more and each image gets too small to read
MISSING = "—"       # a value the run did not record (or NaN: a diverged run)
EPOCH_KEYS = ("best_epoch", "epochs", "diverged_epoch")
VALUE_KEYS = ("final_val", "best_val", "test")
ACC_KEYS = ("head_acc", "tail_acc")  # long-tailed runs: test accuracy on the head and on the tail classes
HEAD_TAIL_NOTE = ("Head / tail test acc: accuracy on the test images of the classes kept whole / of the classes "
                  "the long-tailed training set reduced (dataset.longtail), on the official balanced test split.")
SELECTION_NOTE = "model selection on validation; test scored every epoch for the curves only"
TEST_NOTE = ("scored once with the checkpoint of the best validation epoch (model selection is on validation; "
             "test curves, where drawn, are for reference only)")


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise AnalysisError(f"{path}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise AnalysisError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None


def _optional_json(path: Path) -> dict:
    """A run's metrics.json / config.json, or {} when the run did not write it (a crashed run)."""
    data = read_json(path) if path.is_file() else {}
    return data if isinstance(data, dict) else {}


def _first(*values):
    """The first finite number among ``values`` (metrics.json, then summary.json, then a fallback)."""
    return next((v for v in values if finite(v)), None)


def load_study(runs_dir) -> tuple[dict, list[dict]]:
    """(study info, variants in the study's order), each variant {name, dir, history, metrics, config, summary}.

    Without study.json every subfolder holding a history.json is a variant, in sorted order.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise AnalysisError(f"{runs_dir}: " + ("not a folder" if runs_dir.exists() else "no such folder"))
    info = read_json(runs_dir / "study.json") if (runs_dir / "study.json").is_file() else {}
    if not isinstance(info, dict):
        raise AnalysisError(f"{runs_dir / 'study.json'}: not a JSON object")
    names = info.get("variants") or sorted(p.name for p in runs_dir.iterdir() if (p / "history.json").is_file())
    zoom = info.get("zoom", DEFAULT_ZOOM)
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)
            and isinstance(zoom, int) and zoom >= 1 and isinstance(info.get("measures", []), list)):
        raise AnalysisError(f"{runs_dir / 'study.json'}: want variants a list of folder names, measures a "
                            "list of metric keys and zoom a positive integer")
    if not names:
        raise AnalysisError(f"{runs_dir}: no runs inside (no study.json and no subfolder with a history.json)")
    if missing := [n for n in names if not (runs_dir / n / "history.json").is_file()]:
        raise AnalysisError(f"{runs_dir / 'study.json'} lists variants without a history.json: "
                            f"{', '.join(missing)}")
    summary = _optional_json(runs_dir / "summary.json")
    by_run = {r.get("run"): r for r in summary.get("runs") or [] if isinstance(r, dict)}
    variants = []
    for name in names:
        d = runs_dir / name
        history = read_json(d / "history.json")
        # An empty history is a run without epochs (the LDA study): it has a table row, no curves.
        if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
            raise AnalysisError(f"{d / 'history.json'}: want a list of per-epoch objects")
        variants.append({"name": name, "dir": d, "history": history, "metrics": _optional_json(d / "metrics.json"),
                         "config": _optional_json(d / "config.json"), "summary": by_run.get(name, {})})
    recorded_test = any(finite(h.get("test_loss")) for v in variants for h in v["history"])
    study = {"name": info.get("name") or runs_dir.resolve().name, "title": info.get("title") or "",
             "report": info.get("report"), "reported": info.get("reported"), "notes": info.get("notes"),
             "measures": list(info.get("measures") or []), "zoom": zoom,
             "test_curves": bool(info.get("test_curves", recorded_test)), "variants": list(names),
             "profile": summary.get("profile"), "total_seconds": summary.get("total_seconds"),
             "runs_dir": str(runs_dir), "has_study_json": bool(info)}
    return study, variants


def diverged_epoch(history: list[dict]) -> int | None:
    """The first epoch whose train or val loss is null or infinite (NaN is written as null), else None."""
    for i, h in enumerate(history):
        if any(k in h and not finite(h[k]) for k in ("train_loss", "val_loss")):
            return h.get("epoch", i + 1)
    return None


def head_tail(metrics: dict, config: dict) -> dict:
    """A long-tailed run's head and tail test accuracy: as metrics.json records them, else the mean
    per-class accuracy over each group (the same on the balanced test split); {} for other runs."""
    if finite(metrics.get("head_acc")) or finite(metrics.get("tail_acc")):
        return {k: metrics.get(k) for k in ACC_KEYS}
    try:
        spec = longtail_spec((config.get("dataset") or {}).get("longtail"))
    except ValueError:
        return {}
    per_class = metrics.get("per_class_acc")
    if spec is None or not isinstance(per_class, list):
        return {}
    groups = {"tail_acc": [a for c, a in enumerate(per_class) if c in spec["classes"] and finite(a)],
              "head_acc": [a for c, a in enumerate(per_class) if c not in spec["classes"] and finite(a)]}
    return {k: sum(g) / len(g) if g else None for k, g in groups.items()}


def variant_row(v: dict, metric: str, measures: list[str]) -> dict:
    """One row of the table: final / best val ``metric``, best epoch, test (best-by-val checkpoint), time."""
    hist, m, s = v["history"], v["metrics"], v["summary"]
    key = f"val_{metric}"
    points = [(h.get("epoch", i + 1), h[key]) for i, h in enumerate(hist) if finite(h.get(key))]
    if m.get("val_metric") == key and finite(m.get("best_val")):
        best, best_epoch = m["best_val"], m.get("best_epoch")  # what selected the checkpoint that was tested
    elif points:
        best_epoch, best = (max if metric == "acc" else min)(points, key=lambda p: p[1])  # ties: the earliest
    else:
        best = best_epoch = None
    seconds = [h.get("seconds") for h in hist]
    return {"variant": v["name"], "model": (v["config"].get("model") or {}).get("name"),
            "final_val": _first(hist[-1].get(key)) if hist else None, "best_val": best, "best_epoch": best_epoch,
            "test": _first(m.get(f"test_{metric}"), s.get(f"test_{metric}")),
            "selected_on": m.get("val_metric") or s.get("val_metric"),
            "epochs": _first(m.get("epochs_run"), s.get("epochs"), len(hist)),
            "wall_seconds": _first(m.get("wall_seconds"), s.get("wall_seconds"),
                                   sum(seconds) if all(finite(x) for x in seconds) else None),
            "diverged_epoch": diverged_epoch(hist), **head_tail(m, v["config"]),
            **{k: m.get(k, s.get(k)) for k in measures}}


def columns(metric: str, measures: list[str], rows: list[dict]) -> list[tuple[str, str]]:
    """(row key, header) of the table, in order; a "diverged" column only when a run diverged."""
    cols = [("variant", "variant"), ("final_val", f"final val {metric}"), ("best_val", f"best val {metric}"),
            ("best_epoch", "best epoch"), ("test", f"test {metric} (best-val ckpt)"), ("epochs", "epochs"),
            ("wall_seconds", "wall s"), *[(k, k) for k in measures]]
    if any(finite(r.get(k)) for r in rows for k in ACC_KEYS):  # a long-tailed study
        cols[5:5] = [("head_acc", "head test acc"), ("tail_acc", "tail test acc")]
    if any(r["diverged_epoch"] is not None for r in rows):
        cols.append(("diverged_epoch", "diverged at epoch"))
    return cols


def cell(key: str, value, metric: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value) if not isinstance(value, (list, dict)) else f"[{len(value)} values]"
    if key == "wall_seconds":
        return f"{value:.1f}"
    if key in ACC_KEYS:
        return f"{value:.4f}"
    if key in EPOCH_KEYS or (key not in VALUE_KEYS and float(value).is_integer()):  # counts: 7840, not 7.84e+03
        return str(int(value))
    return f"{value:.4f}" if metric == "acc" and key in VALUE_KEYS else f"{value:.4g}"


def table_cells(result: dict) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells of a compare result (for stdout, markdown and the HTML report)."""
    cols = result["columns"]
    return ([h for _, h in cols],
            [[cell(k, row.get(k), result["metric"]) for k, _ in cols] for row in result["rows"]])


def _tabulate(result: dict, tablefmt: str) -> str:
    head, rows = table_cells(result)
    # Variant names read left-aligned, numbers right-aligned so their digits line up; the cells are
    # already formatted (cell()), so tabulate must not parse them back into numbers.
    return tabulate(rows, head, tablefmt=tablefmt, colalign=["left"] + ["right"] * (len(head) - 1),
                    disable_numparse=True)


def text_table(result: dict) -> str:
    return _tabulate(result, "simple")


def markdown(result: dict) -> str:
    s = result["study"]
    out = [f"# {s['title'] or s['name']}", ""]
    if s.get("report"):
        out += [f"Reproduces report {s['report']}" + (f": {s['reported']}" if s.get("reported") else "."), ""]
    if s.get("notes"):
        out += [s["notes"], ""]
    out.append(_tabulate(result, "pipe"))
    out += ["", f"Test {result['metric']}: {TEST_NOTE}.", ""]
    if any(k == "head_acc" for k, _ in result["columns"]):
        out += [HEAD_TAIL_NOTE, ""]
    out += [f"![{f}]({f})" for f in result["figures"]]
    return "\n".join(out) + "\n"


def layer_images(w: np.ndarray) -> tuple[np.ndarray | None, str]:
    """A first layer's weights as images ([units, H, W], or [units, k, k, 3] RGB kernels), or (None, why not)."""
    if w.ndim == 2:
        units, n = w.shape
        side = math.isqrt(n)
        if side * side != n:
            return None, f"first layer [{units}, {n}]: {n} inputs are not a square image"
        if units > MAX_UNITS:
            return None, f"first layer [{units}, {n}]: more than {MAX_UNITS} units to draw as images"
        return w.reshape(units, side, side), "linear"
    if w.ndim == 4:
        kernels = w[:MAX_UNITS]
        if w.shape[1] == 3:
            return np.transpose(kernels, (0, 2, 3, 1)), "conv"
        # One input channel per kernel image: grayscale nets have one; others show channel 0.
        return kernels[:, 0], "conv" if w.shape[1] == 1 else f"conv, input channel 0 of {w.shape[1]}"
    return None, f"first layer shape {list(w.shape)} is neither [out, in] nor [out, C, k, k]"


def _classes(config: dict) -> list[str]:
    ds = config.get("dataset") or {}
    if ds.get("classes"):
        return [str(c) for c in ds["classes"]]
    try:
        return [str(c) for c in dataset_info(ds.get("name", "")).get("classes") or []]
    except DatasetError:
        return []


def first_layer_figure(study: dict, variants: list[dict]):
    """(figure or None, notes): one row of weight images per variant that saved a drawable first_layer.npy."""
    rows, notes, col_titles = [], [], None
    for v in variants:
        path = v["dir"] / "first_layer.npy"
        if not path.is_file():
            continue
        try:
            w = np.load(path, allow_pickle=False).astype(np.float32)
        except ValueError as e:
            raise AnalysisError(f"{path}: not a numpy array file ({e})") from None
        images, kind = layer_images(w)
        if images is None:
            notes.append(f"{v['name']}: {kind}")
            continue
        rows.append((v["name"], images))
        if col_titles is None:
            classes = _classes(v["config"])
            # A linear first layer with one unit per class is the classifier itself (logistic
            # regression): its units are the classes, as in "the weights as ten 28x28 images".
            named = kind == "linear" and len(images) == len(classes)
            col_titles = classes if named else [f"{'unit' if kind == 'linear' else 'kernel'} {i}"
                                                for i in range(len(images))]
    if not rows:
        return None, notes
    title = (f"{study['title'] or study['name']}: first-layer weights, one image per unit "
             "(red > 0 > blue, range symmetric per row)")
    return plots.weights_figure(rows, col_titles, title), notes


def subtitle(study: dict, test_drawn: bool) -> str:
    parts = []
    if study.get("report"):
        parts.append(f"report {study['report']}" + (f": {study['reported']}" if study.get("reported") else ""))
    if test_drawn:  # the reader must not take the test curves for what selected the model
        parts.append(SELECTION_NOTE)
    return " | ".join(parts)


def run(runs_dir, out=None, zoom: int | None = None, metric: str | None = None) -> dict:
    """Draw and write everything for one study; return the compare.json content."""
    study, variants = load_study(runs_dir)
    out = Path(out) if out else Path(runs_dir) / "compare"
    zoom = zoom or study["zoom"]
    has_acc = any(finite(h.get("val_acc")) for v in variants for h in v["history"]) or \
        any(finite(v["metrics"].get("test_acc")) for v in variants)
    if metric == "acc" and not has_acc:
        raise AnalysisError(f"no variant of {runs_dir} records val_acc (a VAE study?); use --metric loss")
    metric = metric or ("acc" if has_acc else "loss")
    rows = [variant_row(v, metric, study["measures"]) for v in variants]
    histories = {v["name"]: v["history"] for v in variants}
    labels = {r["variant"]: r["variant"] + (f" (diverged, epoch {r['diverged_epoch']})" if r["diverged_epoch"]
                                            is not None else "") for r in rows}
    kinds = curves.curve_kinds(list(histories.values()))
    series = {name: [("train_label_loss" if split == "label" else f"{split}_{kind}")
                     for kind in kinds for split in curves.curve_series(h, kind)] for name, h in histories.items()}
    test_drawn = any(k.startswith("test_") for keys in series.values() for k in keys)
    figures = []
    if any(histories.values()):
        drawn = {k: h for k, h in histories.items() if h}
        plots.save(curves.compare_curves_figure(drawn, study["title"] or study["name"], subtitle(study, test_drawn),
                                                zoom, labels), out / "compare_curves.png")
        figures.append("compare_curves.png")
    fig, notes = first_layer_figure(study, variants)
    if fig is not None:
        plots.save(fig, out / "first_layer_weights.png")
        figures.append("first_layer_weights.png")
    result = {"study": {**study, "zoom": zoom}, "metric": metric, "columns": columns(metric, study["measures"], rows),
              "rows": rows, "curves": series, "figures": figures, "notes": notes, "out": str(out)}
    write_json(out / "compare.json", result)
    text = markdown(result)
    atomic_write(out / "compare.md", lambda tmp: Path(tmp).write_text(text))
    return result
