"""Dataset readers on tiny files written in each real format, and on the real data."""
import gzip
import io
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from training.data import (DatasetCorrupt, DatasetNotFound, class_balanced_sample, dataset_info, load_dataset,
                           longtail, preprocess, random_subset, train_val_split)
from training.data.datasets import SYSTEM_DIRS

RNG = np.random.default_rng(0)


def idx_bytes(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + np.array(arr.shape, ">u4").tobytes() + arr.astype(np.uint8).tobytes()


def write_idx(d, n=20, gz=True, split="train"):
    d.mkdir(parents=True, exist_ok=True)
    x = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    y = np.arange(n) % 10
    stem = "train" if split == "train" else "t10k"
    for name, arr in ((f"{stem}-images-idx3-ubyte", x), (f"{stem}-labels-idx1-ubyte", y)):
        data = idx_bytes(arr)
        (d / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    return x, y


def jpg(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")  # lossless, so pixels can be compared exactly
    return buf.getvalue()


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_tiny(tmp_path, gz):
    x, y = write_idx(tmp_path, gz=gz)
    ds = load_dataset("fashion-mnist", "train", data_dir=tmp_path)
    assert np.array_equal(ds.images, x) and np.array_equal(ds.labels, y)
    assert ds.classes[0] == "T-shirt/top" and ds.name == "fashion-mnist"
    write_idx(tmp_path / "mnist", gz=gz)  # a subfolder named after the dataset works too
    assert len(load_dataset("mnist", "train", data_dir=tmp_path)) == 20


def test_idx_corrupt_and_truncated(tmp_path):
    write_idx(tmp_path, gz=False)
    f = tmp_path / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(DatasetCorrupt, match="truncated"):
        load_dataset("fashion-mnist", "train", data_dir=tmp_path)
    f.write_bytes(b"\x00\x00\x09\x03" + b"\x00" * 100)
    with pytest.raises(DatasetCorrupt, match="magic"):
        load_dataset("fashion-mnist", "train", data_dir=tmp_path)
    (tmp_path / "g").mkdir()
    write_idx(tmp_path / "g")
    (tmp_path / "g" / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DatasetCorrupt, match="cannot read"):
        load_dataset("fashion-mnist", "train", data_dir=tmp_path / "g")


def test_missing_dataset_names_every_remedy(tmp_path, monkeypatch):
    monkeypatch.delenv("GLASSBOX_DATA_DIR", raising=False)
    with pytest.raises(DatasetNotFound) as e:
        load_dataset("fashion-mnist", "train", data_dir=tmp_path)
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg and "GLASSBOX_DATA_DIR" in msg
    assert str(tmp_path) in msg and "\n" not in msg
    with pytest.raises(DatasetNotFound, match="known datasets"):
        load_dataset("imagenet")


def test_search_order(tmp_path, monkeypatch):
    explicit, env, system = tmp_path / "explicit", tmp_path / "env", tmp_path / "system"
    write_idx(explicit, n=10)
    write_idx(env, n=20)
    write_idx(system, n=30)
    monkeypatch.setitem(SYSTEM_DIRS, "fashion-mnist", [system])
    monkeypatch.setenv("GLASSBOX_DATA_DIR", str(env))
    assert len(load_dataset("fashion-mnist", data_dir=explicit)) == 10
    assert len(load_dataset("fashion-mnist")) == 20
    monkeypatch.setenv("GLASSBOX_DATA_DIR", str(tmp_path / "empty"))
    assert len(load_dataset("fashion-mnist")) == 30
    monkeypatch.delenv("GLASSBOX_DATA_DIR")
    assert len(load_dataset("fashion-mnist")) == 30


def test_cifar_pickles(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    pickle.dump({b"label_names": [c.encode() for c in dataset_info("cifar10")["classes"]]}, open(d / "batches.meta", "wb"))
    planes = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = RNG.integers(0, 256, (4, 3072), dtype=np.uint8)
        planes[name] = data
        pickle.dump({b"data": data, b"labels": [1, 2, 3, 4]}, open(d / name, "wb"))
    train = load_dataset("cifar10", "train", data_dir=tmp_path)
    assert train.images.shape == (20, 32, 32, 3) and train.classes[9] == "truck"
    # Channel-planar rows: the first 1024 bytes are the red plane.
    assert np.array_equal(train.images[0, :, :, 0].ravel(), planes["data_batch_1"][0, :1024])
    assert len(load_dataset("cifar10", "test", data_dir=tmp_path)) == 4


@pytest.mark.parametrize("as_zip", [False, True])
def test_cifar_imagefolder(tmp_path, monkeypatch, as_zip):
    monkeypatch.setattr("training.data.cifar.CACHE", tmp_path / "cache")
    imgs = {}
    files = {}
    for split in ("train", "test"):
        for c in ("cat", "airplane"):
            a = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            imgs[(split, c)] = a
            files[f"cifar/{split}/{c}/0001.png" if as_zip else f"{split}/{c}/0001.png"] = jpg(a)
    root = tmp_path / "data"
    root.mkdir()
    if as_zip:
        with zipfile.ZipFile(root / "cifar10-jpg.zip", "w") as z:
            for n, b in files.items():
                z.writestr(n, b)
    else:
        for n, b in files.items():
            (root / n).parent.mkdir(parents=True, exist_ok=True)
            (root / n).write_bytes(b)
    ds = load_dataset("cifar10", "test", data_dir=root)
    assert ds.classes == ["airplane", "cat"] and list(ds.labels) == [0, 1]
    assert np.array_equal(ds.images[1], imgs[("test", "cat")])
    assert np.array_equal(load_dataset("cifar10", "test", data_dir=root).images, ds.images)  # from the cache


def test_lfw_npz_and_folders(tmp_path):
    names = np.array(["Ann_A", "Bob_B"])
    x = RNG.integers(0, 256, (25, 32, 32, 3), dtype=np.uint8)
    y = np.array([0] * 20 + [1] * 5)
    np.savez(tmp_path / "lfw-deepfunneled-32.npz", x=x, y=y, names=names)
    train, test = (load_dataset("lfw", s, data_dir=tmp_path) for s in ("train", "test"))
    assert len(train) + len(test) == 25 and train.classes == ["Ann_A", "Bob_B"] and len(test) == 5
    folders = tmp_path / "f" / "lfw"
    for person, n in (("Ann_A", 20), ("Bob_B", 3)):
        (folders / person).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(RNG.integers(0, 256, (250, 250, 3), dtype=np.uint8)).save(folders / person / f"{person}_{i:04d}.jpg")
    ds = load_dataset("lfw-min20", "train", data_dir=tmp_path / "f", size=48)
    assert ds.images.shape[1:] == (48, 48, 3) and ds.classes == ["Ann_A"] and len(ds) == 16


def test_real_fashion_mnist(fmnist_dir):
    train = load_dataset("fashion-mnist", "train", data_dir=fmnist_dir)
    test = load_dataset("fashion-mnist", "test", data_dir=fmnist_dir)
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    assert np.array_equal(np.bincount(train.labels), [6000] * 10)
    mean = train.images.mean() / 255
    assert abs(mean - dataset_info("fashion-mnist")["mean"][0]) < 1e-3


def test_real_mnist(shared_data):
    test = load_dataset("mnist", "test", data_dir=shared_data)
    assert test.images.shape == (10000, 28, 28) and set(np.unique(test.labels)) == set(range(10))


def test_preprocess():
    gray = np.full((2, 4, 4), 255, np.uint8)
    x = preprocess(gray, {"channels": 3, "size": [8, 8], "mean": [0.5] * 3, "std": [0.25] * 3})
    assert x.shape == (2, 3, 8, 8) and x.dtype == np.float32 and np.allclose(x, 2.0)
    rgb = np.zeros((1, 5, 5, 3), np.uint8)
    rgb[..., 0] = 255
    g = preprocess(rgb, {"channels": 1, "size": [5, 5], "mean": [0.0], "std": [1.0]})
    assert g.shape == (1, 1, 5, 5) and np.allclose(g, 76 / 255)  # 0.299 * 255, rounded
    with pytest.raises(ValueError, match="uint8"):
        preprocess(np.zeros((1, 5, 5), np.float32), {"channels": 1, "size": [5, 5], "mean": [0], "std": [1]})


def test_splits_are_seeded_disjoint_and_counted():
    from training.data import ArrayDataset
    ds = ArrayDataset(np.arange(1000, dtype=np.uint8).reshape(1000, 1, 1) % 255, np.arange(1000) % 10, list("abcdefghij"), "t")
    ds.images = np.arange(1000).reshape(1000, 1, 1)  # unique ids, to check disjointness
    tr, va = train_val_split(ds, 0.1, seed=1)
    assert len(va) == 100 and not set(tr.images.ravel()) & set(va.images.ravel())
    assert np.array_equal(np.bincount(va.labels), [10] * 10)
    assert np.array_equal(train_val_split(ds, 0.1, seed=1)[1].images, va.images)
    assert not np.array_equal(train_val_split(ds, 0.1, seed=2)[1].images, va.images)
    assert len(random_subset(ds, 100, seed=0)) == 100
    lt = longtail(ds, seed=0)
    assert list(np.bincount(lt.labels)) == [10] * 5 + [100] * 5
    bal = class_balanced_sample(ds, 7, seed=0)
    assert list(np.bincount(bal.labels)) == [7] * 10


def test_readers_import_without_torch():
    code = "import sys; sys.modules['torch'] = None; import training.data; print('ok')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
