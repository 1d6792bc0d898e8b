"""Grad-CAM with the backward pass compiled into the ONNX graph.

cam = relu(sum_c w_c * A_c), w_c = spatial mean of d logit[target] / d A_c, A = the model's
``cam_layer`` activation, bilinearly upsampled to the input size and NOT min-max normalised (so
magnitudes stay comparable across images; callers normalise for display).

How: ``torch.func.grad`` of the target score w.r.t. the activation is traced with ``make_fx``
(symbolic batch, core-ATen decompositions, so backward ops become ordinary forward ops), and the
traced graph is exported like any module. ``reference_gradcam`` computes the same thing the
ordinary way (a forward hook and ``backward``) for the parity gate.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.experimental.proxy_tensor import make_fx

aten = torch.ops.aten


def _pair(v):
    return tuple(v) if len(v) == 2 else (v[0], v[0])


def _avg_pool2d_backward(grad_out, inp, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    """avg_pool2d's backward as a depthwise transposed convolution: the ONNX exporter has no
    translation for aten.avg_pool2d_backward, but conv_transpose exports fine."""
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride) if stride else (kh, kw)
    ph, pw = _pair(padding)
    if divisor_override is not None or not (count_include_pad or (ph == 0 and pw == 0)):
        raise NotImplementedError("avg_pool2d backward with divisor_override or count_include_pad=False")
    c = grad_out.shape[1]
    w = torch.full((c, 1, kh, kw), 1.0 / (kh * kw), dtype=grad_out.dtype, device=grad_out.device)
    g = F.conv_transpose2d(grad_out, w, stride=(sh, sw), padding=(ph, pw), groups=c)
    return F.pad(g, (0, inp.shape[-1] - g.shape[-1], 0, inp.shape[-2] - g.shape[-2]))


def _decompositions():
    table = torch._decomp.core_aten_decompositions()
    table[aten.avg_pool2d_backward.default] = _avg_pool2d_backward
    return table


def cam_layer_gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor):
    """(activations at the model's CAM layer, the target logits' gradient there, the logits): what every CAM
    method starts from."""
    layer = model.cam_layer
    act = model.forward_to(x, layer)

    def score(a):
        logits = model.forward_from(a, layer)
        return logits.gather(1, target[:, None]).sum(), logits

    grad, logits = torch.func.grad(score, has_aux=True)(act)
    return act, grad, logits


def gradcam_fn(model: nn.Module):
    def cam(x: torch.Tensor, target: torch.Tensor):
        act, grad, logits = cam_layer_gradient(model, x, target)
        weights = grad.mean(dim=(2, 3), keepdim=True)
        maps = F.relu((weights * act).sum(dim=1, keepdim=True))
        return F.interpolate(maps, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0], logits
    return cam


class GradCamGraph(nn.Module):
    """The make_fx-traced Grad-CAM function as a module the exporter can take."""

    def __init__(self, traced: nn.Module):
        super().__init__()
        self.traced = traced

    def forward(self, input: torch.Tensor, target: torch.Tensor):  # noqa: A002
        return self.traced(input, target)


def build_gradcam_graph(model: nn.Module, example: torch.Tensor) -> GradCamGraph:
    model.eval()
    target = torch.zeros(example.shape[0], dtype=torch.int64)
    traced = make_fx(gradcam_fn(model), decomposition_table=_decompositions(), tracing_mode="symbolic",
                     _allow_non_fake_inputs=True)(example, target)
    return GradCamGraph(traced)


def reference_gradcam(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM the ordinary way: a forward hook keeps the activation, ``backward`` fills its grad."""
    model.eval()
    kept = {}

    def hook(_module, _inputs, out):
        out.retain_grad()
        kept["act"] = out

    handle = model.stages[model.cam_layer].register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model.forward_once(x)  # the image's own pass, also with test-time flips (tta_flip)
            logits.gather(1, target[:, None]).sum().backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    act, grad = kept["act"], kept["act"].grad
    maps = F.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(dim=1, keepdim=True))
    cam = F.interpolate(maps, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return cam.detach(), logits.detach()
