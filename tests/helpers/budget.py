"""A slowed machine for the time-budget tests: the budget's clock runs ahead of the real one by a set
number of seconds at every optimizer step, so ``fit()`` itself (its plan, its cut of an epoch that runs
late, its stop) meets a machine as slow as the test says, in a fraction of the wall time.

    with slow_steps(step_s=0.1, slower_after=140, slower=4) as steps:
        fit(cfg, out)             # the run's budget_used_s, lr and epochs follow the slowed clock
    steps.lrs                     # the learning rate of every step taken
"""
from __future__ import annotations

import contextlib
import time


def margin(budget_s: float) -> float:
    """How far past its budget a run on the real clock may end: +25% or +3 s, whichever is larger
    (other work shares this machine's cores)."""
    return max(0.25 * budget_s, 3.0)


class SlowSteps:
    """Counts optimizer steps and how far the budget's clock is ahead of the real one."""

    def __init__(self, step_s: float, slower_after: int | None, slower: float):
        self.step_s, self.slower_after, self.slower = step_s, slower_after, slower
        self.steps, self.ahead, self.lrs = 0, 0.0, []

    def clock(self) -> float:
        return time.perf_counter() + self.ahead

    def after_step(self, opt, args, kwargs) -> None:
        self.steps += 1
        late = self.slower_after is not None and self.steps > self.slower_after
        self.ahead += self.step_s * (self.slower if late else 1.0)
        self.lrs.append(opt.param_groups[0]["lr"])


@contextlib.contextmanager
def slow_steps(step_s: float, slower_after: int | None = None, slower: float = 1.0):
    """Every ``training.budget.Budget`` made inside reads a clock that gains ``step_s`` seconds at each
    optimizer step (``slower`` times that after step ``slower_after``: the machine got busy). The
    default clock is the keyword default of ``Budget.__init__``, so the engine's own code makes it."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from training.budget import Budget
    steps = SlowSteps(step_s, slower_after, slower)
    defaults = Budget.__init__.__kwdefaults__
    real = defaults["clock"]
    defaults["clock"] = steps.clock
    handle = register_optimizer_step_post_hook(steps.after_step)
    try:
        yield steps
    finally:
        handle.remove()
        defaults["clock"] = real
