"""The seeds' convolutional classifiers: the deep Inception-style CNN, the BatchNorm ConvNet and
the CIFAR CNN. Layer names follow the blocks so that embeddings and Grad-CAM can name them.
"""
import torch
import torch.nn as nn

from .base import StagedClassifier
from .registry import register_model


def conv_bn(cin: int, cout: int, k: int, act: nn.Module | None = None) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                         act if act is not None else nn.ReLU())


class TwoBranch(nn.Module):
    """Inception-style block: 3x3->3x3 and 1x1->5x5 branches side by side, concatenated."""

    def __init__(self, cin: int, width: int):
        super().__init__()
        act = lambda: nn.LeakyReLU(0.1)  # noqa: E731
        self.a = nn.Sequential(conv_bn(cin, width, 3, act()), conv_bn(width, width, 3, act()))
        self.b = nn.Sequential(conv_bn(cin, width, 1, act()), conv_bn(width, width, 5, act()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], dim=1)


@register_model("inception", default_size=32)
def inception(num_classes: int = 10, in_chans: int = 1, img_size: int = 32, dropout: float = 0.25,
              head_dropout: float = 0.5):
    """Deep Inception-style CNN after the seed that reached 93.72% (32x32 input, fc 8192-512).

    ``dropout`` follows the two pooling stages of the body, ``head_dropout`` the fc layer; they are
    separate so that report 002's value (0.7) is a valid setting for either (twice 0.7 was not)."""
    act = lambda: nn.LeakyReLU(0.1)  # noqa: E731
    s = img_size // 8
    return StagedClassifier([
        ("block1", nn.Sequential(conv_bn(in_chans, 32, 3, act()), conv_bn(32, 64, 3, act()))),
        ("pool1", nn.Sequential(nn.MaxPool2d(2), nn.Dropout(dropout))),
        ("block2", TwoBranch(64, 128)),
        ("pool2", nn.Sequential(nn.MaxPool2d(2), nn.Dropout(dropout))),
        ("block3", nn.Sequential(conv_bn(256, 512, 1), conv_bn(512, 512, 3), conv_bn(512, 512, 3))),
        ("pool3", nn.MaxPool2d(2)),
        ("fc1", nn.Sequential(nn.Flatten(), nn.Linear(512 * s * s, 512), nn.ReLU(), nn.Dropout(head_dropout))),
        ("fc2", nn.Linear(512, num_classes)),
    ], num_classes=num_classes, in_chans=in_chans, img_size=img_size, cam_layer="block3")


@register_model("bnconvnet", default_size=28)
def bnconvnet(num_classes: int = 10, in_chans: int = 1, img_size: int = 28, dropout: float = 0.3):
    """BatchNorm ConvNet: conv 64, conv 128 (each BN, ReLU, max-pool), fc 6272->784->98->classes."""
    s = img_size // 4
    return StagedClassifier([
        ("conv1", conv_bn(in_chans, 64, 3)),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", conv_bn(64, 128, 3)),
        ("pool2", nn.MaxPool2d(2)),
        ("fc1", nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(128 * s * s, 784), nn.ReLU())),
        ("fc2", nn.Sequential(nn.Dropout(dropout), nn.Linear(784, 98), nn.ReLU())),
        ("fc3", nn.Linear(98, num_classes)),
    ], num_classes=num_classes, in_chans=in_chans, img_size=img_size, cam_layer="conv2")


@register_model("cifarcnn", default_size=32)
def cifarcnn(num_classes: int = 10, in_chans: int = 3, img_size: int = 32):
    """CIFAR CNN: conv 3->32 k5, 32->16 k3, pool, 16->64 k5, 64->16 k3, pool, fc 1024->classes."""
    s = img_size // 4
    same = lambda cin, cout, k: nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2), nn.ReLU())  # noqa: E731
    return StagedClassifier([
        ("conv1", same(in_chans, 32, 5)),
        ("conv2", same(32, 16, 3)),
        ("pool1", nn.MaxPool2d(2)),
        ("conv3", same(16, 64, 5)),
        ("conv4", same(64, 16, 3)),
        ("pool2", nn.MaxPool2d(2)),
        ("fc", nn.Sequential(nn.Flatten(), nn.Linear(16 * s * s, num_classes))),
    ], num_classes=num_classes, in_chans=in_chans, img_size=img_size, cam_layer="conv4")


@register_model("convnet", default_size=28)
def convnet(num_classes: int = 10, in_chans: int = 1, img_size: int = 28, depth: int = 2, width: int = 32):
    """Plain CNN of 1-3 conv blocks (conv 3x3, ReLU, max-pool; widths double), then fc 128 and fc."""
    if not 1 <= depth <= 3:
        raise ValueError(f"convnet depth must be 1, 2 or 3, got {depth}")
    stages, cin, size = [], in_chans, img_size
    for i in range(1, depth + 1):
        cout = width * 2 ** (i - 1)
        stages += [(f"conv{i}", nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU())),
                   (f"pool{i}", nn.MaxPool2d(2))]
        cin, size = cout, size // 2
    stages += [("fc1", nn.Sequential(nn.Flatten(), nn.Linear(cin * size * size, 128), nn.ReLU())),
               ("fc2", nn.Linear(128, num_classes))]
    return StagedClassifier(stages, num_classes=num_classes, in_chans=in_chans, img_size=img_size,
                            cam_layer=f"conv{depth}")
