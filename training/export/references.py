"""The reference libraries' maps, and the export gate of each explanation graph against them.

    from training.export.references import reference_maps, compare
    want = reference_maps("ig", model, x, target, steps=32)     # Captum, in torch
    record = compare("ig", onnx_maps, want)                      # normalised maps, against TOLERANCES["ig"]

Grad-CAM and Grad-CAM++ come from pytorch-grad-cam (``GradCAM``, ``GradCAMPlusPlus`` at the model's
``cam_layer``), Saliency, Integrated Gradients and SmoothGrad from Captum (``Saliency`` abs=True,
``IntegratedGradients`` method="gausslegendre" from a zero baseline, ``NoiseTunnel`` smoothgrad over
Saliency). Every library explains ``model.forward_once`` (the image's own pass), as the graphs do.
Captum's per-channel attributions are summed over channels, as the graphs do.

The gate compares min-max normalised maps (x - min) / (max - min) per image (``normalise``), so a
method's scale convention does not matter and the tolerance is in units of the map's range. A map
passes when, over every image and batch size, its largest absolute difference is within
``max_abs``, its mean absolute difference within ``mean_abs`` and each image's Pearson r at least
``min_pearson`` (``TOLERANCES``; the manifest states them beside the measured figures). Not an
elementwise bound alone: an input gradient passes every ReLU and max-pool of the network, and where
onnxruntime's float32 forward pass differs from torch's in the last bit at a pre-activation near 0,
one unit's mask flips and a few pixels of that image move by a visible share of the map's range
(README: the measured figures). A wrong formula, path or noise moves every image (r far below the
bound). These libraries are export and test dependencies only: serving never imports this module.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

# In units of the normalised map's range: max_abs bounds one pixel (room for a flipped mask),
# mean_abs and min_pearson every image (no room for a wrong method).
TOLERANCES = {m: {"max_abs": 0.05, "mean_abs": 1e-4, "min_pearson": 0.999}
              for m in ("gradcam", "gradcampp", "saliency", "ig", "smoothgrad")}
CHUNK = 64  # images per reference call (IG and SmoothGrad multiply the batch by their steps or samples)


class _Once(nn.Module):
    """The model's own pass (no test-time flip), what the graphs explain."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_once(x)


def normalise(maps: np.ndarray) -> np.ndarray:
    """Per-image min-max normalisation to [0, 1]; a constant map becomes 0. This is pytorch-grad-cam's
    ``scale_cam_image`` without its 1e-7 in the divisor, which would shrink a map whose range is near
    1e-7 (random weights give such maps); pytorch-grad-cam's own output is already in [0, 1], where it
    changes nothing."""
    m = maps.astype(np.float64).reshape(len(maps), -1)
    m = m - m.min(1, keepdims=True, initial=np.inf)
    top = m.max(1, keepdims=True, initial=0.0)
    return np.divide(m, top, out=np.zeros_like(m), where=top > 0).reshape(maps.shape)


def _cam(method: str, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    cls = GradCAM if method == "gradcam" else GradCAMPlusPlus
    with cls(model=_Once(model), target_layers=[model.stages[model.cam_layer]]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in target])


def smoothgrad_noise(shape: tuple, samples: int, std: float, seed: int) -> np.ndarray:
    """The noise Captum's NoiseTunnel draws in ``reference_maps`` (``torch.manual_seed(seed + i)``
    before the chunk of images from i) as the graph's ``noise`` input [N, samples, C, H, W]: Captum's
    noisy copies are image-major, like the graph's."""
    parts = []
    for i in range(0, shape[0], CHUNK):
        n, rest = min(CHUNK, shape[0] - i), tuple(shape[1:])
        with torch.random.fork_rng():
            torch.manual_seed(seed + i)
            parts.append(torch.normal(0, torch.tensor(std).repeat((n * samples, *rest))).reshape(n, samples, *rest))
    return torch.cat(parts).numpy()


