"""An exponential moving average of a model's weights, the cheap ensemble that record runs use.

    train --model resnet --ema 0.999 ...     # or ``ema = 0.999`` in a profile

After every optimizer step the averaged copy moves towards the trained weights:
``avg <- d * avg + (1 - d) * w``, with ``d = min(decay, (1 + n) / (10 + n))`` at step ``n`` so the
first steps are not dominated by the random initialisation (timm's ModelEmaV2 warms up likewise).
Floating buffers (BatchNorm running statistics) are averaged the same way, counters are copied.
The engine validates, keeps ``best.pt``, scores the test split and exports the *averaged* weights;
the checkpoint also holds the trained weights (``train_model``) and the step count so that
``--resume`` continues both.

Written by hand rather than with ``torch.optim.swa_utils.AveragedModel``: the update runs after every
optimizer step, and the library walks both modules and regroups their tensors by device and dtype on
each call. Here an update is one walk, one ``_foreach_lerp_`` and one ``_foreach_copy_``.
``benchmarks/ema_update.py`` times both side by side.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn


class EMA:
    def __init__(self, model: nn.Module, decay: float, steps: int = 0):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.steps = float(decay), int(steps)

    def rate(self, steps: int | None = None) -> float:
        """The decay at ``steps`` (default: the current step): small at first, then ``decay``."""
        n = self.steps if steps is None else steps
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.steps += 1
        # The lists are gathered on every call, not once: ``model.to()`` or ``load_state_dict`` may
        # replace a buffer's tensor, and a stale list would silently average a dead copy.
        floats, counts = [], []
        for a, b in zip((*self.module.parameters(), *self.module.buffers()),
                        (*model.parameters(), *model.buffers()), strict=True):
            (floats if a.is_floating_point() else counts).append((a, b))
        torch._foreach_lerp_([a for a, _ in floats], [b.detach() for _, b in floats], 1.0 - self.rate())
        if counts:  # integer buffers (BatchNorm's batch counter) are counts: copied
            torch._foreach_copy_([a for a, _ in counts], [b for _, b in counts])

    def follow(self, opt: torch.optim.Optimizer, model: nn.Module) -> None:
        """Update after every ``opt.step()`` (a post hook, so the training loop needs no change)."""
        opt.register_step_post_hook(lambda *_: self.update(model))
