"""``load_dataset``: find a named dataset and read one split into memory.

    from glassbox.data import load_dataset, DatasetError
    ds = load_dataset("fashion-mnist", split="test")                 # ArrayDataset, uint8 images
    ds = load_dataset("mnist", data_dir="../shared/data")             # files in data_dir or data_dir/mnist
    ds = load_dataset("lfw-min20", "train", size=64, crop=150, split_seed=0)
    try:
        ds = load_dataset("cifar10", download=True)
    except DatasetError as e:                                        # one line: print it, exit 2
        raise SystemExit(f"error: {e}") from None

Search order, first hit wins:
  1. ``data_dir`` when given (a directory, or the zip/tarball/npz itself), and then only there:
     a typo must not silently train on other data (nor trigger a download);
  2. ``$GLASSBOX_DATA_DIR``;
  3. the system location: ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``
     package) and ``/usr/share/datasets/mnist``;
  4. ``~/.cache/glassbox`` (``$GLASSBOX_CACHE``), where an earlier download went;
  5. with ``download=True`` (or ``GLASSBOX_DOWNLOAD=1``) torchvision's download into that cache,
     for fashion-mnist, mnist and cifar10; torchvision is imported only then, so this module stays
     torch-free, and any failure (no torchvision, no network) falls through to the error.
In each directory the files may sit directly or in a subfolder named after the dataset
(``SUBDIRS``, including torchvision's own layouts). Nothing found: DatasetNotFound, whose message
names the places looked at and every way to get the data. A file found but damaged:
DatasetCorrupt naming the file (the search stops there rather than quietly use another copy).

Options: ``size`` and ``crop`` (LFW: resize target and face crop, see ``lfw.py``), ``split_seed``
(LFW's 80/20 split, default 0), ``cache`` (False: do not read/write the decoded-image cache).
"""
from __future__ import annotations

import os
from pathlib import Path

from . import cache
from .base import ArrayDataset, DatasetCorrupt, DatasetNotFound
from .cifar import TARBALL, load_pickles
from .idx import has_idx, load_idx_pair
from .imagefolder import read_imagefolder
from .lfw import DEFAULT_CROP, FOLDERS, NPZ, crop_npz, load_lfw_folders, load_lfw_npz, min_images, split_per_person
from .registry import HOW_TO_GET, SUBDIRS, SYSTEM_DIRS, dataset_info

# Reader options each dataset takes (images of the others are resized by ``preprocess``, not here).
OPTIONS = {"fashion-mnist": {"cache"}, "mnist": {"cache"}, "cifar10": {"cache"},
           "lfw": {"size", "crop", "split_seed", "cache"}, "lfw-min20": {"size", "crop", "split_seed", "cache"}}
CIFAR_ZIPS = ("cifar10-jpg.zip", "cifar10.zip", "cifar-10.zip")


def _roots(name: str, data_dir) -> list[Path]:
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    env = os.environ.get("GLASSBOX_DATA_DIR")
    return ([Path(env).expanduser()] if env else []) + SYSTEM_DIRS.get(name, []) + [cache.cache_dir()]


def _read_cifar(source: Path, split: str, use_cache: bool) -> ArrayDataset | None:
    if source.is_file():  # data_dir may name the zip or tarball itself
        if source.name.endswith((".tar.gz", ".tgz")):
            x, y, classes = load_pickles(source, split)
        elif source.suffix == ".zip":
            x, y, classes = read_imagefolder(source, split, use_cache=use_cache, stem="cifar10")
        else:
            return None
    elif (source / "batches.meta").is_file():
        x, y, classes = load_pickles(source, split)
    elif zips := [source / z for z in CIFAR_ZIPS if (source / z).is_file()]:
        x, y, classes = read_imagefolder(zips[0], split, use_cache=use_cache, stem="cifar10")
    elif (source / "train").is_dir() or (source / "test").is_dir():
        x, y, classes = read_imagefolder(source, split, use_cache=use_cache, stem="cifar10")
    elif (source / TARBALL).is_file():
        x, y, classes = load_pickles(source / TARBALL, split)
    else:
        return None
    return ArrayDataset(x, y, classes, "cifar10")


