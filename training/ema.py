"""An exponential moving average of a model's weights, the cheap ensemble that record runs use.

    train --model resnet --ema 0.999 ...     # or ``ema = 0.999`` in a profile

torch's ``AveragedModel`` (``torch.optim.swa_utils``) with ``use_buffers=True`` keeps the copy and
walks the parameters and buffers; this subclass supplies the average. After every optimizer step
the copy moves towards the trained weights: ``avg <- d * avg + (1 - d) * w``, with
``d = min(decay, (1 + n) / (10 + n))`` at step ``n`` so the first steps are not dominated by the
random initialisation (timm's ModelEmaV2 warms up likewise; torch's ``get_ema_multi_avg_fn`` has a
fixed decay). Floating buffers (BatchNorm running statistics) are averaged the same way, counters
are copied. The engine validates, keeps ``best.pt``, scores the test split and exports the
*averaged* weights; the checkpoint also holds the trained weights (``train_model``) and the step
count so that ``--resume`` continues both.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel


class EMA(AveragedModel):
    def __init__(self, model: nn.Module, decay: float, steps: int = 0):
        super().__init__(model, multi_avg_fn=self._average, use_buffers=True)
        self.module.eval().requires_grad_(False)
        self.decay = float(decay)
        self.steps = steps

    @property
    def steps(self) -> int:
        """Optimizer steps averaged in. ``n_averaged`` (on the CPU) also counts the starting copy,
        so the first update already averages instead of copying."""
        return int(self.n_averaged) - 1

    @steps.setter
    def steps(self, n: int) -> None:
        self.n_averaged.fill_(int(n) + 1)

    def rate(self, steps: int | None = None) -> float:
        """The decay at ``steps`` (default: the current step): small at first, then ``decay``."""
        n = self.steps if steps is None else steps
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def _average(self, averaged: list[torch.Tensor], current: list[torch.Tensor], _n) -> None:
        # Called by update_parameters once per device and dtype, before it counts this step.
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1.0 - self.rate(self.steps + 1))
        else:  # integer buffers (BatchNorm's batch counter) are counts: copied
            torch._foreach_copy_(averaged, current)

    def update(self, model: nn.Module) -> None:
        self.update_parameters(model)

    def follow(self, opt: torch.optim.Optimizer, model: nn.Module) -> None:
        """Update after every ``opt.step()`` (a post hook, so the training loop needs no change)."""
        opt.register_step_post_hook(lambda *_: self.update(model))
