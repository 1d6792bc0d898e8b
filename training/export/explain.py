"""Attribution graphs beyond Grad-CAM, compiled into ONNX the way ``gradcam.py`` compiles Grad-CAM.

    from training.export.explain import build_explain_graph
    graph, inputs = build_explain_graph("ig", model, x[:2], steps=32)   # then graphs.export_onnx

Every method is a function ``(input, target[, noise]) -> (map, logits)``: ``map`` is float32
[N, H, W] at input size, not normalised; ``logits`` are the image's own (one pass, no test-time
flip, like Grad-CAM). The gradients come from ``torch.func.grad`` traced with ``make_fx`` (core-ATen
decompositions, symbolic batch), so the backward pass is ordinary forward ops in the graph.

- ``gradcampp``: Grad-CAM++ at the model's ``cam_layer``, pytorch-grad-cam's weights (its Eq. 19 with
  the exponential's closed-form derivatives: a = g^2 / (2 g^2 + sum(A) g^3 + eps), 0 where g == 0).
- ``saliency``: |d logit[target] / d input|, summed over channels (Captum's Saliency, abs=True).
- ``ig``: Integrated Gradients from a zero baseline with Captum's default Gauss-Legendre rule
  (``method="gausslegendre"``): nodes and weights fixed at export, the whole path one batched pass of
  N * steps images; the attribution summed over channels.
- ``smoothgrad``: the mean over ``samples`` noisy copies of Saliency (Captum's NoiseTunnel
  ``nt_type="smoothgrad"`` over Saliency). The noise is the graph input ``noise`` [N, samples, C, H, W],
  added as given, so the caller (the server, from a seed) decides it and can replay it.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.experimental.proxy_tensor import make_fx

from .gradcam import GradCamGraph, cam_layer_gradient, gradcam_fn
from .gradcam import _decompositions as _cam_decompositions

aten = torch.ops.aten

METHODS = ("gradcam", "gradcampp", "saliency", "ig", "smoothgrad")
CAM_METHODS = ("gradcam", "gradcampp")  # need a spatial cam_layer
IG_STEPS = 32
SMOOTHGRAD_SAMPLES = 16
SMOOTHGRAD_NOISE = 0.15  # noise std as a share of the input's value range (SmoothGrad's 10-20%)
GPP_EPS = 1e-6  # pytorch-grad-cam's eps in the Grad-CAM++ weights


def gauss_legendre(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Captum's Gauss-Legendre path: alphas in (0, 1) and their step sizes (weights summing to 1)."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return 0.5 * (nodes + 1), 0.5 * weights


def _convolution_backward(grad_out, inp, weight, bias_sizes, stride, padding, dilation, transposed, output_padding,
                          groups, output_mask):
    """A 2-D convolution's input gradient as a transposed convolution: the ONNX exporter has no
    translation for aten.convolution_backward, and input gradients are all these graphs take."""
    if transposed or inp.dim() != 4 or output_mask[1] or output_mask[2]:
        raise NotImplementedError("convolution_backward beyond a 2-D convolution's input gradient")
    k = weight.shape[-2:]
    extra = [int(inp.shape[2 + i]) - ((int(grad_out.shape[2 + i]) - 1) * stride[i] - 2 * padding[i]
                                      + dilation[i] * (int(k[i]) - 1) + 1) for i in range(2)]
    g = F.conv_transpose2d(grad_out, weight, None, stride, padding, extra, groups, dilation)
    return g, None, None


def _decompositions():
    table = _cam_decompositions()
    table[aten.convolution_backward.default] = _convolution_backward
    return table


def _target_score(model, target):
    def score(x):
        logits = model.forward_once(x)
        return logits.gather(1, target[:, None]).sum(), logits
    return score


def gradcampp_fn(model: nn.Module):
    def cam(x: torch.Tensor, target: torch.Tensor):
        act, g, logits = cam_layer_gradient(model, x, target)
        g2 = g * g
        alpha = g2 / (2 * g2 + act.sum(dim=(2, 3), keepdim=True) * g2 * g + GPP_EPS)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
        weights = (F.relu(g) * alpha).sum(dim=(2, 3), keepdim=True)
        maps = F.relu((weights * act).sum(dim=1, keepdim=True))
        return F.interpolate(maps, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0], logits
    return cam


def saliency_fn(model: nn.Module):
    def saliency(x: torch.Tensor, target: torch.Tensor):
        g, logits = torch.func.grad(_target_score(model, target), has_aux=True)(x)
        return g.abs().sum(dim=1), logits
    return saliency


def ig_fn(model: nn.Module, steps: int = IG_STEPS):
    alphas, sizes = (torch.tensor(a, dtype=torch.float32) for a in gauss_legendre(steps))

    def ig(x: torch.Tensor, target: torch.Tensor):
        n, rest = x.shape[0], x.shape[1:]
        # Image-major path [N, steps, C, H, W] -> one batch of N * steps images.
        path = (x[:, None] * alphas.view(1, steps, 1, 1, 1)).reshape(n * steps, *rest)
        tgt = target[:, None].expand(n, steps).reshape(n * steps)
        g, _ = torch.func.grad(_target_score(model, tgt), has_aux=True)(path)
        avg = (g.reshape(n, steps, *rest) * sizes.view(1, steps, 1, 1, 1)).sum(dim=1)
        return (x * avg).sum(dim=1), model.forward_once(x)
    return ig


def smoothgrad_fn(model: nn.Module):
    def smoothgrad(x: torch.Tensor, target: torch.Tensor, noise: torch.Tensor):
        n, s, rest = x.shape[0], noise.shape[1], x.shape[1:]
        noisy = (x[:, None] + noise).reshape(n * s, *rest)
        tgt = target[:, None].expand(n, s).reshape(n * s)
        g, _ = torch.func.grad(_target_score(model, tgt), has_aux=True)(noisy)
        return g.abs().reshape(n, s, *rest).mean(dim=1).sum(dim=1), model.forward_once(x)
    return smoothgrad


class NoiseGraph(nn.Module):
    """A traced three-input method (SmoothGrad) as a module the exporter can take."""

    def __init__(self, traced: nn.Module):
        super().__init__()
        self.traced = traced

    def forward(self, input: torch.Tensor, target: torch.Tensor, noise: torch.Tensor):  # noqa: A002
        return self.traced(input, target, noise)


def method_fn(method: str, model: nn.Module, *, steps: int = IG_STEPS):
    fns = {"gradcam": gradcam_fn, "gradcampp": gradcampp_fn, "saliency": saliency_fn, "smoothgrad": smoothgrad_fn}
    if method == "ig":
        return ig_fn(model, steps)
    if method not in fns:
        raise ValueError(f"unknown explanation method {method!r}; methods: {', '.join(METHODS)}")
    return fns[method](model)


def example_inputs(method: str, example: torch.Tensor, samples: int = SMOOTHGRAD_SAMPLES) -> tuple:
    """The tracing/export arguments of ``method`` for the images ``example``."""
    target = torch.zeros(example.shape[0], dtype=torch.int64)
    if method == "smoothgrad":
        return example, target, torch.zeros(example.shape[0], samples, *example.shape[1:])
    return example, target


def build_explain_graph(method: str, model: nn.Module, example: torch.Tensor, *, steps: int = IG_STEPS,
                        samples: int = SMOOTHGRAD_SAMPLES) -> tuple[nn.Module, tuple]:
    """The make_fx-traced graph of ``method`` and the example arguments to export it with."""
    model.eval()
    args = example_inputs(method, example, samples)
    traced = make_fx(method_fn(method, model, steps=steps), decomposition_table=_decompositions(),
                     tracing_mode="symbolic", _allow_non_fake_inputs=True)(*args)
    return (NoiseGraph(traced) if method == "smoothgrad" else GradCamGraph(traced)), args


def noise_std(spec: dict, share: float = SMOOTHGRAD_NOISE) -> float:
    """SmoothGrad's noise std in the model's input units: ``share`` of the preprocessed value range
    (pixels 0..1 become (0 - mean) / std .. (1 - mean) / std, a range of 1 / std per channel)."""
    return float(share * np.mean([1.0 / s for s in spec["std"]]))
