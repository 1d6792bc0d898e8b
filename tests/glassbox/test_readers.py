"""The dataset readers and splits called directly (``glassbox.data.idx``, ``cifar``, ``splits``), at the
edges test_data.py goes around through ``load_dataset``: every corrupt-file message word for word,
off-by-one boundaries (a header exactly, label 9 of 10, n == len), byte order, the file search order.
"""
from __future__ import annotations

import gzip
import io
import pickle
import tarfile

import numpy as np
import pytest

from glassbox.data import ArrayDataset, DatasetCorrupt, cifar, idx
from glassbox.data.splits import (
    _rank_within_class,
    class_balanced_sample,
    longtail,
    random_subset,
    stratified_mask,
    train_val_split,
)
from tests.helpers.data import CIFAR_CLASSES, idx_bytes, write_cifar_pickles

# --- IDX ------------------------------------------------------------------------------------------


def write(path, data: bytes, gz: bool = False):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_reads_values_shape_and_big_endian_dims(tmp_path, gz):
    """Dimensions above 255 need all four big-endian bytes (a little-endian read would be 300 -> 739,573,760)."""
    a = (np.arange(300 * 2 * 3) % 251).astype(np.uint8).reshape(300, 2, 3)
    f = write(tmp_path / ("x.gz" if gz else "x"), idx_bytes(a), gz)
    got = idx.read_idx(f, 3)
    assert got.shape == (300, 2, 3) and got.dtype == np.uint8 and np.array_equal(got, a)
    got[0, 0, 0] = 7  # writable, like any other array
    labels = idx.read_idx(write(tmp_path / "y", idx_bytes(np.arange(256 + 5) % 10)), 1)
    assert labels.shape == (261,) and labels[-1] == 260 % 10


def test_read_idx_accepts_a_file_that_is_exactly_a_header(tmp_path):
    """Zero items: the file ends right after the header, which is valid (an empty array)."""
    got = idx.read_idx(write(tmp_path / "y", bytes([0, 0, 8, 1]) + (0).to_bytes(4, "big")), 1)
    assert got.shape == (0,)


@pytest.mark.parametrize(("magic", "message"), [
    (b"", "not an IDX file (bad magic number empty)"),
    (b"\x00\x00\x08", "not an IDX file (bad magic number 000008)"),
    (b"\x01\x00\x08\x03", "not an IDX file (bad magic number 01000803)"),
    (b"\x00\x01\x08\x03", "not an IDX file (bad magic number 00010803)"),
    (b"\x00\x00\x0d\x03", "bad magic number 00000d03: expected 3-d uint8 IDX (magic 00000803)"),
    (b"\x00\x00\x08\x01", "bad magic number 00000801: expected 3-d uint8 IDX (magic 00000803)"),
    (b"\x00\x00\x08\x03", "truncated inside the header (4 bytes)"),
    (b"\x00\x00\x08\x03" + bytes(11), "truncated inside the header (15 bytes)"),
])
def test_read_idx_names_what_is_wrong_with_the_header(tmp_path, magic, message):
    f = write(tmp_path / "x", magic)
    with pytest.raises(DatasetCorrupt) as e:
        idx.read_idx(f, 3)
    assert str(e.value) == f"{f}: {message}"


@pytest.mark.parametrize(("cut", "message"), [
    (-1, "truncated: the header says 2x3x4 = 24 bytes of data, the file has 23"),
    (1, "has trailing bytes: the header says 2x3x4 = 24 bytes of data, the file has 25"),
])
def test_read_idx_checks_the_size_against_the_header(tmp_path, cut, message):
    data = idx_bytes(np.zeros((2, 3, 4)))
    f = write(tmp_path / "x", data[:cut] if cut < 0 else data + b"\x00")
    with pytest.raises(DatasetCorrupt) as e:
        idx.read_idx(f, 3)
    assert str(e.value) == f"{f}: {message}"


@pytest.mark.parametrize("data", [b"not gzip", gzip.compress(b"x" * 100, mtime=0)[:20], b"\x1f\x8b" + bytes(30)])
def test_read_idx_refuses_a_bad_gzip_in_one_line(tmp_path, data):
    f = write(tmp_path / "x.gz", data)
    with pytest.raises(DatasetCorrupt, match=rf"^{f}: cannot read \((BadGzipFile|EOFError|error|OSError): ") as e:
        idx.read_idx(f, 1)
    assert "\n" not in str(e.value)


