"""The in-memory dataset type, the errors, and what each named dataset is.

Everything here is numpy only, so the server and the analysis CLI can read data without torch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class DatasetError(Exception):
    """A dataset that cannot be read; the message says how to get it. CLIs exit with code 2."""


class DatasetNotFound(DatasetError):
    pass


class DatasetCorrupt(DatasetError):
    pass


@dataclass
class ArrayDataset:
    """Images uint8 [N, H, W] (grayscale) or [N, H, W, 3] (RGB), labels int64 [N]."""
    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    name: str

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.images) != len(self.labels):
            raise DatasetCorrupt(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> "ArrayDataset":
        indices = np.asarray(indices)
        return ArrayDataset(self.images[indices], self.labels[indices], list(self.classes), self.name)

    @property
    def channels(self) -> int:
        return 1 if self.images.ndim == 3 else self.images.shape[3]


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot"]
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# Normalisation constants: per-channel mean and std of the training split's pixels in [0, 1],
# computed once from the real data (x / 255, mean and std over every pixel of the split).
DATASETS: dict[str, dict] = {
    "fashion-mnist": {"channels": 1, "size": 28, "classes": FASHION_CLASSES, "mean": [0.2860], "std": [0.3530]},
    "mnist": {"channels": 1, "size": 28, "classes": [str(i) for i in range(10)], "mean": [0.1307], "std": [0.3081]},
    "cifar10": {"channels": 3, "size": 32, "classes": CIFAR_CLASSES,
                "mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]},
    "lfw": {"channels": 3, "size": 32, "classes": None, "mean": [0.5204, 0.4177, 0.3513], "std": [0.2507, 0.2174, 0.2108]},
    "lfw-min20": {"channels": 3, "size": 64, "classes": None, "mean": [0.5341, 0.4313, 0.3632], "std": [0.2569, 0.2225, 0.2170]},
}


def dataset_info(name: str) -> dict:
    try:
        return DATASETS[name]
    except KeyError:
        raise DatasetNotFound(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}") from None
