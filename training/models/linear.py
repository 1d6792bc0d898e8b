"""Multinomial logistic regression and a 784-300-100-10 MLP.

``logreg``'s L1 (lasso) and L2 (ridge) penalties are training options (``l1``, ``l2`` in the run
config), applied by the engine to the weights, so the same switches work for every model.
"""
import torch.nn as nn

from .base import StagedClassifier
from .registry import register_model


@register_model("logreg", default_size=28)
def logreg(num_classes: int = 10, in_chans: int = 1, img_size: int = 28):
    """Multinomial logistic regression on raw pixels (optional L1/L2 via the training config)."""
    return StagedClassifier([
        ("flatten", nn.Flatten()),  # the raw pixels: the only "layer" a linear model has
        ("fc", nn.Linear(in_chans * img_size * img_size, num_classes)),
    ], num_classes=num_classes, in_chans=in_chans, img_size=img_size, cam_layer=None)


@register_model("mlp", default_size=28)
def mlp(num_classes: int = 10, in_chans: int = 1, img_size: int = 28, dropout: float = 0.0):
    """MLP 784->300->100->classes with ReLU."""
    return StagedClassifier([
        ("fc1", nn.Sequential(nn.Flatten(), nn.Linear(in_chans * img_size * img_size, 300), nn.ReLU(),
                              nn.Dropout(dropout))),
        ("fc2", nn.Sequential(nn.Linear(300, 100), nn.ReLU(), nn.Dropout(dropout))),
        ("fc3", nn.Linear(100, num_classes)),
    ], num_classes=num_classes, in_chans=in_chans, img_size=img_size, cam_layer=None)
