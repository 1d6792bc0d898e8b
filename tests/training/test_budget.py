"""Time-budgeted runs (training/budget.py): durations, shares of a profile's budget, the schedule on
progress, and ``fit()`` itself on a budget.

    OMP_NUM_THREADS=1 .venv/bin/pytest -x -q tests/training/test_budget.py

Most runs here train on a slowed clock (tests.helpers.budget.slow_steps: the budget's clock gains a set
time at every optimizer step), so the engine's own plan and cut meet a machine as slow as the test says
and the checks are exact; one run keeps the real clock, with a margin for the other work on this machine.
"""
import json
import time

import pytest
import torch
from click.testing import CliRunner

from tests.helpers.budget import margin, slow_steps
from training.budget import Budget, parse_duration, share
from training.checkpoint import load_checkpoint
from training.cli import train_all
from training.config import ConfigError, resolve_config
from training.engine import fit
from training.models import create_model
from training.optim import build_optimizer, build_scheduler, schedule_factor

QUIET = {"progress": False, "log": lambda *_: None}
# Real seconds the slowed clock counts on top of the steps' (loading, validation, scoring, writes) on a
# busy machine: small beside the budgets below, which are tens of slowed seconds.
REAL_S = 3.0
FULL = 28 * 32  # a full epoch's training images: 900 of the 1,000-image subset, in batches of 32


def _data(fmnist_dir, subset=2000, test_subset=1000):
    return {"name": "fashion-mnist", "data_dir": str(fmnist_dir), "subset": subset, "test_subset": test_subset}


def _slowed_run(fmnist_dir, out, budget, step_s, epochs=500, **slower):
    """fit() on 1,000 images (28 steps of 32 an epoch), cosine without warmup, each step ``step_s`` slowed
    seconds: (metrics, history, the lr of every step)."""
    cfg = resolve_config({"model": "logreg", "epochs": epochs, "time_budget": budget, "batch_size": 32,
                          "schedule": {"name": "cosine", "warmup_epochs": 0},
                          "dataset": _data(fmnist_dir, subset=1000, test_subset=200)})
    with slow_steps(step_s, **slower) as steps:
        metrics = fit(cfg, out, **QUIET)
    return metrics, json.loads((out / "history.json").read_text()), steps.lrs


def _profile(tmp_path, fmnist_dir, runs: str, top: str = ""):
    """A train-all profile of ``runs`` on 1,000 images, up to 300 epochs each (the budget ends them)."""
    path = tmp_path / "tiny.toml"
    path.write_text(f'{top}[defaults]\ndataset = {{ name = "fashion-mnist", data_dir = "{fmnist_dir}", subset = 1000, '
                    f'test_subset = 200 }}\nepochs = 300\nbatch_size = 32\n{runs}')
    return path


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
    """Interrupted after epoch 2 and resumed: the resumed session has only what the first left (a resume
    that forgot the used time would train a whole budget again), and the history continues."""
    budget = 60.0
    cfg = resolve_config({"model": "logreg", "epochs": 500, "time_budget": budget, "batch_size": 32,
                          "dataset": _data(fmnist_dir, subset=1000, test_subset=200)})

    class Interrupt(Exception):
        pass

    def log(msg):  # the process dies right after epoch 2 is saved
        if " epoch 2/" in msg:
            raise Interrupt
    with slow_steps(0.5), pytest.raises(Interrupt):  # 14 slowed seconds an epoch
        fit(cfg, tmp_path, progress=False, log=log)
    before = load_checkpoint(tmp_path / "last.pt")
    assert before["epoch"] == 2 and 0 < before["budget"]["progress"] < 1
    used_before = before["budget"]["used_s"]
    assert used_before >= 28
    t0 = time.perf_counter()
    with slow_steps(0.5) as steps:
        metrics = fit(cfg, tmp_path, resume=True, **QUIET)
    session = time.perf_counter() - t0 + steps.ahead
    hist = json.loads((tmp_path / "history.json").read_text())
    assert hist[:2] == before["history"] and len(hist) > 2, "continues from the saved epoch"
    assert session <= budget - used_before + REAL_S, "the time used before the interruption counts"
    assert used_before + session - REAL_S <= metrics["budget_used_s"] <= budget + REAL_S
    assert hist[-1]["lr"] < 1e-3 * cfg["optimizer"]["lr"]


