"""A run's data: its splits loaded, preprocessed once and held as tensors on the device.

    from training.datasets import load_data, load_split, preprocessing_spec, to_tensors
    train_ds, val_ds = load_data(cfg)                 # the training split, less the validation split
    x, y = to_tensors(train_ds, preprocessing_spec(cfg, model), device)

Images are preprocessed by the same numpy ``glassbox.data.preprocess`` the server uses; a batch is
then one index-gather, so there is no per-sample Python on the training hot path. Model selection
uses the validation split only; the test split is scored once, at the end.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn as nn

from glassbox import data as D

from .tasks import task_of


def preprocessing_spec(cfg: dict, model: nn.Module) -> dict:
    """The normalization recorded with the model; the manifest copies it for the server."""
    c, size = model.in_chans, model.img_size
    if task_of(cfg).unit_pixels or not cfg["dataset"].get("normalize", True):
        mean, std = [0.0] * c, [1.0] * c  # pixels in [0, 1], as the reports' linear models saw them
    else:
        info = D.dataset_info(cfg["dataset"]["name"])
        mean, std = list(info["mean"]), list(info["std"])
        if len(mean) != c:  # gray dataset into an RGB model or the reverse
            mean, std = [float(np.mean(mean))] * c, [float(np.mean(std))] * c
    return {"channels": c, "size": [size, size], "mean": mean, "std": std}


def load_split(cfg: dict, split: str) -> D.ArrayDataset:
    """The ``train`` or ``test`` split as the config cuts it (long-tail, subsets)."""
    ds_cfg = cfg["dataset"]
    ds = D.load_dataset(ds_cfg["name"], split=split, data_dir=ds_cfg.get("data_dir"), **D.reader_options(ds_cfg))
    if split == "train":
        if ds_cfg.get("longtail"):
            ds = D.longtail(ds, **D.longtail_spec(ds_cfg["longtail"]), seed=cfg["seed"])
        if ds_cfg.get("subset"):
            ds = D.random_subset(ds, int(ds_cfg["subset"]), seed=cfg["seed"])
    elif ds_cfg.get("test_subset"):
        ds = D.random_subset(ds, int(ds_cfg["test_subset"]), seed=cfg["seed"])
    return ds


def load_data(cfg: dict) -> tuple[D.ArrayDataset, D.ArrayDataset]:
    """The training and validation splits; the short classes are rebalanced after the split, so no
    copy of a validation image is trained on."""
    train, val = D.train_val_split(load_split(cfg, "train"), float(cfg["dataset"]["val_fraction"]), seed=cfg["seed"])
    return D.rebalance(train, cfg["dataset"].get("rebalance"), seed=cfg["seed"]), val


def describe_data(cfg: dict, spec: dict, train: D.ArrayDataset, val: D.ArrayDataset) -> dict:
    """The config's ``dataset`` table with what the run resolved: classes and their counts, the
    normalization, the split sizes and the validation split's fingerprint."""
    return {**cfg["dataset"], "classes": list(train.classes), "channels": spec["channels"],
            "class_counts": np.bincount(train.labels, minlength=len(train.classes)).tolist(),
            "size": spec["size"], "mean": spec["mean"], "std": spec["std"],
            "train_images": len(train), "val_images": len(val), "val_fingerprint": fingerprint(val)}


def to_tensors(ds: D.ArrayDataset, spec: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(D.preprocess(ds.images, spec)).to(device)
    return x, torch.from_numpy(np.asarray(ds.labels, dtype=np.int64)).to(device)


def fingerprint(ds: D.ArrayDataset) -> str:
    """A short hash of a split's images and labels: resume refuses to continue on a different split."""
    h = hashlib.sha256(np.ascontiguousarray(ds.images).tobytes())
    h.update(np.ascontiguousarray(ds.labels).tobytes())
    return h.hexdigest()[:16]
