"""Writers of tiny files in each real dataset format, for the reader tests.

    x, y = write_idx(tmp_path, n=20)                   # train-images-idx3-ubyte.gz + labels
    write_cifar_pickles(tmp_path / "cifar-10-batches-py")
    write_imagefolder(tmp_path / "cifar10-jpg.zip", {"train/cat/1.png": arr})
    write_lfw_folders(tmp_path / "lfw", {"Ann_A": 20})
    x, y = blobs(n_per=40, k=4)                        # separable Gaussian blobs, for the analysis metrics

Each writes bytes the way the official files are laid out (IDX headers, pickled dicts of a uint8
[N, 3072] array, per-person JPEG folders), not via the readers under test.
"""
from __future__ import annotations

import gzip
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def idx_bytes(arr: np.ndarray) -> bytes:
    """IDX: magic 0,0,0x08 (uint8),ndim; big-endian uint32 dims; the data."""
    arr = np.asarray(arr, np.uint8)
    return bytes([0, 0, 0x08, arr.ndim]) + np.array(arr.shape, ">u4").tobytes() + arr.tobytes()


def write_idx(d: Path, n: int = 20, gz: bool = True, split: str = "train", seed: int = 0):
    d.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    y = np.arange(n) % 10
    stem = "train" if split == "train" else "t10k"
    for name, arr in ((f"{stem}-images-idx3-ubyte", x), (f"{stem}-labels-idx1-ubyte", y)):
        data = idx_bytes(arr)
        (d / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    return x, y.astype(np.int64)


def write_cifar_pickles(d: Path, per_batch: int = 4, seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    """``data_batch_1..5``, ``test_batch``, ``batches.meta`` as the official python version has them."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in CIFAR_CLASSES],
                                                   b"num_vis": 3072}))
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        batches[name] = (data, labels)
        (d / name).write_bytes(pickle.dumps({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                                             b"filenames": [b"x.png"] * per_batch}))
    return batches


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")  # lossless, so pixels can be compared exactly
    return buf.getvalue()


def jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_imagefolder(target: Path, files: dict[str, bytes]) -> None:
    """A directory tree, or a stored zip when ``target`` ends in .zip (like the shared CIFAR-10 one)."""
    if target.suffix == ".zip":
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as z:
            for name, data in files.items():
                z.writestr(name, data)
        return
    for name, data in files.items():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_bytes(data)


def write_lfw_folders(root: Path, counts: dict[str, int], size: int = 250, seed: int = 0) -> None:
    """``root/<Person>/<Person>_0001.jpg`` ... with ``counts[person]`` images each."""
    rng = np.random.default_rng(seed)
    for person, n in counts.items():
        (root / person).mkdir(parents=True, exist_ok=True)
        for i in range(1, n + 1):
            arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            (root / person / f"{person}_{i:04d}.jpg").write_bytes(jpeg(arr))


def write_lfw_npz(path: Path, counts: list[int], size: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(counts)), counts).astype(np.int32)
    x = rng.integers(0, 256, (len(y), size, size, 3), dtype=np.uint8)
    names = np.array([f"Person_{i:03d}" for i in range(len(counts))])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=y, names=names)
    return x, y, names


def blobs(n_per=40, k=4, dims=8, spread=0.3, seed=0):
    """k well separated Gaussian blobs: class c is centred at 5 * e_c."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n_per)
    centres = np.zeros((k, dims))
    centres[np.arange(k), np.arange(k)] = 5.0
    return centres[y] + spread * rng.standard_normal((len(y), dims)), y
