"""Trivial baselines, measured on the real data in the test that uses them: what a model that learned
nothing scores. A test then asks for a margin over them instead of a loose absolute bound."""
import functools

import numpy as np

from glassbox.data import load_dataset


@functools.lru_cache(maxsize=4)
def mean_image(data_dir, name: str = "fashion-mnist") -> dict:
    """The mean training image as a constant reconstruction of every test image, pixels in [0, 1]: its
    ``mse`` (per pixel), its ``bce`` (nats per image, summed over pixels, as the VAE loss) and the
    ``majority`` class's share of the test set (the accuracy of always answering it)."""
    train = load_dataset(name, "train", data_dir=data_dir)
    test = load_dataset(name, "test", data_dir=data_dir)
    x = test.images.reshape(len(test.images), -1).astype(np.float64) / 255.0
    m = np.clip(train.images.reshape(len(train.images), -1).mean(0) / 255.0, 1e-7, 1 - 1e-7)
    bce = -(x * np.log(m) + (1 - x) * np.log(1 - m)).sum(1)
    return {"mse": float(((x - m) ** 2).mean()), "bce": float(bce.mean()),
            "majority": float(np.bincount(test.labels).max() / len(test.labels))}
