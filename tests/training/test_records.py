"""The record runs' levers: EMA of the weights, test-time flips, the speed-run CIFAR net.

    .venv/bin/python -m pytest -q tests/training/test_records.py
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from glassbox.data import load_dataset, preprocess
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.cli import format_summary
from training.config import ConfigError, load_profile, resolve_config
from training.ema import EMA
from training.engine import fit, load_split, speed, to_tensors
from training.export import export_model
from training.models import create_model

QUIET = {"progress": False, "log": lambda *_: None}


def _cfg(fmnist_dir, **over):
    return resolve_config({"model": "bnconvnet", "epochs": 2, "batch_size": 64, "ema": 0.9,
                           "schedule": {"name": "constant"},
                           "dataset": {"name": "fashion-mnist", "data_dir": str(fmnist_dir), "subset": 600,
                                       "test_subset": 200}, **over})


def test_ema_moves_towards_the_weights_with_a_warmup():
    """One update: avg <- d * avg + (1 - d) * w for parameters and float buffers, counters copied;
    d warms up as (1 + n) / (10 + n). Catches a wrong direction, a missing warm-up or skipped buffers."""
    torch.manual_seed(0)
    model = create_model("bnconvnet")
    ema = EMA(model, decay=0.99)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        for b in model.buffers():
            if b.dtype.is_floating_point:
                b.add_(2.0)
            else:
                b.fill_(7)
    ema.update(model)
    d = 2 / 11  # the first step's warm-up rate, below 0.99
    assert ema.steps == 1 and ema.rate() == pytest.approx(d)
    now, src = ema.module.state_dict(), model.state_dict()
    for k, v in now.items():
        if v.dtype.is_floating_point:
            torch.testing.assert_close(v, d * before[k] + (1 - d) * src[k])
        else:
            assert torch.equal(v, src[k]), k
    assert all(not p.requires_grad for p in ema.module.parameters())
    ema.steps = 10_000
    assert ema.rate() == 0.99


def test_ema_run_checkpoints_the_average_and_resumes_exactly(fmnist_dir, tmp_path):
    """best.pt's ``model`` is the averaged weights (what is validated and exported), ``train_model``
    the trained ones; a run resumed after epoch 1 ends with the same averaged and trained weights as
    one that ran 2 epochs straight (the step count and both weight sets are restored)."""
    straight = fit(_cfg(fmnist_dir), tmp_path / "straight", **QUIET)
    fit(_cfg(fmnist_dir, epochs=1), tmp_path / "resumed", **QUIET)
    resumed = fit(_cfg(fmnist_dir), tmp_path / "resumed", resume=True, **QUIET)
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert a["ema_steps"] == b["ema_steps"] == 2 * (540 // 64)
    for key in ("model", "train_model"):
        for k in a[key]:
            torch.testing.assert_close(a[key][k], b[key][k], msg=f"{key}.{k}")
    assert any(not torch.equal(a["model"][k], a["train_model"][k]) for k in a["model"]), "the average is not a copy"
    assert straight["test_acc"] == pytest.approx(resumed["test_acc"])
    # The test score is the averaged weights' score: reload ``model`` and score the same images.
    model, ckpt = model_from_checkpoint(tmp_path / "straight" / "best.pt")
    spec = {k: ckpt["config"]["dataset"][k] for k in ("channels", "size", "mean", "std")}
    x, y = to_tensors(load_split(ckpt["config"], "test"), spec, torch.device("cpu"))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    assert acc == pytest.approx(straight["test_acc"], abs=1e-6)


def test_ema_decay_is_checked():
    with pytest.raises(ConfigError, match="ema"):
        resolve_config({"model": "lenet", "ema": 1.0})


def test_tta_flip_averages_the_mirror_in_eval_only():
    """Eval logits are the mean of the image's and its mirror's; training sees one pass; the layers
    are the image's own; Grad-CAM's single pass (forward_once) stays available."""
    torch.manual_seed(0)
    plain = create_model("lenet").eval()
    tta = create_model("lenet", tta_flip=True).eval()
    tta.load_state_dict(plain.state_dict())
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        expect = (plain(x) + plain(x.flip(-1))) / 2
        torch.testing.assert_close(tta(x), expect)
        logits, feats = tta.forward_intermediates(x)
        torch.testing.assert_close(logits, expect)
        _, plain_feats = plain.forward_intermediates(x)
        for k in feats:
            torch.testing.assert_close(feats[k], plain_feats[k])
        torch.testing.assert_close(tta.forward_once(x), plain(x))
        assert not torch.allclose(expect, plain(x))
        tta.train()
        torch.testing.assert_close(tta(x), plain(x))
    assert tta.args["tta_flip"] is True
    with pytest.raises(ValueError, match="classifiers"):
        create_model("cvae", tta_flip=True)


def test_tta_flip_is_in_the_exported_graph(fmnist_dir, tmp_path):
    """The served logits include the mirror: onnxruntime matches the averaged torch logits (and not
    the single pass); the parity gate and Grad-CAM's reference agree with a tta model."""
    torch.manual_seed(0)
    model = create_model("lenet", tta_flip=True).eval()
    test = load_dataset("fashion-mnist", "test", data_dir=fmnist_dir)
    cfg = {"name": "lenet", "task": "classifier", "model": {"name": "lenet", "args": model.args},
           "dataset": {"name": "fashion-mnist", "data_dir": str(fmnist_dir), "classes": test.classes, "channels": 1,
                       "size": [28, 28], "mean": [0.286], "std": [0.353]}}
    res = export_model(model, cfg, tmp_path, parity_images=32, batch_sizes=(1, 8))
    x = preprocess(test.images[:6], res.manifest["preprocessing"])
    sess = ort.InferenceSession(str(res.path / "classifier.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = sess.run(["logits"], {"input": x})
    with torch.no_grad():
        xt = torch.from_numpy(x)
        np.testing.assert_allclose(logits, model(xt).numpy(), rtol=1e-3, atol=1e-5)
        assert np.abs(logits - model.forward_once(xt).numpy()).max() > 1e-3


def test_cifar_record_profile_resolves():
    """The record profile names the speed-run net with its levers (a typo in it would surface only
    after an hour of training)."""
    configs, path, _ = load_profile("cifar-record")
    (cfg,) = configs
    assert cfg["model"]["name"] == "speednet" and cfg["model"]["args"]["tta_flip"] is True
    assert cfg["dataset"]["name"] == "cifar10" and cfg["time_budget"] and cfg["ema"] > 0
    configs, _, _ = load_profile("fmnist-record")
    assert configs[0]["ema"] > 0 and configs[0]["model"]["args"]["tta_flip"] is True


def test_speed_summary_counts_training_time_and_time_to_accuracy():
    """images/s uses the images actually trained (a budget cuts the last epoch) over training time
    only; the time to a level adds whole epochs (training + validation) until val accuracy reaches it."""
    history = [{"train_images": 1000, "train_seconds": 2.0, "seconds": 3.0, "val_acc": 0.80},
               {"train_images": 1000, "train_seconds": 2.0, "seconds": 2.5, "val_acc": 0.86},
               {"train_images": 500, "train_seconds": 1.0, "seconds": 1.5, "val_acc": 0.91}]
    assert speed(history) == {"train_images_per_s": 500.0, "seconds_to_val_acc": {"0.85": 5.5, "0.9": 7.0}}
    assert speed(history[:2])["seconds_to_val_acc"] == {"0.85": 5.5, "0.9": None}
    vae = [{k: v for k, v in r.items() if k != "val_acc"} for r in history]
    assert speed(vae) == {"train_images_per_s": 500.0}
    rows = [{"run": "r", "dataset": "cifar10", "test_acc": 0.9, "test_loss": 0.3, "best_val": 0.91, "epochs": 3,
             "wall_seconds": 9.0, "exported": None, **speed(history)}]
    assert "r: 500 training images/s; val acc 85% after 6 s; val acc 90% after 7 s" in format_summary(rows)
