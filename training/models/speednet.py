"""``speednet``: a small, fast CIFAR-10 network in the style of the public speed-runs.

    train-all --profile cifar-record --nproc 2            # the CIFAR-10 record (its figures: README, records)
    train --model speednet --dataset cifar10 --model-arg tta_flip=true --batch-size 512

What makes such nets fast to train, as the speed-runs (Page's ResNet-9 DAWNBench entry, Keller
Jordan's airbench) showed, read rather than copied: few layers at full resolution, most of the
width after pooling, a max-pool inside each block (conv -> pool -> BatchNorm -> GELU) so the second
convolution of a block already runs at the lower resolution, global max pooling, and a bias-free
linear head whose logits are scaled down (``head_scale``), which acts like a temperature and lets a
large learning rate train the head stably. Label smoothing, flip-and-translate augmentation,
test-time flips (``tta_flip``), a warmup-and-decay schedule and an EMA come from the training config.
"""
import torch
import torch.nn as nn

from .base import StagedClassifier
from .registry import register_model


def _conv_bn(cin: int, cout: int, pool: bool) -> list[nn.Module]:
    layers = [nn.Conv2d(cin, cout, 3, 1, 1, bias=False)]
    if pool:  # pool before the BatchNorm: a quarter of the normalisation and activation work
        layers.append(nn.MaxPool2d(2))
    return layers + [nn.BatchNorm2d(cout), nn.GELU()]


class GlobalMaxPool(nn.Module):
    """``amax`` over the image: unlike ``AdaptiveMaxPool2d``, its backward exports to ONNX (the
    Grad-CAM graph compiles the backward pass through this pool)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3))


class Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = float(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


@register_model("speednet", default_size=32)
def speednet(num_classes: int = 10, in_chans: int = 3, img_size: int = 32, widths: tuple = (64, 256, 256),
             stem: int = 32, head_scale: float = 1 / 9):
    """Speed-run CNN: 3x3 stem, three conv-pool-BN-GELU blocks of two convs, global max-pool, scaled linear head."""
    if len(widths) != 3 or min(widths) < 1 or stem < 1:
        raise ValueError(f"speednet widths must be 3 positive channel counts and stem positive, got {widths}, {stem}")
    w1, w2, w3 = (int(w) for w in widths)
    block = lambda cin, cout: nn.Sequential(*_conv_bn(cin, cout, True), *_conv_bn(cout, cout, False))  # noqa: E731
    return StagedClassifier([
        ("stem", nn.Sequential(*_conv_bn(in_chans, int(stem), False))),
        ("block1", block(int(stem), w1)),
        ("block2", block(w1, w2)),
        ("block3", block(w2, w3)),
        ("pool", GlobalMaxPool()),
        ("fc", nn.Sequential(nn.Linear(w3, num_classes, bias=False), Scale(head_scale))),
    ], num_classes=num_classes, in_chans=in_chans, img_size=img_size, cam_layer="block3")