def test_an_unreadable_path_is_a_dataset_error(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(DatasetCorrupt, match=rf"^{tmp_path / 'dir'}: cannot read \(IsADirectoryError: "):
        idx.read_idx(tmp_path / "dir", 1)


def test_find_idx_prefers_gzip_then_raw_then_the_dotted_spelling(tmp_path):
    stem = "train-images-idx3-ubyte"
    assert idx.find_idx(tmp_path, stem) is None
    for name in ("train-images.idx3-ubyte", "train-images.idx3-ubyte.gz", stem, stem + ".gz"):
        write(tmp_path / name, b"")
    found = []
    for name in (stem + ".gz", stem, "train-images.idx3-ubyte.gz", "train-images.idx3-ubyte"):
        found.append(idx.find_idx(tmp_path, stem).name)
        (tmp_path / name).unlink()
    assert found == [stem + ".gz", stem, "train-images.idx3-ubyte.gz", "train-images.idx3-ubyte"]
    assert idx.find_idx(tmp_path, stem) is None
    (tmp_path / (stem + ".gz")).mkdir()  # a directory of that name is not the file
    assert idx.find_idx(tmp_path, stem) is None


def pair(d, images, labels, split="train"):
    stem = "train" if split == "train" else "t10k"
    write(d / f"{stem}-images-idx3-ubyte", idx_bytes(images))
    write(d / f"{stem}-labels-idx1-ubyte", idx_bytes(labels))


def test_load_idx_pair_returns_uint8_images_and_int64_labels(tmp_path):
    x = np.arange(3 * 2 * 2, dtype=np.uint8).reshape(3, 2, 2)
    pair(tmp_path, x, [0, 9, 5], split="test")
    images, labels = idx.load_idx_pair(tmp_path, "test")
    assert np.array_equal(images, x) and labels.dtype == np.int64 and labels.tolist() == [0, 9, 5]
    assert idx.has_idx(tmp_path, "test") and not idx.has_idx(tmp_path, "train")
    # label 9 is the last valid one of 10 classes; with num_classes=11, 10 is valid too
    pair(tmp_path, x, [0, 10, 5])
    assert idx.load_idx_pair(tmp_path, "train", num_classes=11)[1].tolist() == [0, 10, 5]
    # no images, no labels: valid and empty
    pair(tmp_path, np.zeros((0, 2, 2)), np.zeros(0))
    images, labels = idx.load_idx_pair(tmp_path, "train")
    assert images.shape == (0, 2, 2) and labels.shape == (0,)


def test_load_idx_pair_refusals(tmp_path):
    x = np.zeros((3, 2, 2), np.uint8)
    img, lab = tmp_path / "train-images-idx3-ubyte", tmp_path / "train-labels-idx1-ubyte"
    pair(tmp_path, x, [0, 10, 5])
    with pytest.raises(DatasetCorrupt) as e:
        idx.load_idx_pair(tmp_path, "train")
    assert str(e.value) == f"{lab}: label 10 out of range 0..9"
    with pytest.raises(DatasetCorrupt, match=r"label 10 out of range 0\.\.4$"):
        idx.load_idx_pair(tmp_path, "train", num_classes=5)
    pair(tmp_path, x, [0, 1])
    with pytest.raises(DatasetCorrupt) as e:
        idx.load_idx_pair(tmp_path, "train")
    assert str(e.value) == f"{img} has 3 images but {lab} has 2 labels"
    for shape in ((3, 0, 2), (3, 2, 0)):
        pair(tmp_path, np.zeros(shape), [0, 1, 2])
        with pytest.raises(DatasetCorrupt) as e:
            idx.load_idx_pair(tmp_path, "train")
        assert str(e.value) == f"{img}: images of size {shape[1]}x{shape[2]}"
    lab.unlink()
    with pytest.raises(DatasetCorrupt) as e:
        idx.load_idx_pair(tmp_path, "train")
    assert str(e.value) == f"{tmp_path}: has only one of train-images-idx3-ubyte and train-labels-idx1-ubyte"
    assert idx.has_idx(tmp_path, "train")  # a lone file still counts as "there", to be reported as corrupt
    img.unlink()
    write(lab, idx_bytes(np.zeros(3)))
    with pytest.raises(DatasetCorrupt, match="has only one of"):
        idx.load_idx_pair(tmp_path, "train")


# --- CIFAR-10 pickles -----------------------------------------------------------------------------

def batch(data, labels) -> bytes:
    return pickle.dumps({b"data": data, b"labels": labels})


def test_unpickle_allows_numpy_arrays_and_scalars_only():
    d = cifar._unpickle(pickle.dumps({b"a": np.arange(3, dtype=np.uint8), b"s": np.int64(4),
                                      b"t": np.dtype("float32")}), "w")
    assert d[b"a"].tolist() == [0, 1, 2] and d[b"s"] == 4 and d[b"t"] == np.float32
    with pytest.raises(DatasetCorrupt) as e:
        cifar._unpickle(pickle.dumps({b"x": print}), "where")
    assert str(e.value) == ("where: not a CIFAR-10 python pickle (UnpicklingError: global builtins.print is not "
                            "allowed in a CIFAR-10 batch)")
    import collections
    with pytest.raises(DatasetCorrupt, match=r"global collections\.OrderedDict is not allowed in a CIFAR-10 batch\)$"):
        cifar._unpickle(pickle.dumps(collections.OrderedDict()), "w")


def test_unpickle_refuses_truncated_and_non_dict_pickles():
    good = pickle.dumps({b"labels": [1, 2]})
    with pytest.raises(DatasetCorrupt, match=r"^w: not a CIFAR-10 python pickle \((EOFError|UnpicklingError): "):
        cifar._unpickle(good[:-3], "w")
    with pytest.raises(DatasetCorrupt) as e:
        cifar._unpickle(pickle.dumps([1, 2]), "w")
    assert str(e.value) == "w: not a CIFAR-10 python pickle (a list, not a dict)"
    # bytes keys (encoding="bytes"), as the official files have them
    assert cifar._unpickle(pickle.dumps({"k": "v"}), "w") == {"k": "v"}


def test_batch_reshapes_channel_planar_rows_to_hwc():
    data = np.zeros((2, 3072), np.uint8)
    data[1, :1024] = 10      # red plane
    data[1, 1024:2048] = 20  # green
    data[1, 2048:] = 30      # blue
    data[0, 1] = 99          # red, row 0, column 1
    x, y = cifar._batch({b"data": data, b"labels": [0, 9]}, "w")
    assert x.shape == (2, 32, 32, 3) and y.dtype == np.int64 and y.tolist() == [0, 9]
    assert x[1, 5, 7].tolist() == [10, 20, 30] and x[0, 0, 1, 0] == 99 and x[0, 0, 1, 1] == 0


@pytest.mark.parametrize(("d", "message"), [
    ({b"labels": [0]}, "w: a CIFAR-10 batch needs 'data' and 'labels' (b'data')"),
    ({b"data": np.zeros((1, 3072), np.uint8)}, "w: a CIFAR-10 batch needs 'data' and 'labels' (b'labels')"),
    ({b"data": np.zeros((1, 3072), np.int64), b"labels": [0]}, "w: data is int64[1, 3072], expected uint8 [N, 3072]"),
    ({b"data": np.zeros((3072,), np.uint8), b"labels": [0]}, "w: data is uint8[3072], expected uint8 [N, 3072]"),
    ({b"data": np.zeros((1, 3071), np.uint8), b"labels": [0]}, "w: data is uint8[1, 3071], expected uint8 [N, 3072]"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "w: 1 labels in 0..0 for 2 images, expected 2 in 0..9"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]},
     "w: 2 labels in 0..10 for 2 images, expected 2 in 0..9"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [-1, 9]},
     "w: 2 labels in -1..9 for 2 images, expected 2 in 0..9"),
    ({b"data": np.zeros((1, 3072), np.uint8), b"labels": []}, "w: 0 labels in -..- for 1 images, expected 1 in 0..9"),
    ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [[0]]},
     "w: 1 labels in 0..0 for 1 images, expected 1 in 0..9"),
])
def test_batch_refusals(d, message):
    with pytest.raises(DatasetCorrupt) as e:
        cifar._batch(d, "w")
    assert str(e.value) == message


