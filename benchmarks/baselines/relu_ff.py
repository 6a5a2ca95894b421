"""Monolithic ReLU MLP on Gaussian Fourier features (Tancik et al., "Fourier Features Let
Networks Learn High Frequency Functions in Low Dimensional Domains", NeurIPS 2020).

Coordinates ``v`` in [0, 1]^d are encoded as ``γ(v) = [cos(2π B v), sin(2π B v)]``
with ``B ∈ R^{m×d}``, ``B_ij ~ N(0, σ²)``. Defaults are the paper's 2-D image
regression setting: m = 256 features, σ = 10, an MLP of 4 layers of width 256
(3 ReLU layers and a linear output) with a sigmoid on the output, Adam lr 1e-3.
``B`` is fixed (a buffer, not trained, not counted as a parameter).

Batches: the paper trains on the full image; images use all pixels per step
up to 2^16 and random pixels beyond. The paper has no video experiment;
videos use SIREN's video batching (0.38% of the pixels per step, clipped to
[4096, 2^18]) so that both monolithic baselines see the same batches.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._base import NeuralBaseline

__all__ = ["ReluFFBaseline", "GaussianFourierFeatures"]


class GaussianFourierFeatures(nn.Module):
    """``γ(v) = [cos(2π B v), sin(2π B v)]`` with a fixed Gaussian ``B`` of scale σ."""

    def __init__(self, in_dim: int, features: int, sigma: float, generator: torch.Generator):
        super().__init__()
        self.register_buffer("B", torch.randn(features, in_dim, generator=generator) * sigma)

    def forward(self, v):
        proj = 2 * math.pi * v @ self.B.T
        return torch.cat([torch.cos(proj), torch.sin(proj)], dim=-1)


class ReluFFBaseline(NeuralBaseline, name="relu_ff"):
    """ReLU MLP with Gaussian Fourier features; see the module docstring for the settings."""

    reference = "ReLU + Fourier features, Tancik et al. 2020 (sigma 10, 256 features, 4x256, Adam 1e-3)"
    coord_range = (0.0, 1.0)
    value_range = (0.0, 1.0)

    def __init__(self, *, features: int = 256, sigma: float = 10.0, width: int = 256, layers: int = 4,
                 lr: float = 1e-3, batch: int | None = None, seed: int = 0, device: str = "cpu"):
        super().__init__(lr=lr, batch=batch, seed=seed, device=device)
        self.features, self.sigma, self.width, self.layers = int(features), float(sigma), int(width), int(layers)

    def build(self, in_dim, out_dim, shape):
        gen = torch.Generator().manual_seed(self.seed)
        mods: list[nn.Module] = [GaussianFourierFeatures(in_dim, self.features, self.sigma, gen)]
        n_in = 2 * self.features
        for _ in range(self.layers - 1):
            mods += [nn.Linear(n_in, self.width), nn.ReLU()]
            n_in = self.width
        mods += [nn.Linear(n_in, out_dim), nn.Sigmoid()]
        return nn.Sequential(*mods)

    def default_batch(self, shape):
        n = math.prod(shape)
        if len(shape) == 3:
            return int(min(n, max(4096, min(1 << 18, round(38e-4 * n)))))
        return min(n, 1 << 16)

    def settings(self):
        return {"features": self.features, "sigma": self.sigma, "width": self.width, "layers": self.layers,
                "lr": self.lr, "batch": self.batch or (self.default_batch(self.shape) if self.shape else None)}
