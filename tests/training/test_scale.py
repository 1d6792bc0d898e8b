"""Training at scale and on a budget: time-budgeted runs, data-parallel training under torchrun, bf16.

The budget tests assert the feature's own promise (a run ends within a margin of its budget, with
its schedule annealed); the margin is generous because other work shares this machine's 2 cores.
The DDP tests run two gloo processes on this CPU.
"""
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from training.budget import Budget, parse_duration, share
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.cli import train_all
from training.config import ConfigError, load_profile, profile_time_budget, resolve_config
from training.engine import autocast, build_optimizer, build_scheduler, fit, schedule_factor
from training.models import create_model

ROOT = Path(__file__).resolve().parents[2]
QUIET = {"progress": False, "log": lambda *_: None}


def margin(budget_s: float) -> float:
    """How far past its budget a run may end: +25% or +3 s, whichever is larger."""
    return max(0.25 * budget_s, 3.0)


def _data(fmnist_dir, subset=2000, test_subset=1000):
    return {"name": "fashion-mnist", "data_dir": str(fmnist_dir), "subset": subset, "test_subset": test_subset}


# --- durations and shares --------------------------------------------------------------------------

def test_parse_duration():
    assert parse_duration(None) is None
    for text, seconds in ((90, 90), (2.5, 2.5), ("90", 90), ("90s", 90), ("5m", 300), ("1h", 3600),
                          ("1.5h", 5400), ("1h30m", 5400), (" 2 m ", 120), ("1h 30m 5s", 5405)):
        assert parse_duration(text) == seconds, text
    for bad in ("", "abc", "5x", "-3", "m", 0, -1, True):
        with pytest.raises(ConfigError, match="time_budget"):
            parse_duration(bad)
    assert resolve_config({"model": "lenet", "time_budget": "5m"})["time_budget"] == 300
    with pytest.raises(ConfigError, match="cost"):
        resolve_config({"model": "lenet", "cost": 0})


def test_share_follows_cost_and_passes_on_unused_time():
    assert share(100, 0, [1, 3]) == 25                 # lenet cost 1, resnet cost 3
    assert share(100, 10, [3]) == 90                   # what the first left unused goes to the next
    assert share(100, 120, [1]) == pytest.approx(1e-3)  # overspent: one step still runs


def test_quick_profile_shares_six_minutes_by_cost():
    configs, path, _ = load_profile("quick")
    assert 300 <= profile_time_budget(path) <= 420
    costs = {c["name"]: c["cost"] for c in configs}
    assert set(costs) == {"lenet", "resnet", "cvae"} and costs["resnet"] > costs["lenet"]
    assert all(c["epochs"] >= 20 for c in configs)  # an upper bound: a faster machine trains longer


# --- the schedule on progress ----------------------------------------------------------------------

class FixedProgress:
    """A stand-in budget whose progress the test sets."""
    p = 0.0

    def progress(self, step):
        return self.p


@pytest.mark.parametrize("name", ["constant", "step", "exp", "cosine"])
def test_budget_schedule_is_the_step_schedule_at_progress(name):
    cfg = resolve_config({"model": "logreg", "epochs": 4,
                          "schedule": {"name": name, "warmup_epochs": 1, "step_size": 2, "gamma": 0.5}})
    opt = build_optimizer(cfg, create_model("logreg"))
    budget = FixedProgress()
    sched = build_scheduler(cfg, opt, steps_per_epoch=10, budget=budget)
    peak = cfg["optimizer"]["lr"]
    for p in (0.0, 0.1, 0.3, 0.55, 0.8, 1.0):
        budget.p = p
        opt.step()
        sched.step()
        want = peak * schedule_factor(cfg["schedule"], p * 40, 10, 40)
        assert opt.param_groups[0]["lr"] == pytest.approx(want), p
    if name == "cosine":
        assert opt.param_groups[0]["lr"] == 0.0


def simulate(total, step_s, steps=100, eval_s=0.5, cap=1000, slow_from=None, slow=3.0):
    """An epoch loop on a fake clock, as train_epochs drives the budget."""
    now = [0.0]
    b = Budget(total, steps, train_images=1000 * 10, val_images=1000, test_images=1000, classifier=False,
               clock=lambda: now[0])
    step, ps, epochs = 0, [], 0
    for epoch in range(1, cap + 1):
        if not b.next_epoch(cap - epoch + 1, step, first=epoch == 1):
            break
        for _ in range(steps):
            now[0] += step_s * (slow if slow_from and epoch >= slow_from else 1)
            step += 1
            ps.append(b.progress(step))
            if b.out_of_time:
                break
        now[0] += eval_s
        b.note_eval(eval_s)
        epochs += 1
    return epochs, ps, now[0]


