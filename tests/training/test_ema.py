"""EMA of the weights (training/ema.py): the update rule, checkpoints of the average, exact resume.
(Test-time flips: tests/training/test_models.py and test_export.py; the record profiles: test_profiles.py.)

    .venv/bin/pytest -x -q tests/training/test_ema.py
"""
from __future__ import annotations

import pytest
import torch

from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.config import ConfigError, resolve_config
from training.datasets import load_split, to_tensors
from training.ema import EMA
from training.engine import fit
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


