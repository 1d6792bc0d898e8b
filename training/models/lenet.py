"""LeNet-5 as the seeds wrote it (average pooling) and ``mynet``, the same with max-pooling.

conv 1->6 k5 (padding 2 keeps 28x28, so fc1 sees 16*5*5 = 400 features as in LeNet-5 on 32x32),
pool 2, conv 6->16 k5, pool 2, fc 400->120->84->classes. The seeds applied softmax across the
batch (dim=0); here the model returns logits and the loss applies log-softmax per image.
"""
import torch.nn as nn

from .base import StagedClassifier, conv_out
from .registry import register_model


def _lenet(pool: type[nn.Module], num_classes: int, in_chans: int, img_size: int) -> StagedClassifier:
    s = conv_out(conv_out(img_size, 5, p=2), 2, 2)
    s = conv_out(conv_out(s, 5), 2, 2)
    return StagedClassifier([
        ("conv1", nn.Sequential(nn.Conv2d(in_chans, 6, 5, padding=2), nn.ReLU())),
        ("pool1", pool(2)),
        ("conv2", nn.Sequential(nn.Conv2d(6, 16, 5), nn.ReLU())),
        ("pool2", pool(2)),
        ("fc1", nn.Sequential(nn.Flatten(), nn.Linear(16 * s * s, 120), nn.ReLU())),
        ("fc2", nn.Sequential(nn.Linear(120, 84), nn.ReLU())),
        ("fc3", nn.Linear(84, num_classes)),
    ], num_classes=num_classes, in_chans=in_chans, img_size=img_size, cam_layer="conv2")


@register_model("lenet", default_size=28)
def lenet(num_classes: int = 10, in_chans: int = 1, img_size: int = 28):
    """LeNet-5 with average pooling (the seeds' model, trained on logits)."""
    return _lenet(nn.AvgPool2d, num_classes, in_chans, img_size)


@register_model("mynet", default_size=28)
def mynet(num_classes: int = 10, in_chans: int = 1, img_size: int = 28):
    """LeNet-5 with max pooling."""
    return _lenet(nn.MaxPool2d, num_classes, in_chans, img_size)