def test_batch_accepts_an_empty_batch():
    x, y = cifar._batch({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, "w")
    assert x.shape == (0, 32, 32, 3) and y.shape == (0,)


def test_load_pickles_from_a_folder_and_a_tarball(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    batches = write_cifar_pickles(d, per_batch=2)
    x, y, classes = cifar.load_pickles(d, "train")
    assert x.shape == (10, 32, 32, 3) and x.flags.c_contiguous and classes == CIFAR_CLASSES
    assert y.tolist() == [v for i in range(1, 6) for v in batches[f"data_batch_{i}"][1]]
    tar = tmp_path / "c.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        t.add(d, arcname="cifar-10-batches-py")
    xt, yt, ct = cifar.load_pickles(tar, "test")
    assert xt.shape == (2, 32, 32, 3) and yt.tolist() == batches["test_batch"][1] and ct == CIFAR_CLASSES
    assert np.array_equal(cifar.load_pickles(str(d), "test")[0], xt)
    # label names given as str (not bytes) are kept as they are
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": ["cat", "dog"]}))
    assert cifar.load_pickles(d, "test")[2] == ["cat", "dog"]


def test_load_pickles_refusals(tmp_path):
    d = tmp_path / "b"
    write_cifar_pickles(d, per_batch=1)
    (d / "data_batch_3").unlink()
    with pytest.raises(DatasetCorrupt, match=rf"^{d / 'data_batch_3'}: cannot read \(\[Errno 2\]"):
        cifar.load_pickles(d, "train")
    (d / "batches.meta").write_bytes(pickle.dumps({b"num_vis": 3072}))
    with pytest.raises(DatasetCorrupt) as e:
        cifar.load_pickles(d, "test")
    assert str(e.value) == f"{d}: batches.meta has no label_names"
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a"]}))
    (d / "test_batch").write_bytes(batch(np.zeros((1, 5), np.uint8), [0]))
    with pytest.raises(DatasetCorrupt, match=rf"^{d}/test_batch: data is uint8\[1, 5\]"):
        cifar.load_pickles(d, "test")
    # a tarball without the split's batch, and a file that is no tarball at all
    tar = tmp_path / "c.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        info = tarfile.TarInfo("x/batches.meta")
        meta = pickle.dumps({b"label_names": [b"a"]})
        info.size = len(meta)
        t.addfile(info, io.BytesIO(meta))
    with pytest.raises(DatasetCorrupt) as e:
        cifar.load_pickles(tar, "test")
    assert str(e.value) == f"{tar}: no test_batch inside"
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b" + bytes(40))
    with pytest.raises(DatasetCorrupt, match=rf"^{bad}: not a readable tar.gz \("):
        cifar.load_pickles(bad, "test")
    with pytest.raises(DatasetCorrupt, match=r"not a readable tar.gz"):
        cifar.load_pickles(tmp_path / "absent.tar.gz", "test")


# --- splits ---------------------------------------------------------------------------------------

def ds_of(labels):
    labels = np.asarray(labels)
    return ArrayDataset(np.arange(len(labels)).reshape(-1, 1, 1), labels, [str(c) for c in range(10)], "t")


def test_rank_within_class_is_a_shuffled_0_to_count_minus_1_per_class():
    labels = np.array([3, 1, 3, 3, 1, 0, 3])
    rank, count = _rank_within_class(labels, np.random.default_rng(0))
    assert count.tolist() == [4, 2, 4, 4, 2, 1, 4]
    for c in (0, 1, 3):
        assert sorted(rank[labels == c].tolist()) == list(range((labels == c).sum()))
    ranks = {tuple(_rank_within_class(labels, np.random.default_rng(s))[0]) for s in range(20)}
    assert len(ranks) > 1, "the rank within a class is random (seeded), not the order of appearance"
    empty_rank, empty_count = _rank_within_class(np.zeros(0, np.int64), np.random.default_rng(0))
    assert empty_rank.shape == empty_count.shape == (0,)


def test_stratified_mask_rounds_per_class():
    """np.rint per class: 0.25 of 6 is 1.5 -> 2; 0.25 of 2 is 0.5 -> 0 (round half to even); of 1 -> 0."""
    labels = np.array([0] * 6 + [1] * 2 + [2])
    mask = stratified_mask(labels, 0.25, np.random.default_rng(0))
    assert mask.dtype == bool and np.bincount(labels[mask], minlength=3).tolist() == [2, 0, 0]
    assert stratified_mask(labels, 1.0, np.random.default_rng(0)).all()
    assert not stratified_mask(labels, 0.0, np.random.default_rng(0)).any()
    assert stratified_mask(list(labels), 0.5, np.random.default_rng(0)).sum() == 3 + 1 + 0


def test_train_val_split_fraction_bounds():
    ds = ds_of(np.arange(100) % 4)
    for bad in (1.0, -0.01, 1.5):
        with pytest.raises(ValueError) as e:
            train_val_split(ds, bad)
        assert str(e.value) == f"val_fraction must be in [0, 1), got {bad}"
    tr, va = train_val_split(ds, 0.99, seed=0)
    assert len(va) == 100 and len(tr) == 0  # round(0.99 * 25) = 25 of each class
    tr, va = train_val_split(ds)  # default: 10%, seed 0
    assert (len(tr), len(va)) == (92, 8)  # round(2.5) = 2 of each of the 4 classes (half to even)
    assert np.array_equal(va.images, train_val_split(ds, 0.1, seed=0)[1].images)
    assert np.all(np.diff(tr.images.ravel()) > 0) and np.all(np.diff(va.images.ravel()) > 0), "original order kept"


def test_random_subset_edges():
    ds = ds_of(np.arange(50) % 5)
    assert random_subset(ds, 50) is ds and random_subset(ds, 51) is ds
    sub = random_subset(ds, 49)
    assert len(sub) == 49 and np.all(np.diff(sub.images.ravel()) > 0)
    assert np.array_equal(sub.images, random_subset(ds, 49, seed=0).images)
    assert not np.array_equal(random_subset(ds, 10, seed=1).images, random_subset(ds, 10, seed=2).images)


def test_longtail_defaults_and_rounding():
    ds = ds_of(np.repeat(np.arange(10), 20))
    lt = longtail(ds)  # classes 0-4 keep 10% (2 of 20), the rest all
    assert np.bincount(lt.labels).tolist() == [2] * 5 + [20] * 5
    assert np.array_equal(lt.images, longtail(ds, seed=0).images)
    assert not np.array_equal(longtail(ds, seed=1).images, lt.images)
    assert np.bincount(longtail(ds, classes=[9], keep=0.5).labels).tolist() == [20] * 9 + [10]
    assert np.all(np.diff(lt.images.ravel()) > 0)


def test_class_balanced_sample_counts_and_seed():
    ds = ds_of(np.repeat(np.arange(3), [5, 1, 8]))
    bal = class_balanced_sample(ds, 3)
    assert np.bincount(bal.labels).tolist() == [3, 1, 3]
    assert np.array_equal(bal.images, class_balanced_sample(ds, 3, seed=0).images)
    assert np.all(np.diff(bal.images.ravel()) > 0)
    assert len(class_balanced_sample(ds, 0)) == 0


def test_read_idx_header_whose_size_overflows_int64(tmp_path):
    """2^31 x 2^31 x 4 = 2^64 wraps to 0 in int64: a header-only file must not pass the size check."""
    f = write(tmp_path / "x", bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (2**31, 2**31, 4)))
    with pytest.raises(DatasetCorrupt) as e:
        idx.read_idx(f, 3)
    assert str(e.value) == (f"{f}: truncated: the header says 2147483648x2147483648x4 = {2**64} bytes of data, "
                            "the file has 0")


def test_batch_refuses_a_label_beyond_int64():
    with pytest.raises(DatasetCorrupt) as e:
        cifar._batch({b"data": np.zeros((1, 3072), np.uint8), b"labels": [2**70]}, "w")
    assert str(e.value) == "w: a CIFAR-10 batch needs 'data' and 'labels' (Python int too large to convert to C long)"


def test_bad_magic_messages_show_the_first_four_bytes_only(tmp_path):
    f = write(tmp_path / "x", b"\x01\x02\x03\x04\x05\x06\x07\x08")
    with pytest.raises(DatasetCorrupt, match=r"bad magic number 01020304\)$"):
        idx.read_idx(f, 3)
    f = write(tmp_path / "y", b"\x00\x00\x08\x01\x05\x06\x07\x08")
    with pytest.raises(DatasetCorrupt, match=r"bad magic number 00000801: expected"):
        idx.read_idx(f, 3)


def test_splits_are_reproducible_from_the_seed():
    """The exact samples of a seeded split are part of a run's config: a changed shuffle or sort changes them."""
    ds = ArrayDataset(np.arange(12).reshape(-1, 1, 1), np.arange(12) % 3, ["a", "b", "c"], "t")
    assert train_val_split(ds, 0.5, seed=0)[1].images.ravel().tolist() == [0, 2, 4, 5, 7, 9]


def test_lfw_npz_with_a_scalar_label_array_is_one_corrupt_error(tmp_path):
    """A 0-d ``y`` used to reach ``len(y)`` and raise TypeError instead of the readers' one-line error."""
    from glassbox.data import DatasetCorrupt
    from glassbox.data.lfw import load_lfw_npz
    path = tmp_path / "lfw.npz"
    np.savez(path, x=np.zeros((1, 2, 2, 3), np.uint8), y=np.array(0), names=np.array(["A_Person"]))
    with pytest.raises(DatasetCorrupt, match="inconsistent arrays"):
        load_lfw_npz(path)
