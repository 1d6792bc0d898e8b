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


def random_erase(x: torch.Tensor, p: float, max_area: float, gen: torch.Generator) -> torch.Tensor:
    """Random erasing (Zhong et al. 2017; cutout is its fixed-square special case): with probability
    ``p`` an image gets one rectangle of 2% to ``max_area`` of its area, aspect ratio 0.3 to 3.3
    (log-uniform), set to 0, the dataset mean after normalisation. One mask for the whole batch."""
    if p <= 0:
        return x
    n, _, h, w = x.shape
    dev = x.device
    area = (0.02 + (max_area - 0.02) * torch.rand(n, generator=gen, device=dev)) * h * w
    ratio = torch.exp(torch.empty(n, device=dev).uniform_(-1.204, 1.204, generator=gen))  # ln 0.3, ln 3.3
    eh = torch.sqrt(area * ratio).round().clamp(1, h)
    ew = torch.sqrt(area / ratio).round().clamp(1, w)
    top = (torch.rand(n, generator=gen, device=dev) * (h - eh + 1)).floor()
    left = (torch.rand(n, generator=gen, device=dev) * (w - ew + 1)).floor()
    on = torch.rand(n, generator=gen, device=dev) < p
    rows = torch.arange(h, device=dev)[None, :]
    cols = torch.arange(w, device=dev)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])
    mask = (in_rows[:, :, None] & in_cols[:, None, :]) & on[:, None, None]
    return x.masked_fill(mask[:, None], 0.0)


def augments_anything(spec: dict) -> bool:
    return any(spec.get(k) for k in ("crop_pad", "hflip", "erase", "noise_std"))


def augment(x: torch.Tensor, spec: dict, gen: torch.Generator) -> torch.Tensor:
    """Apply the run's ``augment`` section: crop_pad, hflip, erase, noise_std (in that order)."""
    x = random_crop(x, int(spec.get("crop_pad", 0)), gen)
    if spec.get("hflip"):
        x = random_hflip(x, gen)
    x = random_erase(x, float(spec.get("erase", 0.0)), float(spec.get("erase_max_area", 0.4)), gen)
    return gaussian_noise(x, float(spec.get("noise_std", 0.0)), gen)
