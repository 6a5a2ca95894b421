"""Monolithic SIREN (Sitzmann et al., "Implicit Neural Representations with Periodic
Activation Functions", NeurIPS 2020).

One MLP maps all coordinates at once, ``(t, y, x) -> RGB``, with sine
activations ``sin(ω0 (W x + b))``. The defaults are the paper's image setting
(``experiment_scripts/train_img.py``: ``SingleBVPNet`` with 256 hidden
features and 3 hidden layers, ω0 = 30, Adam lr 1e-4) with the paper's
initialisation: first layer ``U(-1/n, 1/n)``, later layers
``U(-√(6/n)/ω0, √(6/n)/ω0)``. Coordinates span [-1, 1] per axis and values are
trained in [-1, 1] (the paper's ``Normalize(0.5, 0.5)``).

Batches: random pixels each step (with replacement, as SIREN's video
wrapper samples). Videos use SIREN's video sample fraction (0.38% of the
pixels per step, ``train_video.py``), clipped to [4096, 2^18]; images use
2^16 pixels per step (the paper uses the full 512x512 image; on a CPU that is
several seconds a step, so pass ``batch=H*W`` to reproduce it exactly).
SIREN's video model was wider (1024); pass ``width=1024`` for it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._base import NeuralBaseline

__all__ = ["SirenBaseline", "SineLayer"]


class SineLayer(nn.Module):
    """``sin(ω0 (W x + b))`` with SIREN's initialisation."""

    def __init__(self, n_in: int, n_out: int, omega0: float, first: bool):
        super().__init__()
        self.omega0 = float(omega0)
        self.linear = nn.Linear(n_in, n_out)
        bound = 1.0 / n_in if first else math.sqrt(6.0 / n_in) / self.omega0
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound)

    def forward(self, x):
        return torch.sin(self.omega0 * self.linear(x))


class SirenBaseline(NeuralBaseline, name="siren"):
    """Monolithic SIREN; see the module docstring for the settings and their source."""

    reference = "SIREN, Sitzmann et al. 2020 (width 256, 3 hidden layers, w0=30, Adam 1e-4)"
    coord_range = (-1.0, 1.0)
    value_range = (-1.0, 1.0)

    def __init__(self, *, width: int = 256, hidden_layers: int = 3, omega0: float = 30.0, lr: float = 1e-4,
                 batch: int | None = None, sample_fraction: float = 38e-4, seed: int = 0, device: str = "cpu"):
        super().__init__(lr=lr, batch=batch, seed=seed, device=device)
        self.width, self.hidden_layers, self.omega0 = int(width), int(hidden_layers), float(omega0)
        self.sample_fraction = float(sample_fraction)

    @classmethod
    def for_parameters(cls, budget: int, in_dim: int, out_dim: int, **options) -> "SirenBaseline":
        """The paper's SIREN widened (same depth) to the largest width within ``budget`` parameters."""
        layers = int(options.get("hidden_layers", 3))

        def count(w):
            return (in_dim + 1) * w + layers * (w + 1) * w + (w + 1) * out_dim

        width = 8
        while count(width + 1) <= budget:
            width += 1
        return cls(width=width, **options)

    def build(self, in_dim, out_dim, shape):
        layers = [SineLayer(in_dim, self.width, self.omega0, first=True)]
        layers += [SineLayer(self.width, self.width, self.omega0, first=False) for _ in range(self.hidden_layers)]
        last = nn.Linear(self.width, out_dim)
        bound = math.sqrt(6.0 / self.width) / self.omega0
        with torch.no_grad():
            last.weight.uniform_(-bound, bound)
        return nn.Sequential(*layers, last)

    def default_batch(self, shape):
        n = math.prod(shape)
        if len(shape) == 3:
            return int(min(n, max(4096, min(1 << 18, round(self.sample_fraction * n)))))
        return min(n, 1 << 16)

    def settings(self):
        return {"width": self.width, "hidden_layers": self.hidden_layers, "omega0": self.omega0, "lr": self.lr,
                "batch": self.batch or (self.default_batch(self.shape) if self.shape else None)}
