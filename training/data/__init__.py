"""Datasets as numpy arrays: readers for the real formats, splits and ``preprocess``.

    from training.data import load_dataset, preprocess, dataset_info
    ds = load_dataset("fashion-mnist", split="test")
    x = preprocess(ds.images, {"channels": 1, "size": [28, 28], "mean": [0.286], "std": [0.353]})

numpy and Pillow only (no torch), so the server and the analysis CLI use the same code.
"""
from .base import DATASETS, ArrayDataset, DatasetCorrupt, DatasetError, DatasetNotFound, dataset_info
from .datasets import load_dataset
from .splits import class_balanced_sample, longtail, random_subset, train_val_split
from .transforms import preprocess

__all__ = ["DATASETS", "ArrayDataset", "DatasetCorrupt", "DatasetError", "DatasetNotFound", "dataset_info",
           "load_dataset", "class_balanced_sample", "longtail", "random_subset", "train_val_split", "preprocess"]