def test_budget_plans_whole_epochs_and_anneals_at_the_last_step():
    epochs, ps, end = simulate(total=100, step_s=0.1)  # 10.5 s epochs, 1.5 s kept for the test split
    assert epochs == 9 and 90 <= end <= 100 - 1.5
    assert ps[-1] == pytest.approx(1.0) and ps[-2] < 1.0
    assert all(b >= a for a, b in zip(ps, ps[1:], strict=False)), "progress never goes back"
    assert max(b - a for a, b in zip(ps, ps[1:], strict=False)) < 0.01, "progress never jumps"
    # The epochs cap binds first: the schedule still ends annealed, at the cap.
    epochs, ps, end = simulate(total=100, step_s=0.1, cap=4)
    assert epochs == 4 and ps[-1] == pytest.approx(1.0) and end < 50


def test_budget_cuts_an_epoch_that_runs_late():
    # From epoch 6 the machine is 3x slower than the plan assumed: the epoch that would overrun is cut.
    epochs, ps, end = simulate(total=100, step_s=0.1, slow_from=6)
    assert end <= 100 + 0.5 and ps[-1] == pytest.approx(1.0)
    assert max(b - a for a, b in zip(ps, ps[1:], strict=False)) < 0.02


# --- real budgeted runs ----------------------------------------------------------------------------

@pytest.fixture
def one_thread():
    """One intra-op thread for the timed runs: on this shared 2-core machine, when other processes
    keep the cores busy, two threads meeting at every op's barrier made LeNet epochs ~25x slower
    (measured: 0.34 s vs 8.8 s per 1,800-image epoch) and the test would measure its neighbours."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_time_budget_run_ends_on_time_annealed(fmnist_dir, tmp_path, one_thread):
    budget = 12.0
    cfg = resolve_config({"model": "lenet", "epochs": 500, "time_budget": f"{budget:g}s", "dataset": _data(fmnist_dir)})
    t0 = time.perf_counter()
    metrics = fit(cfg, tmp_path, **QUIET)
    wall = time.perf_counter() - t0
    hist = json.loads((tmp_path / "history.json").read_text())
    print(f"budget {budget} s: wall {wall:.2f} s (overrun {wall - budget:+.2f} s), {len(hist)} epochs")
    assert wall <= budget + margin(budget), f"ran {wall:.1f} s on a {budget} s budget"
    assert metrics["time_budget_s"] == budget and metrics["epochs_run"] == len(hist) >= 2
    assert 0.5 * budget <= metrics["budget_used_s"] <= wall + 0.1, "most of the budget is used, and no more"
    assert hist[-1]["lr"] < 1e-3 * cfg["optimizer"]["lr"], "cosine ends at ~0"
    assert max(r["lr"] for r in hist) > 0.3 * cfg["optimizer"]["lr"], "and got near its peak on the way"
    assert metrics["test_acc"] > 0.6
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["budget"]["progress"] == pytest.approx(1.0) and ckpt["budget"]["used_s"] > 0.5 * budget


def test_time_budget_resume_counts_the_time_used_before(fmnist_dir, tmp_path, one_thread):
    budget = 14.0
    cfg = resolve_config({"model": "lenet", "epochs": 500, "time_budget": budget, "dataset": _data(fmnist_dir)})

    class Interrupt(Exception):
        pass

    def log(msg):  # the process dies right after epoch 2 is saved
        if " epoch 2/" in msg:
            raise Interrupt
    with pytest.raises(Interrupt):
        fit(cfg, tmp_path, progress=False, log=log)
    before = load_checkpoint(tmp_path / "last.pt")
    assert before["epoch"] == 2 and 0 < before["budget"]["progress"] < 1
    used_before = before["budget"]["used_s"]
    t0 = time.perf_counter()
    metrics = fit(cfg, tmp_path, resume=True, **QUIET)
    wall = time.perf_counter() - t0
    hist = json.loads((tmp_path / "history.json").read_text())
    assert hist[:2] == before["history"] and len(hist) > 2, "continues from the saved epoch"
    assert wall <= budget - used_before + margin(budget), "the time used before the interruption counts"
    assert metrics["budget_used_s"] >= used_before + wall - 0.5
    assert metrics["budget_used_s"] <= budget + margin(budget)
    assert hist[-1]["lr"] < 1e-3 * cfg["optimizer"]["lr"]


def test_train_all_shares_the_budget_by_cost(fmnist_dir, tmp_path, one_thread):
    profile = tmp_path / "tiny.toml"
    profile.write_text(f"""
