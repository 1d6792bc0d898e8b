"""Long-tailed CIFAR-10 and ResNet-50 (report 003): the long-tail sampler, oversampling the tail by
augmentation, class-balanced sampling, the class-weighted and logit-adjusted losses, head/tail
accuracy in metrics.json and `analyze compare`, tiny runs of the cifar-* studies through their own
configs on real CIFAR-10 images, and ResNet-50's shapes, layers and export parity.

    OMP_NUM_THREADS=1 .venv/bin/pytest tests/training/test_longtail.py
"""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from glassbox.data import (
    class_balanced_sample,
    head_tail_accuracy,
    load_dataset,
    longtail,
    longtail_spec,
    rebalance,
    train_val_split,
)
from training.config import ConfigError, load_profile, resolve_config
from training.models import create_model
from training.tasks import classifier_loss, imbalance_terms

TAIL = [0, 1, 2, 3, 4]


@pytest.fixture(scope="module")
def cifar_dir(shared_data):
    return shared_data / "cifar10"


@pytest.fixture(scope="module")
def cifar_test(cifar_dir):
    return load_dataset("cifar10", "test", data_dir=cifar_dir)  # 1,000 real images per class


@pytest.fixture(scope="module")
def small_lt(cifar_test):
    """200 real images per head class, 20 per tail class."""
    return longtail(class_balanced_sample(cifar_test, 200, seed=0), classes=TAIL, keep=0.1, seed=0)


def test_longtail_keeps_a_tenth_of_the_first_five_classes(cifar_test):
    lt = longtail(cifar_test, **longtail_spec(True), seed=0)
    assert list(np.bincount(lt.labels)) == [100] * 5 + [1000] * 5
    assert np.array_equal(longtail(cifar_test, **longtail_spec(True), seed=0).images, lt.images)  # seeded
    assert not np.array_equal(longtail(cifar_test, **longtail_spec(True), seed=1).images, lt.images)
    assert list(np.bincount(longtail(cifar_test, **longtail_spec({"classes": [9], "keep": 0.25})).labels)) \
        == [1000] * 9 + [250]
    # The validation split keeps the long-tailed class shares (drawn after the reduction).
    train, val = train_val_split(lt, 0.1, seed=0)
    assert list(np.bincount(val.labels)) == [10] * 5 + [100] * 5
    assert longtail_spec(False) is None and longtail_spec(True) == {"classes": TAIL, "keep": 0.1}
    for bad in ({"keep": 0}, {"classes": []}, {"classes": [0], "kept": 0.1}, "yes"):
        with pytest.raises(ValueError):
            longtail_spec(bad)
    with pytest.raises(ConfigError, match="longtail"):
        resolve_config({"model": "cifarcnn", "dataset": {"name": "cifar10", "longtail": {"keep": 1.5}}})
    with pytest.raises(ConfigError, match="rebalance"):
        resolve_config({"model": "cifarcnn", "dataset": {"name": "cifar10", "rebalance": "smote"}})


