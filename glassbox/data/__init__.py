"""Datasets as numpy arrays: readers for the real formats, splits and ``preprocess``.

    from glassbox.data import load_dataset, preprocess, dataset_info, train_val_split
    ds = load_dataset("fashion-mnist", split="test")      # ArrayDataset: images uint8, labels int64
    info = dataset_info("fashion-mnist")                   # classes, channels, size, mean, std
    x = preprocess(ds.images, {"channels": 1, "size": info["size"], "mean": info["mean"], "std": info["std"]})
    train, val = train_val_split(load_dataset("fashion-mnist"), val_fraction=0.1, seed=0)

numpy and Pillow only, no torch anywhere at import time, so the server and the analysis CLI use the
same readers and the same ``preprocess`` as training. (The optional torchvision download is
imported inside a function, only when asked for.)

Modules: ``base`` (ArrayDataset, errors), ``registry`` (DATASETS, dataset_info, where to find
them), ``datasets`` (load_dataset, the search order), ``idx``, ``cifar``, ``imagefolder``,
``lfw`` (the readers), ``cache`` (decoded-image npz cache), ``splits``, ``longtail`` (long-tailed sets,
rebalancing, head/tail accuracy), ``transforms``.
"""
from .base import ArrayDataset, DatasetCorrupt, DatasetError, DatasetNotFound
from .datasets import load_dataset, reader_options
from .longtail import head_tail_accuracy, longtail_spec, rebalance, rebalance_spec
from .registry import DATASETS, dataset_info
from .splits import class_balanced_sample, longtail, random_subset, train_val_split
from .transforms import preprocess

__all__ = ["DATASETS", "ArrayDataset", "DatasetCorrupt", "DatasetError", "DatasetNotFound", "dataset_info",
           "load_dataset", "reader_options",
           "class_balanced_sample", "longtail", "random_subset", "train_val_split", "preprocess",
           "head_tail_accuracy", "longtail_spec", "rebalance", "rebalance_spec"]