time_budget = "30s"
[defaults]
dataset = {{ name = "fashion-mnist", data_dir = "{fmnist_dir}", subset = 3000, test_subset = 1000 }}
epochs = 300
[[runs]]
model = "lenet"
cost = 1
[[runs]]
model = "mlp"
cost = 2
""")
    t0 = time.perf_counter()
    res = CliRunner().invoke(train_all, ["--config", str(profile), "--out", str(tmp_path / "out"), "--no-export",
                                         "--no-progress", "--time-budget", "20s"])  # the option replaces the file's
    wall = time.perf_counter() - t0
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    runs = {r["run"]: r for r in summary["runs"]}
    assert summary["time_budget_s"] == 20
    assert runs["lenet"]["time_budget_s"] == pytest.approx(20 / 3)
    # mlp gets what lenet left: its own share and what lenet did not use
    assert runs["mlp"]["time_budget_s"] == pytest.approx(20 - runs["lenet"]["budget_used_s"], abs=0.2)
    # twice the cost: more time than lenet's share even after lenet's overrun on a busy machine
    assert runs["mlp"]["time_budget_s"] > runs["lenet"]["time_budget_s"]
    assert all(r["epochs"] >= 2 for r in runs.values())
    assert wall <= 20 + margin(20), wall
    assert "budget s" in res.output


# --- bf16 -------------------------------------------------------------------------------------------

def test_bf16_autocast_trains_on_cpu(fmnist_dir, tmp_path):
    cfg = resolve_config({"model": "lenet", "epochs": 1, "precision": "bf16", "batch_size": 64,
                          "schedule": {"name": "constant"}, "dataset": _data(fmnist_dir)})
    model = create_model("lenet")
    with autocast(cfg, torch.device("cpu")):
        assert model(torch.zeros(2, 1, 28, 28)).dtype == torch.bfloat16
    metrics = fit(cfg, tmp_path, **QUIET)
    assert metrics["test_acc"] > 0.5
    m, ckpt = model_from_checkpoint(tmp_path / "best.pt")
    assert ckpt["config"]["precision"] == "bf16" and next(m.parameters()).dtype == torch.float32
    with pytest.raises(ConfigError, match="precision"):
        resolve_config({"model": "lenet", "precision": "fp16"})
    with pytest.raises(ConfigError, match="bce"):
        resolve_config({"model": "cvae", "precision": "bf16"})


# --- DDP: two gloo processes ---------------------------------------------------------------------

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
    import shutil
    root, _ = ddp_run
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    first = load_checkpoint(run / "last.pt")
    fmnist = first["config"]["dataset"]["data_dir"]
    r = _run(_torchrun("train", "--epochs", "2", "--resume", *_train_cmd(fmnist, run)), hashes=tmp_path / "hashes")
    assert "resuming from epoch 1" in r.stdout
    second = load_checkpoint(run / "last.pt")
    assert second["epoch"] == 2 and second["history"][0] == first["history"][0]
    assert second["history"][1]["train_loss"] < second["history"][0]["train_loss"]
    rank0, rank1 = _hashes(tmp_path / "hashes")
    assert rank0 == rank1 and len(rank0) == 28, "every rank resumed, in step"


def test_ddp_time_budget_decides_alike_on_every_rank(fmnist_dir, tmp_path):
    """The budget's clock is rank 0's, broadcast: both ranks plan the same epochs and set the same lr."""
    budget = 20.0
    _run(_torchrun("train", "--epochs", "500", "--time-budget", f"{budget:g}s",
                   *_train_cmd(fmnist_dir, tmp_path / "run", "--schedule", "cosine")), hashes=tmp_path / "hashes")
    rank0, rank1 = _hashes(tmp_path / "hashes")
    assert rank0 == rank1 and len(rank0) >= 28, "at least an epoch, every step alike"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert metrics["time_budget_s"] == budget and metrics["budget_used_s"] <= budget + margin(budget)
    assert hist[-1]["lr"] < 1e-3 * 0.003, "cosine ends at ~0"
    # (the command's own wall time adds starting torchrun and two Python processes: not the budget's)


def test_budget_cuts_a_first_epoch_longer_than_the_budget():
    # 100 steps of 1 s on a 30 s budget: the probe sees it, plans to the deadline, the clock cuts the epoch.
    epochs, ps, end = simulate(total=30, step_s=1.0)
    assert epochs == 1 and ps[-1] == pytest.approx(1.0) and 20 <= end <= 30


def test_budget_used_up_before_a_resumed_session_trains_nothing():
    now = [0.0]
    b = Budget(60, 100, train_images=10_000, val_images=1000, test_images=1000, used_s=59.5, progress=0.9,
               step=500, clock=lambda: now[0])
    assert not b.next_epoch(10, 500, first=False) and b.stop_reason == "the next epoch would not fit"
    # A run that has trained nothing yet trains one epoch, whatever is left: there is no checkpoint otherwise.
    b = Budget(60, 100, train_images=10_000, val_images=1000, test_images=1000, used_s=59.5, clock=lambda: now[0])
    assert b.next_epoch(10, 0, first=True)
