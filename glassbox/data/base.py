"""The in-memory dataset type and the errors every reader raises.

    from glassbox.data import ArrayDataset
    ds = ArrayDataset(images, labels, classes=["cat", "dog"], name="pets")
    small = ds.subset([0, 5, 9])         # same classes and name, those samples

Everything in ``glassbox.data`` is numpy (and Pillow) only, so the server and the analysis CLI can
read data without torch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class DatasetError(Exception):
    """A dataset that cannot be read. The message is one line saying how to get it: CLIs print it
    and exit with code 2."""


class DatasetNotFound(DatasetError):
    """No copy of the dataset in any place looked at."""


class DatasetCorrupt(DatasetError):
    """A file was found but is not what its format promises (bad magic, truncated, inconsistent)."""


@dataclass(repr=False)  # the default repr would print every pixel
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

    def __repr__(self) -> str:
        return (f"ArrayDataset(name={self.name!r}, images={self.images.dtype}{list(self.images.shape)}, "
                f"classes={len(self.classes)})")

    def subset(self, indices) -> "ArrayDataset":
        """The samples at ``indices`` (integer array or boolean mask), as a new dataset (copies)."""
        indices = np.asarray(indices)
        if indices.dtype != bool:
            indices = indices.astype(np.int64, copy=False)
        return ArrayDataset(self.images[indices], self.labels[indices], list(self.classes), self.name)

    @property
    def channels(self) -> int:
        return 1 if self.images.ndim == 3 else int(self.images.shape[3])

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of every image."""
        return int(self.images.shape[1]), int(self.images.shape[2])
