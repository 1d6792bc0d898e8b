"""``load_dataset``: find a named dataset and read one split into memory.

    from training.data import load_dataset
    ds = load_dataset("fashion-mnist", split="test")          # ArrayDataset, uint8 images
    ds = load_dataset("mnist", data_dir="../shared/data")

Search order: the explicit ``data_dir`` (only there: a typo must not silently train on other data),
then ``$GLASSBOX_DATA_DIR``, then the system location (Debian's ``dataset-fashion-mnist`` package
installs ``/usr/share/datasets/fashion-mnist``), then, with ``download=True``, torchvision's
download into ``~/.cache/glassbox``. In each directory the files may sit directly or in a
subfolder named after the dataset.
"""
from __future__ import annotations

import os
from pathlib import Path

from .base import ArrayDataset, DatasetNotFound, dataset_info
from .cifar import CACHE, load_imagefolder, load_pickles
from .idx import has_idx, load_idx_pair
from .lfw import load_lfw_folders, load_lfw_npz, min_images, split_per_person

SYSTEM_DIRS = {"fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")], "mnist": [Path("/usr/share/datasets/mnist")]}
SUBDIRS = {
    "fashion-mnist": ["", "fashion-mnist", "fashion_mnist", "FashionMNIST/raw"],
    "mnist": ["", "mnist", "MNIST/raw"],
    "cifar10": ["", "cifar10", "cifar-10-batches-py", "cifar10/cifar-10-batches-py"],
    "lfw": ["", "lfw"],
    "lfw-min20": ["", "lfw"],
}
HOW_TO_GET = {
    "fashion-mnist": "install Debian's package (apt-get install dataset-fashion-mnist), pass --data-dir "
                     "or set GLASSBOX_DATA_DIR to a folder with the official IDX files, or allow the download",
    "mnist": "pass --data-dir or set GLASSBOX_DATA_DIR to a folder with the official MNIST IDX files "
             "(train-images-idx3-ubyte.gz, ...), or allow the download",
    "cifar10": "pass --data-dir or set GLASSBOX_DATA_DIR to a folder with cifar-10-batches-py/ (the official "
               "python pickles), an ImageFolder tree train/<class>/*.jpg + test/<class>/*.jpg, or a zip of one",
    "lfw": "pass --data-dir or set GLASSBOX_DATA_DIR to a folder with lfw/ or lfw-deepfunneled/ (per-person "
           "JPEG folders) or an npz with x, y, names (e.g. lfw-deepfunneled-32.npz)",
}
HOW_TO_GET["lfw-min20"] = HOW_TO_GET["lfw"].replace("lfw-deepfunneled-32.npz", "lfw-deepfunneled-min20-64.npz")


def _candidates(name: str, data_dir) -> list[Path]:
    if data_dir is not None:
        roots = [Path(data_dir)]
    else:
        roots = ([Path(os.environ["GLASSBOX_DATA_DIR"])] if os.environ.get("GLASSBOX_DATA_DIR") else []) + SYSTEM_DIRS.get(name, [])
    return [r / s if s else r for r in roots for s in SUBDIRS[name]]


def _try_read(name: str, d: Path, split: str, options: dict) -> ArrayDataset | None:
    if not d.is_dir():
        return None
    info = dataset_info(name)
    if name in ("fashion-mnist", "mnist"):
        if has_idx(d, split):
            x, y = load_idx_pair(d, split)
            return ArrayDataset(x, y, list(info["classes"]), name)
        return None
    if name == "cifar10":
        if (d / "batches.meta").is_file():
            x, y, classes = load_pickles(d, split)
        elif (d / "cifar10-jpg.zip").is_file():
            x, y, classes = load_imagefolder(d / "cifar10-jpg.zip", split)
        elif (d / "train").is_dir() and (d / "test").is_dir():
            x, y, classes = load_imagefolder(d, split)
        else:
            return None
        return ArrayDataset(x, y, classes, name)
    # LFW: an npz, or the official per-person folders.
    min20 = name == "lfw-min20"
    size = int(options.get("size", info["size"]))
    npz = d / ("lfw-deepfunneled-min20-64.npz" if min20 else "lfw-deepfunneled-32.npz")
    folder = next((d / f for f in ("lfw-deepfunneled", "lfw") if (d / f).is_dir() and any((d / f).glob("*/*.jpg"))), None)
    if npz.is_file() and "crop" not in options:
        x, y, names = load_lfw_npz(npz)
    elif folder is not None:
        x, y, names = load_lfw_folders(folder, size, options.get("crop", (50, 50, 200, 200)))
    else:
        return None
    if min20:
        x, y, names = min_images(x, y, names, 20)
    if x.shape[1] != size:
        from .transforms import resize
        x = resize(x, (size, size))
    idx = split_per_person(y, split, seed=int(options.get("split_seed", 0)))
    return ArrayDataset(x[idx], y[idx], names, name)


def _download(name: str) -> Path | None:
    try:  # torchvision only here, lazily: the readers stay numpy-only
        from torchvision import datasets as tvd
    except ImportError:
        return None
    cls = {"fashion-mnist": tvd.FashionMNIST, "mnist": tvd.MNIST}.get(name)
    if cls is None:
        return None
    try:
        cls(str(CACHE), train=True, download=True)
        cls(str(CACHE), train=False, download=True)
    except Exception:  # no network, proxy, ...: fall through to the clear error
        return None
    return CACHE / cls.__name__ / "raw"


def load_dataset(name: str, split: str = "train", data_dir: str | os.PathLike | None = None,
                 download: bool = False, **options) -> ArrayDataset:
    """Read ``split`` ("train" or "test") of dataset ``name``; raise DatasetNotFound/DatasetCorrupt."""
    dataset_info(name)  # unknown names fail here, with the list of known ones
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    tried = _candidates(name, data_dir)
    for d in tried:
        ds = _try_read(name, d, split, options)
        if ds is not None:
            return ds
    if download and data_dir is None:
        d = _download(name)
        if d is not None and (ds := _try_read(name, d, split, options)) is not None:
            return ds
    looked = ", ".join(dict.fromkeys(str(d) for d in tried)) or "nowhere (no --data-dir, GLASSBOX_DATA_DIR unset)"
    raise DatasetNotFound(f"{name} ({split}) not found; looked in: {looked}. To get it: {HOW_TO_GET[name]}.")
