"""A ResNet for small images (CIFAR-style: 3x3 stem, three stages, global average pool).

``width`` sets the first stage's channels (doubled per stage), ``depth`` the blocks per stage.
"""
import torch
import torch.nn as nn

from .base import StagedClassifier
from .registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.short(x))


def _stage(cin: int, cout: int, depth: int, stride: int) -> nn.Sequential:
    return nn.Sequential(*[BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(depth)])


@register_model("resnet", default_size=28)
def resnet(num_classes: int = 10, in_chans: int = 1, img_size: int = 28, width: int = 32, depth: int = 2,
           dropout: float = 0.0):
    """ResNet for small images: 3x3 stem, 3 stages of BasicBlocks (width, 2x, 4x), avg-pool, fc."""
    w = width
    return StagedClassifier([
        ("stem", nn.Sequential(nn.Conv2d(in_chans, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())),
        ("layer1", _stage(w, w, depth, 1)),
        ("layer2", _stage(w, 2 * w, depth, 2)),
        ("layer3", _stage(2 * w, 4 * w, depth, 2)),
        ("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())),
        ("fc", nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * w, num_classes))),
    ], num_classes=num_classes, in_chans=in_chans, img_size=img_size, cam_layer="layer3")
