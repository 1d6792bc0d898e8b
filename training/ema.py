"""An exponential moving average of a model's weights, the cheap ensemble that record runs use.

    train --model resnet --set ema=0.999 ...     # or ``ema = 0.999`` in a profile

After every optimizer step the averaged copy moves towards the trained weights:
``avg <- d * avg + (1 - d) * w``, with ``d = min(decay, (1 + n) / (10 + n))`` at step ``n`` so the
first steps are not dominated by the random initialisation (timm's ModelEmaV2 warms up likewise).
Floating buffers (BatchNorm running statistics) are averaged the same way, counters are copied.
The engine validates, keeps ``best.pt``, scores the test split and exports the *averaged* weights;
the checkpoint also holds the trained weights (``train_model``) and the step count so that
``--resume`` continues both.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn


class EMA:
    def __init__(self, model: nn.Module, decay: float, steps: int = 0):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.steps = float(decay), int(steps)

    def rate(self) -> float:
        """The decay used at the current step (warm-up: small at first, then ``decay``)."""
        return min(self.decay, (1 + self.steps) / (10 + self.steps))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.steps += 1
        d = self.rate()
        mine = list(self.module.parameters())
        torch._foreach_lerp_(mine, [p.detach() for p in model.parameters()], 1.0 - d)
        for a, b in zip(self.module.buffers(), model.buffers(), strict=True):
            if a.dtype.is_floating_point:
                a.lerp_(b, 1.0 - d)
            else:
                a.copy_(b)

    def follow(self, opt: torch.optim.Optimizer, model: nn.Module) -> None:
        """Update after every ``opt.step()`` (a post hook, so the training loop needs no change)."""
        opt.register_step_post_hook(lambda *_: self.update(model))
