"""Row-RNN: a 2-layer tanh RNN (hidden 512) reads an image's rows as a sequence, then fc.

It has no spatial layer, so no Grad-CAM target (``cam_layer`` is None).
"""
import torch
import torch.nn as nn

from .base import StagedClassifier
from .registry import register_model


class RowRNN(nn.Module):
    def __init__(self, in_chans: int, img_size: int, hidden: int, num_layers: int):
        super().__init__()
        self.rnn = nn.RNN(in_chans * img_size, hidden, num_layers=num_layers, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        rows = x.permute(0, 2, 1, 3).reshape(n, h, c * w)  # one time step per image row
        out, _ = self.rnn(rows)
        return out[:, -1]


@register_model("rowrnn")  # any size and channels: takes the dataset's
def rowrnn(num_classes: int = 10, in_chans: int = 1, img_size: int = 28, hidden: int = 512, num_layers: int = 2):
    """2-layer RNN (hidden 512) over image rows, then fc."""
    return StagedClassifier([
        ("rnn", RowRNN(in_chans, img_size, hidden, num_layers)),
        ("fc", nn.Linear(hidden, num_classes)),
    ], num_classes=num_classes, in_chans=in_chans, img_size=img_size, cam_layer=None)
