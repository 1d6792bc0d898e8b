"""Write a classifier's explanation graphs and gate each one twice before anything is published.

    graphs, section, rows = export_explanations(model, tmp, x, "lenet", ["gradcam", "ig"], record)

Per method, on the first ``images`` parity images (half with their predicted class as the target,
half with another class), at each of ``batch_sizes``:

1. onnxruntime against the same function run eagerly in torch: the logits elementwise with the
   classifier's tolerances (``parity.py``), the map normalised with ``references.TOLERANCES`` (an
   input gradient's ReLU masks may flip, see there) and its scale, each image's peak |map| within
   ``max_abs`` relatively; the record goes to ``record[method]`` like every graph's.
2. the normalised map against the reference library (``references.py``), within the tolerance the
   manifest's ``explain.reference`` states with the measured errors.

Grad-CAM's graph is ``gradcam.onnx`` (written and gated by the exporter); here it only meets
pytorch-grad-cam. Failed rows are returned, so the exporter raises one ParityError for everything.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn

from . import parity, references
from .explain import (
    CAM_METHODS,
    IG_STEPS,
    METHODS,
    SMOOTHGRAD_NOISE,
    SMOOTHGRAD_SAMPLES,
    build_explain_graph,
    method_fn,
)
from .graphs import export_onnx

EXPLAIN_IMAGES = 64
EXPLAIN_BATCHES = (1, 64)
NOISE_SEED = 0
RANDOMIZED_IMAGES = 64  # parity images of the randomised copy (its near-tied random logits make argmax
# agreement on many images a matter of luck; the maps are what the copy is for)


class ExplainConfigError(ValueError):
    """A method list the model cannot carry (unknown name, or a CAM method without a cam_layer)."""


def check_methods(methods, cam_layer: str | None) -> list[str]:
    """The requested methods in the canonical order; ExplainConfigError for one the model cannot carry."""
    methods = list(methods)
    if unknown := [m for m in methods if m not in METHODS]:
        raise ExplainConfigError(f"unknown explanation method {', '.join(unknown)}; methods: {', '.join(METHODS)}")
    if cam_layer is None:  # no spatial layer: Grad-CAM's absence is the exporter's rule already
        methods = [m for m in methods if m not in CAM_METHODS]
    return [m for m in METHODS if m in methods]


def _t(name, shape, dtype="float32"):
    return {"name": name, "shape": list(shape), "dtype": dtype}


def _targets(logits: torch.Tensor) -> torch.Tensor:
    target = logits.argmax(1)
    target[1::2] = (target[1::2] + 1) % logits.shape[1]
    return target


def _export_graph(method: str, model, xt: torch.Tensor, path: Path, samples: int, steps: int) -> None:
    graph, args = build_explain_graph(method, model, xt[:2], steps=steps, samples=samples)
    names = ["input", "target", "noise"][:len(args)]
    export_onnx(graph, args, path, names, ["map", "logits"])
    onnx.checker.check_model(str(path), full_check=True)


def _eager(method: str, model, feeds: dict[str, np.ndarray], steps: int) -> dict[str, np.ndarray]:
    args = [torch.from_numpy(feeds[k]) for k in ("input", "target", "noise") if k in feeds]
    maps, logits = method_fn(method, model, steps=steps)(*args)
    return {"map": maps.detach().numpy(), "logits": logits.detach().numpy()}


def _map_record(method: str, got: list[np.ndarray], want: np.ndarray) -> dict:
    """A map against eager torch at each batch size: normalised (references.compare) and in scale
    (``max_rel``: the worst relative difference of an image's peak |map|)."""
    rec = references.worst_of([references.compare(method, g, want) for g in got])
    peak = np.abs(want).reshape(len(want), -1).max(1, initial=0.0)
    rel = [np.abs(np.abs(g).reshape(len(g), -1).max(1, initial=0.0) - peak) / np.maximum(peak, 1e-30) for g in got
           if g.shape == want.shape]
    rec["max_rel"] = float(max((r.max(initial=0.0) for r in rel), default=float("inf")))
    if rec["max_rel"] > rec["tolerance"]["max_abs"]:
        rec["ok"], rec["why"] = False, f"peak |map| off by {rec['max_rel']:.3g} of itself"
    elif not rec["ok"]:
        rec["why"] = references.failures({method: rec})[0][4]
    return rec


def export_explanations(model, tmp: Path, x: np.ndarray, name: str, methods, record: dict, *,
                        images: int = EXPLAIN_IMAGES, batch_sizes=EXPLAIN_BATCHES, steps: int = IG_STEPS,
                        samples: int = SMOOTHGRAD_SAMPLES, std: float = 1.0):
    """Write ``<method>.onnx`` for each of ``methods`` but Grad-CAM into ``tmp``, gate them all.

    Returns (manifest graph entries, the manifest's ``explain`` section, failed rows). ``std`` is
    SmoothGrad's noise std in input units (the exporter gives ``explain.noise_std`` of its range)."""
    model.eval()
    xe = x[:images]
    xt = torch.from_numpy(xe)
    with torch.no_grad():
        target = _targets(model.forward_once(xt)).numpy()
    graphs, reference = {}, {}
    for method in methods:
        path = tmp / ("gradcam.onnx" if method == "gradcam" else f"{method}.onnx")
        feeds = {"input": xe, "target": target}
        if method == "smoothgrad":
            feeds["noise"] = references.smoothgrad_noise(xe.shape, samples, std, NOISE_SEED)
        if method != "gradcam":
            _export_graph(method, model, xt, path, samples, steps)
            outs = list(feeds)
            graphs[method] = {"file": path.name, "triton_name": f"{name}.{method}",
                              "inputs": [_t(k, [-1, *feeds[k].shape[1:]], str(feeds[k].dtype)) for k in outs],
                              "outputs": [_t("map", [-1, *xe.shape[2:]]), _t("logits", [-1, model.num_classes])]}
        sess = parity.session(path)
        runs = [parity.run_batched(sess, feeds, b) for b in batch_sizes]
        if method != "gradcam":
            eager = _eager(method, model, feeds, steps)
            record[method] = parity.record_of(runs, {"logits": eager["logits"]}, "logits", batch_sizes)
            record[method]["outputs"]["map"] = _map_record(method, [r["map"] for r in runs], eager["map"])
        want = references.reference_maps(method, model, xt, torch.from_numpy(target), steps=steps, samples=samples,
                                         std=std, seed=NOISE_SEED)
        out = "cam" if method == "gradcam" else "map"
        reference[method] = {**references.worst_of([references.compare(method, r[out], want) for r in runs]),
                             "batch_sizes": list(batch_sizes), "library": LIBRARIES[method]}
    section = {"methods": list(methods), "graphs": {m: m for m in methods},
               "ig": {"steps": steps, "rule": "gausslegendre", "baseline": "zero"},
               "smoothgrad": {"samples": samples, "stdev": std, "noise_share": SMOOTHGRAD_NOISE},
               "reference": reference}
    return graphs, section, references.failures(reference)


LIBRARIES = {"gradcam": "pytorch-grad-cam GradCAM", "gradcampp": "pytorch-grad-cam GradCAMPlusPlus",
             "saliency": "captum Saliency (abs)", "ig": "captum IntegratedGradients (gausslegendre)",
             "smoothgrad": "captum NoiseTunnel(Saliency) smoothgrad"}


def randomized_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with every stage re-initialised, from the top (logits) down: the end of
    Adebayo et al.'s cascading model randomisation, where a faithful map no longer resembles the
    trained model's. Each module's own ``reset_parameters`` draws the weights, seeded."""
    rnd = copy.deepcopy(model).eval()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for stage in reversed(list(rnd.stages.values())):
            for m in stage.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
                if hasattr(m, "reset_running_stats"):
                    m.reset_running_stats()
    return rnd
