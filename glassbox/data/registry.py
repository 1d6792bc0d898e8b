"""What each named dataset is: classes, channels, native size, normalisation, where to find it.

    from glassbox.data import DATASETS, dataset_info
    dataset_info("cifar10")["mean"]      # [0.4913, 0.4821, 0.4465]
    list(DATASETS)                       # ['fashion-mnist', 'mnist', 'cifar10', 'lfw', 'lfw-min20']

The mean/std constants are the per-channel mean and standard deviation of the *train* split's
pixels scaled to [0, 1] (``x / 255`` over every pixel of every training image, float64), computed
once from the real data and hard-coded, so that training, the server and the analysis CLI never
depend on having the data to normalise an input:

    ds = load_dataset(name, "train"); x = ds.images.reshape(-1, ds.channels) / 255
    x.mean(0).round(4), x.std(0).round(4)

Sources: Fashion-MNIST from Debian's ``dataset-fashion-mnist``; MNIST from the official IDX files;
CIFAR-10 from the JPEG ImageFolder zip in the shared test data (the official pickles give the
familiar 0.4914/0.4822/0.4465, 0.2470/0.2435/0.2616: the lossy JPEG copies differ by up to 0.002);
LFW from the deep-funneled npz copies, train split of ``split_seed=0``.
"""
from __future__ import annotations

import copy
from pathlib import Path

from .base import DatasetNotFound

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot"]
# The official label order is the alphabetical order of the names, so ImageFolder trees agree with it.
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# classes None: read from the data (LFW's classes are the person names, sorted).
DATASETS: dict[str, dict] = {
    "fashion-mnist": {"classes": FASHION_CLASSES, "num_classes": 10, "channels": 1, "size": [28, 28],
                      "mean": [0.2860], "std": [0.3530]},
    "mnist": {"classes": [str(i) for i in range(10)], "num_classes": 10, "channels": 1, "size": [28, 28],
              "mean": [0.1307], "std": [0.3081]},
    "cifar10": {"classes": CIFAR_CLASSES, "num_classes": 10, "channels": 3, "size": [32, 32],
                "mean": [0.4913, 0.4821, 0.4465], "std": [0.2452, 0.2428, 0.2606]},
    "lfw": {"classes": None, "num_classes": 5749, "channels": 3, "size": [32, 32],
            "mean": [0.5196, 0.4169, 0.3507], "std": [0.2507, 0.2177, 0.2111]},
    "lfw-min20": {"classes": None, "num_classes": 62, "channels": 3, "size": [64, 64],
                  "mean": [0.5337, 0.4309, 0.3631], "std": [0.2568, 0.2225, 0.2168]},
}

# System-wide copies: Debian's dataset-fashion-mnist package installs the official gzipped IDX files here.
SYSTEM_DIRS: dict[str, list[Path]] = {
    "fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")],
    "mnist": [Path("/usr/share/datasets/mnist")],
}

# Subfolders of a data directory that may hold a dataset ("" = the directory itself). Includes the
# layouts torchvision's downloads leave behind, so an existing torchvision root also works.
SUBDIRS: dict[str, list[str]] = {
    "fashion-mnist": ["", "fashion-mnist", "fashion_mnist", "FashionMNIST/raw"],
    "mnist": ["", "mnist", "MNIST/raw"],
    "cifar10": ["", "cifar10", "cifar-10", "cifar-10-batches-py", "cifar10/cifar-10-batches-py"],
    "lfw": ["", "lfw"],
    "lfw-min20": ["", "lfw", "lfw-min20"],
}

_DOWNLOAD = ("or allow a download into ~/.cache/glassbox (load_dataset(..., download=True) or GLASSBOX_DOWNLOAD=1; "
             "needs torchvision and network)")
# One sentence per dataset naming every way to get it; DatasetNotFound/DatasetCorrupt messages end with it.
HOW_TO_GET: dict[str, str] = {
    "fashion-mnist": "install Debian's package (apt-get update && apt-get install -y dataset-fashion-mnist, "
                     "into /usr/share/datasets/fashion-mnist), pass --data-dir or set GLASSBOX_DATA_DIR to a "
                     "folder holding the official IDX files (train-images-idx3-ubyte.gz, ...), " + _DOWNLOAD,
    "mnist": "pass --data-dir or set GLASSBOX_DATA_DIR to a folder holding the official MNIST IDX files "
             "(train-images-idx3-ubyte.gz, ..., directly or in mnist/), put them in /usr/share/datasets/mnist, "
             + _DOWNLOAD,
    "cifar10": "pass --data-dir or set GLASSBOX_DATA_DIR to a folder holding cifar-10-batches-py/ (the official "
               "python pickles), an ImageFolder tree train/<class>/*.jpg + test/<class>/*.jpg, or a zip of "
               "one named cifar10-jpg.zip (directly or in cifar10/), " + _DOWNLOAD,
    "lfw": "pass --data-dir or set GLASSBOX_DATA_DIR to a folder holding lfw/ or lfw-deepfunneled/ (the "
           "official per-person JPEG folders) or lfw-deepfunneled-32.npz (arrays x, y, names), directly or in lfw/",
    "lfw-min20": "pass --data-dir or set GLASSBOX_DATA_DIR to a folder holding lfw/ or lfw-deepfunneled/ (the "
                 "official per-person JPEG folders) or lfw-deepfunneled-min20-64.npz or lfw-deepfunneled-32.npz "
                 "(arrays x, y, names), directly or in lfw/",
}


def dataset_info(name: str) -> dict:
    """A copy of ``DATASETS[name]``: classes, num_classes, channels, size [H, W], mean, std."""
    try:
        return copy.deepcopy(DATASETS[name])
    except KeyError:
        raise DatasetNotFound(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}") from None
