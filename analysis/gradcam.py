"""``analyze gradcam``: Grad-CAM heatmaps over images, and the fixed-class sensitivity figure.

    analyze gradcam --model lenet --target predicted        # or: true, a class name, a class index
    analyze gradcam --model lenet --sensitivity Sneaker     # one image per class, the map of one class

Maps come from the server un-normalised (comparable across images); each is min-max normalised
here for display only. The JSON keeps the raw per-image maximum and mean.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from glassbox.data import class_balanced_sample

from . import metrics, plots
from .common import batched, model_input, unit_images, write_json
from .errors import AnalysisError, BadOption


def resolve_class(value: str, classes: list[str]) -> int:
    if value.isdigit() and int(value) < len(classes):
        return int(value)
    lowered = [c.lower() for c in classes]
    if value.lower() in lowered:
        return lowered.index(value.lower())
    raise BadOption(f"{value!r} is not a class; classes: {', '.join(classes)} "
                    f"(or an index 0..{len(classes) - 1})")


def slug(text: str) -> str:
    """A class name as a file-name part: 'T-shirt/top' -> 't-shirt_top'."""
    return re.sub(r"[^a-z0-9.-]+", "_", text.lower()).strip("_") or "class"


def run(client, man: dict, ds, target: str, per_class: int, out: Path, sensitivity: str | None = None, seed: int = 0,
        progress: bool = True) -> dict:
    model, classes = man["name"], man["labels"]
    if not man["graphs"].get("gradcam"):
        raise AnalysisError(f"model {model!r} has no Grad-CAM graph (no spatial layer, e.g. an MLP or RNN)")
    result = {"model": model}
    sample = class_balanced_sample(ds, per_class, seed=seed)
    x = model_input(man, sample.images)
    if target == "predicted":
        targets = None
    elif target == "true":
        targets = sample.labels
    else:
        targets = np.full(len(sample), resolve_class(target, classes))
    res = batched(client.gradcam, model, x, per_image=targets, chunk=64, desc=f"{model} Grad-CAM", progress=progress)
    pred = res.logits.argmax(1)
    titles = [f"map: {classes[t][:11]}\ntrue: {classes[y][:11]}\npred: {classes[p][:11]}"
              for t, y, p in zip(res.targets, sample.labels, pred, strict=True)]
    grid_png = f"gradcam_{slug(target)}.png"
    plots.save(plots.overlay_grid(unit_images(man, sample.images), metrics.normalize_maps(res.cams), titles,
                                  suptitle=f"{model}: Grad-CAM at '{man['cam_layer']}', target = {target} "
                                           f"(top: image, bottom: map normalized per image)"),
               out / grid_png)
    result["grid"] = {"figure": grid_png, "target": target, "images": int(len(sample)), "targets": res.targets.tolist(),
                      "true": sample.labels.tolist(), "predicted": pred.tolist(),
                      "cam_max": res.cams.reshape(len(x), -1).max(1).tolist(),
                      "cam_mean": res.cams.reshape(len(x), -1).mean(1).tolist()}
    if sensitivity is not None:
        k = resolve_class(sensitivity, classes)
        one = class_balanced_sample(ds, 1, seed=seed)
        one = one.subset(np.argsort(one.labels, kind="stable"))  # columns in class order
        s = batched(client.gradcam, model, model_input(man, one.images), per_image=np.full(len(one), k), chunk=64,
                    desc=f"{model} sensitivity", progress=progress)
        plots.save(plots.overlay_grid(unit_images(man, one.images), metrics.normalize_maps(s.cams),
                                      [f"a {classes[y][:10]}" for y in one.labels], ncols=len(one),
                                      suptitle=f"{model}: which parts of each class look like '{classes[k]}'"),
                   out / f"gradcam_sensitivity_{k}.png")
        result["sensitivity"] = {"figure": f"gradcam_sensitivity_{k}.png", "class": classes[k], "index": k,
                                 "images_true": one.labels.tolist(),
                                 "cam_max": s.cams.reshape(len(one), -1).max(1).tolist(),
                                 "prob_of_class": _softmax(s.logits)[:, k].tolist()}
    write_json(out / "gradcam.json", result)
    return result


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)
