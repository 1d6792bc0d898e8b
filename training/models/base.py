"""The contract every classifier honours: a sequence of named stages.

Each stage's output but the last is a *layer* (what `Embed` serves and the ONNX classifier graph
outputs by name); the last stage's output is the logits. Because a model is only its stages,
intermediates, the Grad-CAM split (``forward_to`` / ``forward_from``) and the timm-style
``forward_features`` / ``forward_head`` come for free and cannot drift apart.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class StagedClassifier(nn.Module):
    task = "classifier"
    # Test-time flip augmentation (model arg ``tta_flip``, set by ``create_model``): in eval mode the
    # logits are the mean of the image's and its mirror's, so the exported graphs serve it too.
    tta_flip = False

    def __init__(self, stages: list[tuple[str, nn.Module]], *, num_classes: int, in_chans: int,
                 img_size: int, cam_layer: str | None):
        super().__init__()
        self.stages = nn.ModuleDict(stages)
        self.num_classes, self.in_chans, self.img_size = num_classes, in_chans, img_size
        names = list(self.stages)
        if cam_layer is not None and cam_layer not in names[:-1]:
            raise ValueError(f"cam_layer {cam_layer!r} is not one of the layers {names[:-1]}")
        self.cam_layer = cam_layer

    @property
    def layers(self) -> list[str]:
        return list(self.stages)[:-1]

    def _index(self, layer: str) -> int:
        try:
            return self.layers.index(layer)
        except ValueError:
            raise KeyError(f"unknown layer {layer!r}; layers: {', '.join(self.layers)}") from None

    def forward_once(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of one pass over ``x`` (no test-time flip; Grad-CAM explains this one)."""
        for stage in self.stages.values():
            x = stage(x)
        return x

    def _with_mirror(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.tta_flip and not self.training:
            return (logits + self.forward_once(x.flip(-1))) / 2
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._with_mirror(self.forward_once(x), x)

    def forward_intermediates(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The logits and every layer's output (layers of the image itself, not its mirror)."""
        feats, h = {}, x
        for name, stage in self.stages.items():
            h = stage(h)
            feats[name] = h
        feats.pop(name)  # the last stage is the logits, not a layer
        return self._with_mirror(h, x), feats

    def forward_to(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        stop = self._index(layer)
        for i, stage in enumerate(self.stages.values()):
            x = stage(x)
            if i == stop:
                return x
        raise AssertionError("unreachable")

    def forward_from(self, act: torch.Tensor, layer: str) -> torch.Tensor:
        start = self._index(layer)
        for stage in list(self.stages.values())[start + 1:]:
            act = stage(act)
        return act

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_to(x, self.layers[-1]) if self.layers else x

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return list(self.stages.values())[-1](feats)


def conv_out(size: int, k: int, s: int = 1, p: int = 0) -> int:
    return (size + 2 * p - k) // s + 1