def _read_lfw(name: str, d: Path, split: str, options: dict) -> ArrayDataset | None:
    info = dataset_info(name)
    size = int(options.get("size", info["size"][0]))
    min_count = 20 if name == "lfw-min20" else 1
    if d.is_file():
        npz = d if d.suffix == ".npz" else None
        folder = None
    else:
        npz = next((d / f for f in NPZ[name] if (d / f).is_file()), None)
        # next(glob) stops at the first match: no walk over 13,233 files just to look
        folder = next((d / f for f in FOLDERS if (d / f).is_dir() and next((d / f).glob("*/*.jpg"), None)), None)
    if npz is not None and folder is None and "crop" in options:  # a tighter crop of the npz's own
        x, y, names = load_lfw_npz(npz)
        try:
            x = crop_npz(x, options["crop"], size)
        except ValueError as e:
            raise DatasetNotFound(f"{name}: {e}; that crop needs the per-person JPEG folders (lfw/ or "
                                  f"lfw-deepfunneled/), but {d} only has {npz.name}") from None
    elif npz is not None and "crop" not in options:
        x, y, names = load_lfw_npz(npz)
    elif folder is not None:
        x, y, names = load_lfw_folders(folder, size, options.get("crop", DEFAULT_CROP),
                                       use_cache=options.get("cache", True))
    else:
        return None
    if min_count > 1:
        x, y, names = min_images(x, y, names, min_count)
    if x.shape[1:3] != (size, size):
        from .transforms import resize
        x = resize(x, (size, size))
    idx = split_per_person(y, split, seed=int(options.get("split_seed", 0)))
    return ArrayDataset(x[idx], y[idx], names, name)


def _try_read(name: str, d: Path, split: str, options: dict) -> ArrayDataset | None:
    """The dataset from directory (or file) ``d``, or None when ``d`` does not hold it."""
    if name in ("fashion-mnist", "mnist"):
        if d.is_dir() and has_idx(d, split):
            x, y = load_idx_pair(d, split)
            return ArrayDataset(x, y, dataset_info(name)["classes"], name)
        return None
    if not d.exists():
        return None
    if name == "cifar10":
        return _read_cifar(d, split, options.get("cache", True))
    return _read_lfw(name, d, split, options)


def _download(name: str) -> Path | None:
    """torchvision's download into the cache; the folder it left the files in, or None."""
    try:  # lazily, and only here: the readers stay numpy-only
        from torchvision import datasets as tvd
    except Exception:  # ImportError, or a broken torch install
        return None
    spec = {"fashion-mnist": ("FashionMNIST", "FashionMNIST/raw"), "mnist": ("MNIST", "MNIST/raw"),
            "cifar10": ("CIFAR10", "cifar-10-batches-py")}.get(name)
    if spec is None:
        return None
    root = cache.cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        cls = getattr(tvd, spec[0])
        cls(str(root), train=True, download=True)
        cls(str(root), train=False, download=True)
    except Exception:  # no network, proxy, checksum, disk full: fall through to the clear error
        return None
    return root / spec[1]


def reader_options(ds_cfg: dict) -> dict:
    """The reader options a run config's ``dataset`` table sets (LFW: ``size``, ``crop``), for
    ``load_dataset(name, split, **reader_options(cfg["dataset"]))``; unset (None) keys are left out."""
    out = {k: ds_cfg[k] for k in ("size", "crop") if ds_cfg.get(k) is not None and k in OPTIONS.get(ds_cfg["name"], ())}
    if isinstance(out.get("size"), (list, tuple)):  # the resolved config records [H, W]
        out["size"] = int(out["size"][0])
    return out


def load_dataset(name: str, split: str = "train", data_dir: str | os.PathLike | None = None,
                 download: bool = False, **options) -> ArrayDataset:
    """Read ``split`` ("train" or "test") of dataset ``name``; raise DatasetNotFound/DatasetCorrupt."""
    dataset_info(name)  # unknown names fail here, with the list of known ones
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if unknown := set(options) - OPTIONS[name]:
        raise TypeError(f"load_dataset({name!r}) got unknown options {sorted(unknown)}; "
                        f"it takes {sorted(OPTIONS[name])}")
    download = download or os.environ.get("GLASSBOX_DOWNLOAD", "").lower() in ("1", "true", "yes")
    roots = _roots(name, data_dir)
    try:
        for root in roots:
            for sub in SUBDIRS[name]:
                if (ds := _try_read(name, root / sub if sub else root, split, options)) is not None:
                    return ds
        if download and data_dir is None and (d := _download(name)) is not None:
            if (ds := _try_read(name, d, split, options)) is not None:
                return ds
    except DatasetCorrupt as e:
        raise DatasetCorrupt(f"{e}. To get a good copy of {name}: {HOW_TO_GET[name]}.") from None
    looked = ", ".join(dict.fromkeys(str(r) for r in roots))
    raise DatasetNotFound(f"{name} ({split} split) not found in {looked} (nor in a subfolder named after it). "
                          f"To get it: {HOW_TO_GET[name]}.")