def _nearest(copies: np.ndarray, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per copy: the smallest RMS pixel distance to any source, as is or flipped, and whether flipped."""
    c = copies.reshape(len(copies), -1).astype(np.float32)
    d = []
    for s in (sources, sources[:, :, ::-1]):
        s = s.reshape(len(s), -1).astype(np.float32)
        sq = (c ** 2).sum(1)[:, None] + (s ** 2).sum(1)[None] - 2 * c @ s.T
        d.append(np.sqrt(np.maximum(sq, 0).min(1) / c.shape[1]))
    return np.minimum(*d), d[1] < d[0]


def test_tail_oversampled_by_augmentation_reaches_the_heads_count(small_lt):
    out = rebalance(small_lt, {"method": "augment", "noise_std": 0.05}, seed=0)
    assert list(np.bincount(out.labels)) == [200] * 10  # every tail class now has the head's count
    n = len(small_lt)
    assert np.array_equal(out.images[:n], small_lt.images) and np.array_equal(out.labels[:n], small_lt.labels)
    assert set(out.labels[n:]) == set(TAIL)  # copies of the tail only; the head is untouched
    flipped = []
    for c in TAIL:
        copies, own = out.images[n:][out.labels[n:] == c], small_lt.images[small_lt.labels == c]
        dist, flip = _nearest(copies, own)
        # Each copy is one of its class's own images (or its mirror image) plus noise of std
        # 0.05 * 255 = 12.75 levels (a little less where clipping at 0 and 255 cuts it).
        assert np.all((dist > 8) & (dist < 13.5)), (c, dist.min(), dist.max())
        others = small_lt.images[small_lt.labels != c][:100]
        assert np.all(_nearest(copies, others)[0] > 2 * dist)  # not close to other images
        flipped.append(flip.mean())
    assert 0.35 < np.mean(flipped) < 0.65  # flipped with probability 0.5
    exact = rebalance(small_lt, {"method": "augment", "noise_std": 0.0}, seed=0)
    own = small_lt.images[small_lt.labels == 0]
    originals = {img.tobytes() for img in own} | {img[:, ::-1].tobytes() for img in own}
    assert all(img.tobytes() in originals for img in exact.images[n:][exact.labels[n:] == 0])  # exact without noise
    assert np.array_equal(rebalance(small_lt, {"method": "augment"}, seed=0).images, out.images)  # seeded


def test_class_balanced_sampling_repeats_each_tail_image_evenly(small_lt):
    out = rebalance(small_lt, "oversample", seed=0)
    assert list(np.bincount(out.labels)) == [200] * 10
    keys = [img.tobytes() for img in small_lt.images]
    counts = {k: 0 for k in keys}
    for img in out.images:
        counts[img.tobytes()] += 1  # KeyError: a copy that is not an original image
    per_class = {c: {counts[k] for k, y in zip(keys, small_lt.labels, strict=True) if y == c} for c in range(10)}
    assert all(per_class[c] == {10} for c in TAIL) and all(per_class[c] == {1} for c in range(5, 10))
    assert rebalance(small_lt, "none") is small_lt
    balanced = class_balanced_sample(small_lt, 20)
    assert rebalance(balanced, "augment") is balanced  # nothing to rebalance


def _cfg(**loss) -> dict:
    cfg = resolve_config({"model": "logreg", "loss": loss})
    cfg["dataset"]["class_counts"] = [90, 10]
    return cfg


def test_class_weighted_and_logit_adjusted_losses():
    torch.manual_seed(0)
    logits, y = torch.randn(8, 2), torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])
    _, w = imbalance_terms(logits, _cfg(class_weights="balanced"))
    torch.testing.assert_close(w, torch.tensor([100 / (2 * 90), 100 / (2 * 10)]))  # n / (classes * count)
    assert torch.isclose(w[0] * 90, w[1] * 10)  # each class weighs the same in total
    adjusted, w = imbalance_terms(logits, _cfg(logit_adjust=1.0))
    torch.testing.assert_close(adjusted - logits, torch.log(torch.tensor([0.9, 0.1])).expand(8, 2))
    assert w is None and imbalance_terms(logits, _cfg())[0] is logits

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    x = torch.randn(8, 1, 2, 2)
    cfg = _cfg(class_weights="balanced")
    model.train()
    torch.testing.assert_close(classifier_loss(model, x, y, cfg)[0],
                               F.cross_entropy(model(x), y, weight=torch.tensor([100 / 180, 100 / 20])))
    model.eval()  # validation and test losses stay the plain cross-entropy
    torch.testing.assert_close(classifier_loss(model, x, y, cfg)[0], F.cross_entropy(model(x), y))
    with pytest.raises(ConfigError, match="cross-entropy"):
        resolve_config({"model": "logreg", "loss": {"name": "mse", "class_weights": "balanced"}})


def test_head_tail_accuracy():
    labels = np.array([0, 0, 1, 1, 5, 5, 6, 6])
    pred = np.array([0, 1, 1, 1, 5, 5, 6, 0])
    assert head_tail_accuracy(labels, pred, {"classes": [0, 1]}) == \
        {"head_acc": 0.75, "tail_acc": 0.75, "tail_classes": [0, 1]}
    assert head_tail_accuracy(labels, pred, True)["tail_acc"] == 0.75  # classes 0-4
    assert head_tail_accuracy(labels, pred, False) == {}


TINY = ["--set", "epochs=1", "--set", "dataset.subset=300", "--set", "dataset.test_subset=200",
        "--no-export", "--no-progress"]
SMALL_RESNET50 = ["--set", "model.args.blocks=[1,1,1,1]", "--set", "model.args.width_per_group=16"]


def _tiny(study, out, cifar_dir, *extra) -> dict:
    from training.cli import train_all
    r = CliRunner().invoke(train_all, ["--study", study, "--out", str(out), "--data-dir", str(cifar_dir),
                                       *TINY, *extra])
    assert r.exit_code == 0, r.output
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("study", ["cifar-cnn", "cifar-rnn", "cifar-tail-augment"])
def test_cifar_studies_run_tiny(study, cifar_dir, tmp_path):
    configs, _, meta = load_profile(f"training/studies/{study}.toml")
    assert meta["report"] == "003" and all(c["batch_size"] == 1024 for c in configs)
    assert all(c["optimizer"]["name"] == "sgd" and c["optimizer"]["momentum"] == 0 for c in configs)
    if study == "cifar-tail-augment":  # ResNet-50 in a small form (1 block per stage), the RNN as is
        _tiny(study, tmp_path / "resnet50", cifar_dir, "--only", "resnet50", *SMALL_RESNET50,
              "--set", "dataset.subset=100", "--set", "dataset.test_subset=100")
        _tiny(study, tmp_path / "rnn", cifar_dir, "--only", "rnn")
        runs = [tmp_path / "resnet50" / "resnet50", tmp_path / "rnn" / "rnn"]
    else:
        summary = _tiny(study, tmp_path, cifar_dir)
        runs = [tmp_path / r["run"] for r in summary["runs"]]
    for run in runs:
        cfg = json.loads((run / "config.json").read_text())
        metrics = json.loads((run / "metrics.json").read_text())
        assert len(json.loads((run / "history.json").read_text())) == 1
        assert ("tail_acc" in metrics) == bool(cfg["dataset"]["longtail"])
        if cfg["model"]["name"] == "rowrnn":
            args = cfg["model"]["args"]
            assert (args["in_chans"] * args["img_size"], args["hidden"], args["num_layers"]) == (96, 512, 2)
            rnn = create_model("rowrnn", **args).stages["rnn"].rnn  # nn.RNN(96, 512, 2)
            assert (rnn.input_size, rnn.hidden_size, rnn.num_layers, rnn.nonlinearity) == (96, 512, 2, "tanh")
        if study == "cifar-tail-augment":
            counts = cfg["dataset"]["class_counts"]  # a tiny subset may leave a tail class no image to copy
            assert len(set(counts) - {0}) == 1 and cfg["dataset"]["train_images"] == sum(counts)


def test_longtail_study_records_head_and_tail_and_compare_shows_them(cifar_dir, tmp_path):
    summary = _tiny("cifar-longtail", tmp_path, cifar_dir)
    names = [r["run"] for r in summary["runs"]]
    assert names == ["cnn", "rnn", "cnn-tail-augment", "cnn-balanced-sampling", "cnn-class-weighted",
                     "cnn-logit-adjusted"]
    counts = {n: json.loads((tmp_path / n / "config.json").read_text())["dataset"]["class_counts"] for n in names}
    assert max(counts["cnn"][:5]) < min(counts["cnn"][5:])  # long-tailed
    assert counts["cnn-tail-augment"] == counts["cnn-balanced-sampling"] == [max(counts["cnn"])] * 10
    for n in names:
        m = json.loads((tmp_path / n / "metrics.json").read_text())
        per_class = m["per_class_acc"]
        assert m["tail_classes"] == TAIL and len(per_class) == 10
        assert m["head_acc"] == pytest.approx(np.mean(per_class[5:]), abs=0.02)  # 200 test images: ~20 per class
        assert m["tail_acc"] == pytest.approx(np.mean(per_class[:5]), abs=0.02)
    from analysis.cli import cli as analyze
    r = CliRunner().invoke(analyze, ["compare", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "head test acc" in r.output and "tail test acc" in r.output
    result = json.loads((tmp_path / "compare" / "compare.json").read_text())
    assert [row["variant"] for row in result["rows"]] == names
    assert all(0 <= row["head_acc"] <= 1 and 0 <= row["tail_acc"] <= 1 for row in result["rows"])
    assert "Head / tail test acc" in (tmp_path / "compare" / "compare.md").read_text()


def test_resnet50_shapes_layers_and_export_parity(cifar_test, tmp_path):
    from torchvision.models import resnet50 as tv_resnet50

    from training.export import export_model
    torch.manual_seed(0)
    model = create_model("resnet50").eval()
    assert model.layers == ["stem", "layer1", "layer2", "layer3", "layer4", "pool"] and model.cam_layer == "layer4"
    tv = tv_resnet50(weights=None, num_classes=10)  # the same network but its 7x7 stride-2 stem (and max-pool)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in tv.parameters()) - 64 * 3 * (49 - 9)
    assert isinstance(model.stages["fc"], torch.nn.Linear) and model.stages["fc"].in_features == 2048
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits, feats = model.forward_intermediates(x)
    assert logits.shape == (2, 10)
    assert {k: tuple(v.shape[1:]) for k, v in feats.items()} == {
        "stem": (64, 32, 32), "layer1": (256, 32, 32), "layer2": (512, 16, 16), "layer3": (1024, 8, 8),
        "layer4": (2048, 4, 4), "pool": (2048,)}
    # Export parity at batch 1 and 7 on real images, with one Bottleneck per stage and narrow groups
    # (the same torchvision modules and graph; the full network passes too but exports in ~60 s here).
    small = create_model("resnet50", blocks=[1, 1, 1, 1], width_per_group=16).eval()
    cfg = {"name": "resnet50", "task": "classifier", "model": {"name": "resnet50", "args": small.args},
           "dataset": {"name": "cifar10", "classes": cifar_test.classes, "channels": 3, "size": [32, 32],
                       "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}}
    res = export_model(small, cfg, tmp_path, images=cifar_test.images[:14], batch_sizes=(1, 7))
    p = res.manifest["parity"]
    assert set(p) == {"classifier", "gradcam"} and p["classifier"]["batch_sizes"] == [1, 7]
    assert p["classifier"]["argmax_agreement"] == 1.0 and res.manifest["cam_layer"] == "layer4"
    assert [layer["name"] for layer in res.manifest["layers"]] == small.layers


def test_analyze_accuracy_shows_head_and_tail_for_a_long_tailed_model(cifar_test, tmp_path):
    """`analyze accuracy` reads the training config the manifest carries (no server change needed)."""
    from analysis import accuracy
    from serving.client import ClassifyResult

    ds = class_balanced_sample(cifar_test, 10, seed=0)

    class Client:  # answers like the server: right on the head classes, "dog" for every tail image
        def classify(self, name, images, top_k=1, return_logits=False):
            idx = np.where(np.isin(ds.labels, TAIL), 5, ds.labels)[:, None]
            return ClassifyResult(idx, np.ones((len(idx), 1), np.float32), [], np.zeros((len(idx), 10), np.float32))

    man = {"name": "cnn", "labels": ds.classes, "training": {"history": []},
           "preprocessing": {"channels": 3, "size": [32, 32], "mean": [0.5] * 3, "std": [0.25] * 3},
           "source": {"config": {"dataset": {"name": "cifar10", "longtail": {"classes": TAIL, "keep": 0.1}}}}}
    report = accuracy.run(Client(), man, ds, tmp_path, progress=False)
    assert (report["head_acc"], report["tail_acc"], report["tail_classes"]) == (1.0, 0.0, TAIL)
    assert "head classes 1.0000, tail classes 0.0000 (tail: classes 0, 1, 2, 3, 4" in accuracy.table(report)
    plain = {k: v for k, v in report.items() if k not in ("head_acc", "tail_acc", "tail_classes")}
    assert "head classes" not in accuracy.table(plain)  # a model trained on a balanced set: no such line
