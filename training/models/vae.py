"""Variational autoencoders: a convolutional VAE and an MLP VAE.

Both map an image in [0, 1] to (mean, log-variance) and a latent back to an image in [0, 1]
(sigmoid), so BCE, MSE or L1 reconstruction losses apply (``loss.vae_recon``); ``training.tasks``
adds the KL term.
The conv VAE works for 1- or 3-channel inputs whose size is divisible by 4 (28, 32, 64 px).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .registry import register_model


class VAE(nn.Module):
    task = "vae"
    layers: list[str] = []
    cam_layer = None

    def __init__(self, encoder: nn.Module, decoder: nn.Module, feat: int, latent_dim: int,
                 in_chans: int, img_size: int):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.mean = nn.Linear(feat, latent_dim)
        self.logvar = nn.Linear(feat, latent_dim)
        self.latent_dim, self.in_chans, self.img_size = latent_dim, in_chans, img_size

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.mean(h), self.logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor):
        mean, logvar = self.encode(x)
        # Sample while training (reparameterisation); use the mean in eval so outputs are deterministic.
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar) if self.training else mean
        return self.decode(z), mean, logvar


class _Unflatten(nn.Module):
    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


@register_model("cvae", task="vae")  # any size divisible by 4, the dataset's
def cvae(in_chans: int = 1, img_size: int = 28, latent_dim: int = 16, num_classes: int | None = None,
         kernel: int = 4):
    """Convolutional VAE: strided convs (16, 32) -> mean/log-variance; mirrored transposed convs.

    ``kernel`` is the encoder's kernel size (4, or 3 as report 000 wrote it); stride 2 and padding 1
    halve the size either way, and the decoder keeps its 4x4 transposed convs."""
    if img_size % 4:
        raise ValueError(f"cvae needs an input size divisible by 4, got {img_size}")
    if kernel not in (3, 4):
        raise ValueError(f"cvae's encoder kernel must be 3 or 4 (stride 2, padding 1 halve the size), got {kernel}")
    s = img_size // 4
    enc = nn.Sequential(
        nn.Conv2d(in_chans, 16, kernel, 2, 1), nn.ReLU(),
        nn.Conv2d(16, 32, kernel, 2, 1), nn.ReLU(), nn.Flatten())
    dec = nn.Sequential(
        nn.Linear(latent_dim, 32 * s * s), nn.ReLU(), _Unflatten((32, s, s)),
        nn.ConvTranspose2d(32, 16, 4, 2, 1), nn.ReLU(),
        nn.ConvTranspose2d(16, in_chans, 4, 2, 1), nn.Sigmoid())
    return VAE(enc, dec, 32 * s * s, latent_dim, in_chans, img_size)


@register_model("mlpvae", task="vae")  # the dataset's size and channels
def mlpvae(in_chans: int = 1, img_size: int = 28, latent_dim: int = 10, num_classes: int | None = None):
    """MLP VAE: 784->300->100->(mean, log-variance of 10) and its mirror."""
    d = in_chans * img_size * img_size
    enc = nn.Sequential(nn.Flatten(), nn.Linear(d, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU())
    dec = nn.Sequential(nn.Linear(latent_dim, 100), nn.ReLU(), nn.Linear(100, 300), nn.ReLU(),
                        nn.Linear(300, d), nn.Sigmoid(), _Unflatten((in_chans, img_size, img_size)))
    return VAE(enc, dec, 100, latent_dim, in_chans, img_size)