def _captum(method: str, model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, steps: int, samples: int,
            std: float, seed: int) -> np.ndarray:
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency
    f = _Once(model)
    if method == "saliency":
        out = Saliency(f).attribute(x, target=target, abs=True)
    elif method == "ig":
        out = IntegratedGradients(f).attribute(x, baselines=torch.zeros_like(x), target=target, n_steps=steps,
                                               method="gausslegendre")
    else:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            out = NoiseTunnel(Saliency(f)).attribute(x, nt_type="smoothgrad", nt_samples=samples, stdevs=float(std),
                                                     target=target, abs=True)
    return out.detach().sum(dim=1).numpy()


def reference_maps(method: str, model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, steps: int = 32,
                   samples: int = 16, std: float = 1.0, seed: int = 0) -> np.ndarray:
    """The reference library's map of ``method`` for each image, [N, H, W] (pytorch-grad-cam's come
    normalised; Captum's raw). SmoothGrad's noise is ``smoothgrad_noise(x.shape, samples, std, seed)``."""
    model.eval()
    out = []
    for i in range(0, len(x), CHUNK):
        xb, tb = x[i:i + CHUNK], target[i:i + CHUNK]
        if method in ("gradcam", "gradcampp"):
            out.append(_cam(method, model, xb, tb))
        else:
            out.append(_captum(method, model, xb, tb, steps=steps, samples=samples, std=std, seed=seed + i))
    return np.concatenate(out).astype(np.float32)


def compare(method: str, got: np.ndarray, want: np.ndarray) -> dict:
    """The graph's maps ``got`` against ``want``, both normalised: the largest and mean absolute
    difference, the lowest per-image Pearson r, and ``ok`` against ``TOLERANCES[method]``."""
    tol = TOLERANCES[method]
    if got.shape != want.shape or not np.isfinite(got).all():
        why = f"shape {got.shape} != {want.shape}" if got.shape != want.shape else "NaN or Inf in the map"
        return {"images": int(len(want)), "tolerance": tol, "max_abs": float("inf"), "mean_abs": float("inf"),
                "min_pearson": 0.0, "ok": False, "why": why}
    a, b = normalise(got), normalise(want)
    diff = np.abs(a - b)
    rec = {"images": int(len(want)), "tolerance": tol, "max_abs": float(diff.max(initial=0.0)),
           "mean_abs": float(diff.mean()) if diff.size else 0.0, "min_pearson": _min_pearson(a, b)}
    rec["ok"] = passes(rec)
    return rec


def passes(rec: dict) -> bool:
    tol = rec["tolerance"]
    return bool(rec["max_abs"] <= tol["max_abs"] and rec["mean_abs"] <= tol["mean_abs"]
                and rec["min_pearson"] >= tol["min_pearson"])


def worst_of(records: list[dict]) -> dict:
    """One record from ``compare``'s at several batch sizes: the worst of each figure."""
    out = dict(records[0])
    for r in records[1:]:
        out["max_abs"], out["mean_abs"] = max(out["max_abs"], r["max_abs"]), max(out["mean_abs"], r["mean_abs"])
        out["min_pearson"], out["ok"] = min(out["min_pearson"], r["min_pearson"]), out["ok"] and r["ok"]
        if "why" in r:
            out["why"] = r["why"]
    return out


def _min_pearson(a: np.ndarray, b: np.ndarray) -> float:
    """The lowest per-image Pearson correlation (1 where both maps are constant)."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    r = np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1), 1.0)
    return float(r.min()) if len(r) else 1.0


def failures(records: dict[str, dict]) -> list[tuple[str, str, float, float, str]]:
    """ParityError rows for the methods whose maps disagree with their reference."""
    return [(m, "map vs reference", r["max_abs"], r["mean_abs"], r.get("why", _why(r))) for m, r in records.items()
            if not r["ok"]]


def _why(r: dict) -> str:
    t = r["tolerance"]
    return (f"beyond tolerance (max abs {r['max_abs']:.3g} / {t['max_abs']}, mean abs {r['mean_abs']:.3g} / "
            f"{t['mean_abs']}, min Pearson {r['min_pearson']:.5f} / {t['min_pearson']})")