def test_train_all_shares_the_budget_by_cost(fmnist_dir, tmp_path):
    """--time-budget replaces the profile's; lenet (cost 1) gets a third, mlp (cost 2) the rest: its
    share and what lenet left unused."""
    profile = _profile(tmp_path, fmnist_dir, '[[runs]]\nmodel = "lenet"\ncost = 1\n[[runs]]\nmodel = "mlp"\ncost = 2\n',
                       top='time_budget = "30s"\n')
    with slow_steps(0.25):  # 7 slowed seconds an epoch
        res = CliRunner().invoke(train_all, ["--config", str(profile), "--out", str(tmp_path / "out"),
                                             "--no-export", "--no-progress", "--time-budget", "60s"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    runs = {r["run"]: r for r in summary["runs"]}
    assert summary["time_budget_s"] == 60
    assert runs["lenet"]["time_budget_s"] == pytest.approx(20)
    # mlp gets what lenet left: its own share and what lenet did not use
    assert runs["mlp"]["time_budget_s"] == pytest.approx(60 - runs["lenet"]["budget_used_s"], abs=0.2)
    assert runs["mlp"]["time_budget_s"] >= 40 - REAL_S
    assert all(r["epochs"] >= 2 and r["budget_used_s"] <= r["time_budget_s"] + REAL_S for r in runs.values())
    assert "budget s" in res.output


# --- fit() on a slowed clock: the engine's plan and cut ---------------------------------------------

def test_budget_plans_whole_epochs_and_anneals_at_the_last_step(fmnist_dir, tmp_path):
    """Steady steps: whole epochs only, most of the budget used and no more, the lr falling step by step
    to 0 at the last one. With the epochs cap binding first, the schedule still ends at 0, at the cap."""
    metrics, hist, lrs = _slowed_run(fmnist_dir, tmp_path / "a", budget=100, step_s=0.5)  # 14 s epochs
    print(f"{len(hist)} epochs, {metrics['budget_used_s']} of 100 slowed s")
    assert len(hist) >= 4 and all(r["train_images"] == FULL for r in hist), "no epoch cut"
    assert 80 <= metrics["budget_used_s"] <= 100 + REAL_S
    assert hist[-1]["lr"] == pytest.approx(0, abs=1e-9) and lrs[-1] < 0.05 * lrs[0]
    assert all(b <= a for a, b in zip(lrs, lrs[1:], strict=False)), "the lr never goes back up"
    assert max(a - b for a, b in zip(lrs, lrs[1:], strict=False)) < 0.05 * lrs[0], "nor jumps"
    metrics, hist, lrs = _slowed_run(fmnist_dir, tmp_path / "b", budget=100, step_s=0.5, epochs=3)
    assert len(hist) == 3 and hist[-1]["lr"] == pytest.approx(0, abs=1e-9) and metrics["budget_used_s"] < 60


def test_budget_cuts_an_epoch_that_runs_late(fmnist_dir, tmp_path):
    """From epoch 4 the machine is 5x slower than the plan assumed: the engine cuts the epoch that would
    overrun, at the deadline, with the lr at 0 there (without the cut it would end past the budget)."""
    metrics, hist, lrs = _slowed_run(fmnist_dir, tmp_path, budget=100, step_s=0.5, slower_after=3 * 28, slower=5)
    print([r["train_images"] for r in hist], metrics["budget_used_s"])
    assert [r["train_images"] for r in hist[:3]] == [FULL] * 3 and hist[-1]["train_images"] < FULL, "the last is cut"
    assert metrics["budget_used_s"] <= 100 + REAL_S
    assert hist[-1]["lr"] == pytest.approx(0, abs=1e-9)


def test_budget_cuts_a_first_epoch_longer_than_the_budget(fmnist_dir, tmp_path):
    """28 steps of 1 s on a 20 s budget: the probe sees it, plans to the deadline and the clock cuts the
    one epoch; the run still ends with a checkpoint, annealed, and its test score."""
    metrics, hist, lrs = _slowed_run(fmnist_dir, tmp_path, budget=20, step_s=1.0)
    assert len(hist) == 1 and 0 < hist[0]["train_images"] < FULL
    assert metrics["budget_used_s"] <= 20 + REAL_S and hist[0]["lr"] == pytest.approx(0, abs=1e-9)
    assert (tmp_path / "best.pt").is_file() and 0 <= metrics["test_acc"] <= 1


def test_a_run_that_overspends_leaves_the_next_one_step(fmnist_dir, tmp_path):
    """train-all on 10 s: lenet's first step alone takes 12 s, past its share and the whole budget. It
    stops after that step and is scored; mlp, with nothing left, gets the 1 ms floor: one step, then its
    validation and test score (no run is skipped, none crashes)."""
    profile = _profile(tmp_path, fmnist_dir, '[[runs]]\nmodel = "lenet"\n[[runs]]\nmodel = "mlp"\n')
    with slow_steps(12.0) as steps:
        res = CliRunner().invoke(train_all, ["--config", str(profile), "--out", str(tmp_path / "out"),
                                             "--no-export", "--no-progress", "--time-budget", "10s"])
    assert res.exit_code == 0, res.output
    runs = {r["run"]: r for r in json.loads((tmp_path / "out" / "summary.json").read_text())["runs"]}
    assert runs["lenet"]["time_budget_s"] == pytest.approx(5) and runs["lenet"]["budget_used_s"] >= 12
    assert runs["mlp"]["time_budget_s"] == pytest.approx(1e-3)
    assert steps.steps == 2, "one step each"
    for name in ("lenet", "mlp"):
        (row,) = json.loads((tmp_path / "out" / name / "history.json").read_text())
        assert row["train_images"] == 32 and 0 <= runs[name]["test_acc"] <= 1


def test_budget_used_up_before_a_resumed_session_trains_nothing():
    now = [0.0]
    b = Budget(60, 100, train_images=10_000, val_images=1000, test_images=1000, used_s=59.5, progress=0.9,
               step=500, clock=lambda: now[0])
    assert not b.next_epoch(10, 500, first=False) and b.stop_reason == "the next epoch would not fit"
    # A run that has trained nothing yet trains one epoch, whatever is left: there is no checkpoint otherwise.
    b = Budget(60, 100, train_images=10_000, val_images=1000, test_images=1000, used_s=59.5, clock=lambda: now[0])
    assert b.next_epoch(10, 0, first=True)


def _simulate(budget: Budget, now: list, epochs: int, step_s, eval_s: float) -> list[tuple[int, float]]:
    """Drive ``budget`` as fit() does, on the fake clock ``now``: (steps, progress at the last step) of each
    epoch; ``step_s(epoch)`` is that epoch's seconds per step (the machine slows down when it grows)."""
    rows, step = [], 0
    while budget.next_epoch(epochs - len(rows), step, first=not rows):
        taken = 0
        for _ in range(budget.steps_per_epoch):
            now[0] += step_s(len(rows))
            step, taken = step + 1, taken + 1
            p = budget.progress(step)
            if budget.out_of_time:
                break
        now[0] += eval_s
        budget.note_eval(eval_s)
        rows.append((taken, p))
    return rows


def test_a_closing_epoch_anneals_the_schedule_when_a_few_steps_still_fit():
    """Epochs of 10 s (100 steps and 1 s of validation) on 100 s; from the seventh the steps take 1.8x as
    long. The eighth then ends with the schedule at 0.98, the next epoch does not fit, and what is left
    before the deadline is under a fifth of a (now 18 s) epoch but some 16 steps. They run, cut at the
    deadline, and the lr ends at 0 within the budget (the schedule used to stop at 0.98)."""
    now = [0.0]
    b = Budget(100, 100, train_images=10_000, val_images=1000, test_images=1000, clock=lambda: now[0])
    rows = _simulate(b, now, 50, lambda epoch: 0.09 * (1.8 if epoch >= 6 else 1.0), eval_s=1.0)
    print(rows, now[0])
    assert [s for s, _ in rows[:8]] == [100] * 8 and 0.95 < rows[7][1] < 1.0, "the slow epochs run whole"
    assert len(rows) == 9 and 0 < rows[8][0] < 20 and rows[8][1] == 1.0, "a short closing epoch anneals"
    # The cut comes after the step that crossed the deadline: at most one step (0.162 s) past it.
    assert now[0] <= 100 - b.reserve() + 0.09 * 1.8, "and leaves the test scoring its reserve"


def test_with_test_curves_the_budget_plans_from_what_validation_really_scores():
    """Test curves make every validation score the test split too (here 200 validation and 10,000 test images
    against 1,800 trained, 28 steps of 0.05 s: a 2.66 s pass beside 1.4 s of training). On 10 s, the first
    plan (made during the first epoch, before any validation is timed) must count that pass: counted as 200
    images, it planned two epochs, and the run stopped after one with the schedule at 0.46; counted in full,
    it plans one, cut to fit, that ends at 0 within the budget."""
    from training.distributed import SINGLE
    from training.prepare import _budget

    def simulated(test_curves: bool):
        now = [0.0]
        cfg = {"time_budget": 10.0, "task": "classifier", "test_curves": test_curves}
        b = _budget(cfg, None, 28, (1800, 200, 10_000), SINGLE, start=0.0)  # given a start, it reads no clock yet
        b.clock = lambda: now[0]
        return _simulate(b, now, 500, lambda epoch: 0.05, eval_s=2.66), now[0], b

    rows, end, b = simulated(test_curves=True)
    assert len(rows) == 1 and rows[0][1] == 1.0 and rows[0][0] < 28, rows
    assert end <= 10 - b.reserve() + 0.05, "the closing test scoring keeps its reserve"
    rows, _, _ = simulated(test_curves=False)  # the budget blind to the test split, as it was
    assert rows[-1][1] < 0.6, rows
