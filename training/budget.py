"""Time-budgeted runs: the run ends on time, with its learning-rate schedule fully annealed.

    train --model resnet --time-budget 5m            # 90s, 5m, 1h, 1h30m or plain seconds
    train-all --profile quick --time-budget 10m      # shared over the runs by their ``cost``

**What the budget covers.** A run's ``time_budget`` is the wall time of its ``fit``: loading the
data, the epochs (training, validation, checkpoints) and the closing test scoring. Exports are not
in it. Resume counts the time used up to the last saved epoch (``last.pt`` records it); the part
of an epoch an interruption cut off is lost work and not counted.

**The schedule runs on progress, not steps.** With a budget, the schedule's factor function (the
same warmup, cosine, step, exp or constant as without one) is evaluated at ``progress * epochs *
steps_per_epoch``: ``epochs`` becomes the nominal length the epoch-based settings refer to
(``warmup_epochs``, ``step_size``, exp's per-epoch ``gamma``) and the upper bound on epochs.

**Progress is the fraction of the time available, planned in whole epochs.** A plan counts the
whole epochs ``n`` that fit in what is left of the budget, less a reserve for the closing test
scoring, capped by ``epochs``; progress then grows with the clock towards the predicted end of the
``n``-th epoch's training steps, and never lags the fraction of those epochs' steps already taken.
So the last planned step lands on progress 1 (lr 0 for cosine) whether the epochs ran faster or
slower than predicted, and the loop then stops. Each plan starts where the last left off: progress
never jumps back or ahead.

- At the start of a session (a fresh run, or a resumed one) nothing is measured yet: from the first
  step on (loading the data does not advance the schedule), progress is the fraction of the time
  left used, until a few steps of the first epoch have been timed (steps 2 to
  a fifth of the epoch, 4 to 50). Their median pace gives the first plan, by the clock alone: an
  epoch costs ``steps_per_epoch`` such steps plus validation (forward only: a third of a training
  step per image, until a validation pass has been timed).
- After each epoch the plan is redone from the median of the last three epochs' durations
  (training, validation, checkpoint writes) and of the last three validation passes. ``n == 0``: the
  next epoch would not fit, and the loop stops.
- The reserve for the end is a validation pass's time (the median of the last three) scaled to the
  test split, or a third of a training step per test image when that is less (a small validation
  split's time is mostly fixed costs); twice for a classifier (loss, then per-class predictions);
  plus a second for writing.
- An epoch that runs so late (the machine got busy) that the clock passes the plan's end is cut
  short there: its remaining steps would overrun the budget, at a learning rate near its final value.
  Likewise, when the epochs ran slower than planned and the schedule is not done but the next
  epoch would not fit, a closing epoch runs and is cut at the deadline (if a training step or more
  fits before it), so the schedule still ends annealed.

**Sharing a profile's budget** (``train-all --time-budget`` or a top-level ``time_budget`` in the
profile file; it replaces the runs' own ``time_budget``): runs are trained in order and each gets
``(total - time the earlier runs used) * cost / (sum of the costs of the runs not yet trained)``, so
time a run leaves unused (it hit its ``epochs`` cap, or its last epoch did not fit) goes to the
ones after it. ``cost`` (default 1) is a run's weight: set it to the run's seconds for its nominal
``epochs`` on a reference machine (``wall_seconds`` in a ``summary.json`` of a run without budget),
and the shares keep the profile's balance between runs on any machine. A run gets at least one
step and one validation, whatever its share.

Under ``torchrun`` every rank must take the same decisions, so every time the budget reads (its
clock, the validation time, the total) is rank 0's, broadcast (``sync``).
"""
from __future__ import annotations

import math
import re
import statistics
import time
from typing import Callable

from .options import ConfigError

_UNIT = {"s": 1, "m": 60, "h": 3600}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([hms]?)")


