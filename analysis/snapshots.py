"""``analyze snapshots``: how one run's features (or a VAE's reconstructions) change over training.

    analyze snapshots runs/features/lenet --layer conv1 --images 4 --channels 8
    analyze snapshots runs/vae-snapshots/cvae              # a VAE: one reconstruction row per snapshot

Reads ``RUN_DIR/snapshots/index.json`` and runs each snapshot's exported ONNX graph with onnxruntime on
the CPU (no server, no torch) on the same few test images: the first N of a seeded class-balanced pick.
Writes snapshots_<layer>.png and .json (classifiers) or snapshots_reconstructions.png and .json (VAEs).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort

from glassbox.data import DatasetError, class_balanced_sample, load_dataset, preprocess
from glassbox.io import write_json
from glassbox.manifest import read_manifest, versions

from . import plots
from .compare import read_json
from .errors import AnalysisError, BadOption


def load_snapshots(run_dir) -> list[dict]:
    """The index entries in order, each with its exported version (the index's, else the newest): + {dir, manifest}."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AnalysisError(f"{run_dir}: " + ("not a folder" if run_dir.exists() else "no such folder"))
    index_path = run_dir / "snapshots" / "index.json"
    if not index_path.is_file():
        raise AnalysisError(f"{run_dir}: no snapshots ({index_path} is missing; train with snapshots on)")
    index = read_json(index_path)
    if not isinstance(index, list) or not index or not all(isinstance(e, dict) and e.get("model") for e in index):
        raise AnalysisError(f"{index_path}: want a non-empty list of {{tag, epoch, train_acc, model}}")
    snaps = []
    for entry in index:
        model_dir = run_dir / "snapshots" / "exported" / str(entry["model"])
        found = versions(model_dir)
        if not found:
            raise AnalysisError(f"snapshot {entry.get('tag')!r}: no exported version in {model_dir}")
        version = entry["version"] if entry.get("version") in found else found[-1]
        try:
            man = read_manifest(model_dir / str(version))
        except ValueError as e:
            raise AnalysisError(str(e)) from None
        snaps.append({**entry, "version": version, "dir": model_dir / str(version), "manifest": man})
    if len(tasks := {s["manifest"]["task"] for s in snaps}) > 1:
        raise AnalysisError(f"{index_path}: snapshots of different tasks ({', '.join(sorted(tasks))})")
    return snaps


def model_layers(snaps: list[dict]) -> list[str]:
    """The layers every snapshot's classifier graph outputs (the names --layer takes)."""
    names = [[layer["name"] for layer in s["manifest"]["layers"]] for s in snaps]
    return [n for n in names[0] if all(n in other for other in names[1:])]


def _session(snap: dict, graph: str) -> ort.InferenceSession:
    path = snap["dir"] / snap["manifest"]["graphs"][graph]["file"]
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's errors derive from Exception only
        raise AnalysisError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None


def pick_images(man: dict, n: int, seed: int, data_dir=None):
    """The first ``n`` of a seeded class-balanced pick of the test split: (uint8 images, labels, class names)."""
    try:
        ds = load_dataset(man["dataset"], split="test", data_dir=data_dir)
    except DatasetError as e:
        raise AnalysisError(str(e)) from None
    per_class = math.ceil(n / max(1, len(ds.classes)))  # enough per class that the pick has n images
    pick = class_balanced_sample(ds, per_class, seed=seed)
    return pick.images[:n], pick.labels[:n], list(ds.classes)


def _row_label(snap: dict) -> str:
    acc = snap.get("train_acc")
    acc_text = f"train acc {acc:.2f}" if isinstance(acc, (int, float)) else "train acc —"
    return f"{snap.get('tag', snap['model'])}\n{acc_text}"


def _as_maps(out: np.ndarray) -> np.ndarray:
    """A layer output as [N, C, h, w]: conv maps as they are, a vector laid out as one square image (NaN-padded)."""
    if out.ndim == 4:
        return out
    flat = out.reshape(len(out), -1)
    side = math.isqrt(flat.shape[1] - 1) + 1
    padded = np.full((len(out), side * side), np.nan, np.float32)
    padded[:, :flat.shape[1]] = flat
    return padded.reshape(len(out), 1, side, side)


def feature_maps(run_dir, snaps: list[dict], layer: str, out: Path, images: int, channels: int, seed: int,
                 data_dir=None) -> dict:
    valid = model_layers(snaps)
    if layer not in valid:
        raise BadOption(f"unknown layer {layer!r}; layers: {', '.join(valid)}", option="--layer")
    man = snaps[0]["manifest"]
    raw, labels, classes = pick_images(man, images, seed, data_dir)
    rows, stats = [], []
    for snap in snaps:
        x = preprocess(raw, snap["manifest"]["preprocessing"])
        logits, act = _session(snap, "classifier").run(["logits", layer], {"input": x})
        maps = _as_maps(act)
        rows.append((_row_label(snap), maps[:, :channels]))
        stats.append({"tag": snap.get("tag"), "epoch": snap.get("epoch"), "train_acc": snap.get("train_acc"),
                      "model": snap["model"], "version": snap["version"], "shape": list(act.shape[1:]),
                      "mean_activation": float(np.nanmean(act)), "active_fraction": float(np.mean(act > 0)),
                      "predicted": [classes[int(i)] if int(i) < len(classes) else str(int(i))
                                    for i in logits.argmax(1)]})
    shape = stats[0]["shape"]
    shown = min(channels, rows[0][1].shape[1])
    what = f"first {shown} of {shape[0]} channels" if len(shape) == 3 else f"{int(np.prod(shape))} units as an image"
    title = (f"{Path(run_dir).resolve().name}: '{layer}' over training, {len(snaps)} snapshots ({what}; "
             "colour range shared down each column)")
    titles = [f"{classes[int(y)] if int(y) < len(classes) else int(y)}" for y in labels]
    plots.save(plots.feature_maps_figure(raw, rows, titles, title), out / f"snapshots_{layer}.png")
    result = {"run": str(run_dir), "task": "classifier", "layer": layer, "seed": seed, "channels_shown": shown,
              "images": {"split": "test", "labels": [int(y) for y in labels], "classes": titles},
              "snapshots": stats, "figures": [f"snapshots_{layer}.png"]}
    write_json(out / f"snapshots_{layer}.json", result)
    return result


def reconstructions(run_dir, snaps: list[dict], out: Path, images: int, seed: int, data_dir=None) -> dict:
    """Originals, then each snapshot's reconstruction (encoder mean -> decoder) of them."""
    raw, labels, classes = pick_images(snaps[0]["manifest"], images, seed, data_dir)
    rows, stats = [], []
    for snap in snaps:
        x = preprocess(raw, snap["manifest"]["preprocessing"])
        mean, _ = _session(snap, "encoder").run(["mean", "logvar"], {"input": x})
        (image,) = _session(snap, "decoder").run(["image"], {"latent": mean})
        rows.append(image)
        stats.append({"tag": snap.get("tag"), "epoch": snap.get("epoch"), "model": snap["model"],
                      "version": snap["version"], "mse": float(np.mean((image - x) ** 2))})
    labels_text = ["original"] + [f"{s['tag']}\nMSE {s['mse']:.4f}" for s in stats]
    fig = plots.rows_figure([raw, *rows], labels_text, [classes[int(y)] if int(y) < len(classes) else str(int(y))
                                                        for y in labels],
                            suptitle=f"{Path(run_dir).resolve().name}: reconstructions over training "
                                     f"({len(snaps)} snapshots)")
    plots.save(fig, out / "snapshots_reconstructions.png")
    result = {"run": str(run_dir), "task": "vae", "seed": seed, "images": {"split": "test",
              "labels": [int(y) for y in labels]}, "snapshots": stats, "figures": ["snapshots_reconstructions.png"]}
    write_json(out / "snapshots_reconstructions.json", result)
    return result


def run(run_dir, layer: str | None, out=None, images: int = 4, channels: int = 8, seed: int = 0,
        data_dir=None) -> dict:
    snaps = load_snapshots(run_dir)
    out = Path(out) if out else Path(run_dir)
    if snaps[0]["manifest"]["task"] == "vae":
        return reconstructions(run_dir, snaps, out, images, seed, data_dir)
    if not layer:
        raise BadOption(f"a classifier's snapshots need a layer; layers: {', '.join(model_layers(snaps))}",
                        option="--layer")
    return feature_maps(run_dir, snaps, layer, out, images, channels, seed, data_dir)
