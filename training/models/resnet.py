"""ResNets for small images: ``resnet`` (CIFAR-style: 3x3 stem, three stages of BasicBlocks) and
``resnet50`` (torchvision's ResNet-50 adapted to 32-px inputs, as report 003 trained it).

    train --model resnet --dataset cifar10 --model-arg width=32
    train --model resnet50 --dataset cifar10 --optimizer sgd --momentum 0 --lr 0.01 --batch-size 1024

``resnet``: ``width`` sets the first stage's channels (doubled per stage), ``depth`` the blocks per stage.
``resnet50``: torchvision's Bottleneck ResNet-50 (blocks 3, 4, 6, 3; 2048 features) built from scratch
(no weights are downloaded), with a 3x3 stride-1 stem and no first max-pool, so a 32-px image keeps
32x32 in layer1 and reaches layer4 at 4x4 (a 224-px stem would leave 1x1); a linear head on the pooled
features. ``blocks`` and ``width_per_group`` are torchvision's own knobs (the tests build a small one).
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


@register_model("resnet50", default_size=32)
def resnet50(num_classes: int = 10, in_chans: int = 3, img_size: int = 32, blocks: tuple = (3, 4, 6, 3),
             width_per_group: int = 64):
    """torchvision's ResNet-50 for 32-px images: 3x3 stem, no max-pool, 4 Bottleneck stages, linear head."""
    from torchvision.models.resnet import Bottleneck, ResNet  # here: only this model pays for importing torchvision

    if len(blocks) != 4 or min(blocks) < 1:
        raise ValueError(f"resnet50 blocks must be 4 positive counts (3, 4, 6, 3 is ResNet-50), got {blocks}")
    tv = ResNet(Bottleneck, [int(b) for b in blocks], num_classes=num_classes, width_per_group=int(width_per_group))
    stem = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)  # replaces the 7x7 stride-2 conv and the max-pool
    nn.init.kaiming_normal_(stem.weight, mode="fan_out", nonlinearity="relu")  # as torchvision inits its convs
    return StagedClassifier([
        ("stem", nn.Sequential(stem, tv.bn1, tv.relu)),
        ("layer1", tv.layer1),
        ("layer2", tv.layer2),
        ("layer3", tv.layer3),
        ("layer4", tv.layer4),
        ("pool", nn.Sequential(tv.avgpool, nn.Flatten())),
        ("fc", tv.fc),
    ], num_classes=num_classes, in_chans=in_chans, img_size=img_size, cam_layer="layer4")