def parse_duration(value) -> float | None:
    """Seconds from ``90``, ``"90"``, ``"90s"``, ``"5m"``, ``"1.5h"``, ``"1h30m"``; None stays None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"time_budget: expected seconds or a duration such as 90s, 5m, 1h, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text, pos, seconds = str(value).strip().lower(), 0, 0.0
        while pos < len(text):
            m = _PART.match(text, pos)
            if not m:
                raise ConfigError(f"time_budget: cannot read {value!r}; give seconds or a duration such as "
                                  f"90s, 5m, 1h, 1h30m")
            seconds += float(m.group(1)) * _UNIT[m.group(2) or "s"]
            pos = m.end()
            while pos < len(text) and text[pos] == " ":
                pos += 1
        if not text:
            raise ConfigError("time_budget: empty duration")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"time_budget must be positive, got {value!r}")
    return seconds


def share(total_s: float, used_s: float, costs_left: list[float]) -> float:
    """The next run's share of a profile budget: what is left, times its cost (``costs_left[0]``)
    over the costs of every run not yet trained (itself included); at least 1 ms (one step)."""
    return max(1e-3, (total_s - used_s) * costs_left[0] / sum(costs_left))


class Budget:
    """The clock and the plan of one budgeted run (see the module docstring).

    ``progress(step)`` drives the schedule (``step``: the scheduler's step count, called once per
    step); ``next_epoch(epochs_left, step, first)`` is asked before every epoch; ``note_eval(s)``
    after each validation; ``state(step)`` goes into the checkpoint and ``Budget(..., **state)``
    resumes. ``train_images``, ``val_images``: what this process trains and validates per epoch (the
    validation pass's images: the test split's too where it draws test curves).
    """

    FIXED_FINISH_S = 1.0  # loading best.pt, the curves figure, metrics and checkpoint writes

    def __init__(self, total_s: float, steps_per_epoch: int, *, train_images: int, val_images: int,
                 test_images: int, used_s: float = 0.0, progress: float = 0.0, step: int = 0,
                 classifier: bool = True, start: float | None = None, sync: Callable[[float], float] = float,
                 clock: Callable[[], float] = time.perf_counter):
        self.sync, self.clock = sync, clock
        self.total = sync(float(total_s))
        self.steps_per_epoch = steps_per_epoch
        self.train_images, self.test_images = max(1, train_images), test_images
        self.val_ratio = val_images / self.train_images
        self.test_ratio = test_images / max(1, val_images)
        self.train_s: float | None = None           # seconds of an epoch's training steps, as last measured
        self.passes = 2 if classifier else 1    # finish: evaluate, then predict for the per-class accuracy
        self.probe_steps = max(4, min(50, steps_per_epoch // 5)) if steps_per_epoch >= 10 else None
        self._t0 = (clock() if start is None else start) - float(used_s)
        self.anchor_t, self.anchor_p, self.anchor_step = float(used_s), float(progress), int(step)
        self.end_t, self.plan_steps = self.total, 0  # no plan yet: by the clock, to the end of the budget
        self.marks: list[float] = []                 # elapsed at the start of each epoch of this session
        self.epoch_start: tuple[float, int, int] | None = None  # (elapsed, step, epochs left) of this one
        self._probing, self._probe_times = False, []
        self._evals: list[float] = []
        self.eval_s: float | None = None             # the median of the last three validation passes
        self.out_of_time = False                     # set by progress(): ends an epoch that runs late
        self.stop_reason = ""                        # why next_epoch said no, for the log

    def elapsed(self, local: bool = False) -> float:
        """Seconds of the budget used, earlier sessions included (``local``: this rank's clock,
        without the broadcast that every rank must join)."""
        t = self.clock() - self._t0
        return t if local else self.sync(t)

    def _at(self, t: float, step: int) -> tuple[float, float]:
        """(progress by the clock, progress) at elapsed ``t`` and ``step``, on the current plan."""
        span = 1.0 - self.anchor_p
        by_clock = self.anchor_p + span * (t - self.anchor_t) / max(1e-9, self.end_t - self.anchor_t)
        p = by_clock
        if self.plan_steps:
            p = max(p, self.anchor_p + span * (step - self.anchor_step) / self.plan_steps)
        return by_clock, min(1.0, max(0.0, p))

    def progress(self, step: int) -> float:
        if self.epoch_start is None:  # before the session's first epoch (loading data): the schedule waits
            return self.anchor_p
        t = self.elapsed()
        by_clock, p = self._at(t, step)
        self.out_of_time = by_clock >= 1.0  # the clock passed the plan's end: steps from here would overrun
        if self._probing and self.epoch_start is not None:
            self._probe(t, step, p)
        return p

    def _probe(self, t: float, step: int, p: float) -> None:
        """Early in a session's first epoch: time steps 2..probe_steps, and plan by the clock from
        their pace (the median step: one step the machine stalled on must not shorten the run)."""
        t_epoch, s_epoch, left = self.epoch_start
        k = step - s_epoch
        if k >= 2:
            self._probe_times.append(t)
        if k < self.probe_steps:
            return
        self._probing = False
        steps = [b - a for a, b in zip(self._probe_times, self._probe_times[1:], strict=False)]
        train_s = self.train_s = statistics.median(steps) * self.steps_per_epoch
        eval_s = self.eval_s if self.eval_s is not None else train_s * self.val_ratio / 3
        deadline = self.total - self.reserve(eval_s) - eval_s  # the last training step's latest end
        n = max(1, min(left, math.floor((deadline + eval_s - t_epoch) / (train_s + eval_s))))
        # n = 1 when even this epoch does not fit: the clock then reaches 1 at the deadline and cuts it.
        # By the clock only: a pace measured on a few steps is no ground for ending the schedule early.
        self._plan(t, p, step, min(deadline, t_epoch + n * (train_s + eval_s) - eval_s), 0)

    def _plan(self, t: float, p: float, step: int, end_t: float, steps: int) -> None:
        self.anchor_t, self.anchor_p, self.anchor_step = t, p, step
        self.end_t, self.plan_steps = max(end_t, t + 1e-3), steps

    def note_eval(self, seconds: float) -> None:
        self._evals.append(self.sync(seconds))
        self.eval_s = statistics.median(self._evals[-3:])

    def reserve(self, eval_s: float | None = None) -> float:
        """Predicted seconds of ``finish`` (the test split scored with the best checkpoint): a
        validation pass scaled to the test split, or, when smaller, a third of a training step per
        test image (a small validation split's time is mostly fixed costs, which do not scale)."""
        eval_s = self.eval_s if eval_s is None else eval_s
        per_pass = (eval_s or 0.0) * self.test_ratio
        if self.train_s is not None:
            per_pass = min(per_pass, self.train_s / self.train_images * self.test_images / 3)
        return per_pass * self.passes + self.FIXED_FINISH_S

    def next_epoch(self, epochs_left: int, step: int, first: bool) -> bool:
        """Whether another epoch fits; re-plans the progress when it does. ``first``: no epoch of
        the run has been trained yet (one always is: there is no checkpoint to finish with)."""
        t = self.elapsed()
        self.marks.append(t)
        p = self.progress(step)
        self.epoch_start = (t, step, epochs_left)
        self.stop_reason = "the schedule is done" if p >= 1.0 else "the next epoch would not fit"
        if epochs_left <= 0 or (p >= 1.0 and not first):
            return False
        durations = [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]
        if not durations:  # nothing measured in this session yet: by the clock until the probe has
            end = self.total - self.reserve()
            self._plan(t, p, step, end, 0)
            self._probing, self._probe_times = self.probe_steps is not None, []
            return first or t < end
        epoch_s = statistics.median(durations[-3:])
        self.train_s = max(1e-6, epoch_s - (self.eval_s or 0.0))
        n = min(epochs_left, math.floor((self.total - self.reserve() - t) / epoch_s))
        eval_s = min(self.eval_s or 0.0, 0.5 * epoch_s)
        if n < 1:
            # The epochs ran slower than the last plan assumed and the schedule is not done: a closing
            # epoch, cut at the deadline, finishes it when a training step or more still fits before the
            # deadline (however few: an unannealed end costs more accuracy than a short epoch's validation).
            end = self.total - self.reserve() - eval_s
            if p < 1.0 and end - t >= self.train_s / self.steps_per_epoch:
                self._plan(t, p, step, end, self.steps_per_epoch)
                return True
            return first
        self._plan(t, p, step, t + n * epoch_s - eval_s, n * self.steps_per_epoch)  # to the last one's training end
        return True

    def state(self, step: int) -> dict:
        return {"used_s": self.elapsed(), "progress": self.progress(step), "step": int(step)}
