"""Data-parallel training (training/distributed.py): two gloo processes on this CPU, launched by
``train --nproc 2`` or torchrun, against one process and against an uninterrupted run.

    OMP_NUM_THREADS=1 .venv/bin/pytest -x -q tests/training/test_distributed.py
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.budget import margin
from tests.helpers.paths import ROOT
from training.checkpoint import load_checkpoint, model_from_checkpoint


def _train_cmd(fmnist_dir, out, *extra):
    return ["--model", "lenet", "--subset", "2000", "--data-dir", str(fmnist_dir), "--batch-size", "64",
            "--schedule", "constant", "--lr", "0.003", "--crop-pad", "2", "--hflip", "--out", str(out),
            "--no-progress", *extra]


def _run(cmd, hashes: Path | None = None, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    if hashes is not None:
        env["GLASSBOX_DDP_STEP_HASHES"] = str(hashes)
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _hashes(folder: Path) -> list[list[str]]:
    return [(folder / f"rank{r}.txt").read_text().splitlines() for r in (0, 1)]


def _torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "training.cli",
            *args]


@pytest.fixture(scope="module")
def ddp_run(fmnist_dir, tmp_path_factory):
    """One epoch of lenet on 2,000 real images in two gloo processes (launched by ``train --nproc 2``)."""
    root = tmp_path_factory.mktemp("ddp")
    r = _run([sys.executable, "-m", "training.cli", "train", "--nproc", "2", "--epochs", "1",
              *_train_cmd(fmnist_dir, root / "run")], hashes=root / "hashes")
    return root, r.stdout


def test_ddp_ranks_hold_identical_weights_after_every_step(ddp_run):
    root, output = ddp_run
    rank0, rank1 = _hashes(root / "hashes")
    assert len(rank0) == 1800 // 64 == 28, "one epoch of global batches of 64 (32 per rank)"
    assert rank0 == rank1
    assert len({line.split()[1] for line in rank0}) == len(rank0), "and the weights moved every step"
    assert output.count("epoch 1/1") == 1, "only rank 0 prints"


def test_ddp_checkpoint_reloads_and_loss_falls(ddp_run, fmnist_dir, tmp_path):
    root, _ = ddp_run
    model, ckpt = model_from_checkpoint(root / "run" / "best.pt")
    assert ckpt["epoch"] == 1 and ckpt["metrics"]["world_size"] == 2
    row = ckpt["history"][0]
    assert row["train_loss"] < math.log(10) - 0.3 and row["val_loss"] < row["train_loss"] + 0.3
    assert ckpt["metrics"]["test_acc"] > 0.5
    # Two ranks train what one process trains: the same global batches, augmentations and steps.
    _run([sys.executable, "-m", "training.cli", "train", "--epochs", "1", *_train_cmd(fmnist_dir, tmp_path / "one")])
    one = load_checkpoint(tmp_path / "one" / "last.pt")["model"]
    two = load_checkpoint(root / "run" / "last.pt")["model"]
    worst = max((one[k] - two[k]).abs().max().item() for k in one)
    assert worst < 1e-4, worst


def test_ddp_resume_continues_from_the_saved_epoch(ddp_run, tmp_path):
    """A 2-rank run resumed after epoch 1 takes, step by step, the weights an uninterrupted 2-rank run of
    2 epochs takes (every step's weight hash, on both ranks), and ends with the same checkpoint. Catches a
    resume that restores the weights but not the optimizer, the batch order or one rank's state."""
    import shutil
    root, _ = ddp_run
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    first = load_checkpoint(run / "last.pt")
    fmnist = first["config"]["dataset"]["data_dir"]
    r = _run(_torchrun("train", "--epochs", "2", "--resume", *_train_cmd(fmnist, run)), hashes=tmp_path / "hashes")
    assert "resuming from epoch 1" in r.stdout
    _run(_torchrun("train", "--epochs", "2", *_train_cmd(fmnist, tmp_path / "straight")), hashes=tmp_path / "sh")
    resumed, straight = _hashes(tmp_path / "hashes"), _hashes(tmp_path / "sh")
    assert resumed[0] == resumed[1] and len(resumed[0]) == 28, "every rank resumed, in step"
    def weights(lines):  # each line: "<step of this session> <sha256 of the parameters>"
        return [line.split()[1] for line in lines]
    assert weights(straight[0][:28]) == weights(_hashes(root / "hashes")[0]), "the same first epoch as the fixture"
    assert weights(resumed[0]) == weights(straight[0][28:]), "the resumed epoch's steps are the uninterrupted run's"
    second, want = load_checkpoint(run / "last.pt"), load_checkpoint(tmp_path / "straight" / "last.pt")
    assert second["epoch"] == 2 and second["history"][0] == first["history"][0]
    for k in want["model"]:
        assert torch.equal(second["model"][k], want["model"][k]), k
    assert second["history"][1]["train_loss"] == want["history"][1]["train_loss"]


def test_ddp_time_budget_decides_alike_on_every_rank(fmnist_dir, tmp_path):
    """The budget's clock is rank 0's, broadcast: both ranks plan the same epochs and set the same lr."""
    budget = 20.0
    r = _run(_torchrun("train", "--epochs", "500", "--time-budget", f"{budget:g}s",
                       *_train_cmd(fmnist_dir, tmp_path / "run", "--schedule", "cosine")), hashes=tmp_path / "hashes")
    rank0, rank1 = _hashes(tmp_path / "hashes")
    assert rank0 == rank1 and len(rank0) >= 28, "at least an epoch, every step alike"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert metrics["time_budget_s"] == budget and metrics["budget_used_s"] <= budget + margin(budget)
    # On failure, the budget's own account (its plan and why it stopped) and the last epochs say why.
    assert hist[-1]["lr"] < 1e-3 * 0.003, ("cosine ends at ~0", hist[-3:], [
        line for line in (r.stdout + r.stderr).splitlines() if "time budget" in line or "epoch" in line][-8:])
