"""Batch augmentations on tensors: no per-sample Python on the hot path.

Each function takes a float batch [N, C, H, W] and a torch.Generator on the batch's device and
returns a new batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Pad by ``pad`` (zeros, i.e. the normalised background is not assumed) and crop back at a
    random offset per image, gathered with one advanced-indexing call."""
    if pad <= 0:
        return x
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    return xp[torch.arange(n, device=x.device)[:, None, None, None],
              torch.arange(c, device=x.device)[None, :, None, None], rows, cols]


def random_hflip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=gen, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def gaussian_noise(x: torch.Tensor, std: float, gen: torch.Generator) -> torch.Tensor:
    return x + std * torch.randn(x.shape, generator=gen, device=x.device) if std > 0 else x


def augment(x: torch.Tensor, spec: dict, gen: torch.Generator) -> torch.Tensor:
    """Apply the run's ``augment`` section: crop_pad, hflip, noise_std (in that order)."""
    x = random_crop(x, int(spec.get("crop_pad", 0)), gen)
    if spec.get("hflip"):
        x = random_hflip(x, gen)
    return gaussian_noise(x, float(spec.get("noise_std", 0.0)), gen)
