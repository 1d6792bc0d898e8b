"""The ONNX graphs of a model, exported with torch's dynamo exporter (opset 18, dynamic batch).

classifier: input -> logits, probabilities, <every layer>   (one output per registry layer)
gradcam:    input, target -> cam, logits                      (see gradcam.py)
encoder:    input -> mean, logvar                             (VAEs)
decoder:    latent -> image                                   (VAEs)
"""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch
import torch.nn as nn

OPSET = 18


class ClassifierGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input: torch.Tensor):  # noqa: A002  (the ONNX input is named "input")
        logits, feats = self.model.forward_intermediates(input)
        return (logits, torch.softmax(logits, dim=1), *feats.values())


class EncoderGraph(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, input: torch.Tensor):  # noqa: A002
        return self.vae.encode(input)


class DecoderGraph(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latent: torch.Tensor):
        return self.vae.decode(latent)


def export_onnx(module: nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str]) -> None:
    """Export with a dynamic batch axis on every input; the exporter's chatter is swallowed."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    dynamic = {n: {0: batch} for n in input_names}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module.eval(), args, input_names=input_names, output_names=output_names,
                                    dynamic_shapes=dynamic, dynamo=True, opset_version=OPSET,
                                    external_data=False, verbose=False)
        program.save(str(path))


def output_shapes(model: nn.Module, example: torch.Tensor) -> dict[str, list[int]]:
    """Shapes (batch as -1) of logits and every layer, from one eval forward pass."""
    with torch.no_grad():
        logits, feats = model.forward_intermediates(example)
    shapes = {"logits": [-1, *logits.shape[1:]], "probabilities": [-1, *logits.shape[1:]]}
    shapes.update({k: [-1, *v.shape[1:]] for k, v in feats.items()})
    return shapes
