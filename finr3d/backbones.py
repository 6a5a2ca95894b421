"""Per-mode networks φ_m: small MLPs from a mode's coordinates to rank features.

Backbones join the registry :data:`BACKBONES` when their class is defined
(``class Siren(Backbone, name="siren")``). Every backbone ends in a linear
layer ``out``; selecting rows of that layer gives a rank prefix.

- ``relu``: positional encoding ``[x, sin(2^k π x), cos(2^k π x)]`` then a ReLU MLP
  (Tancik et al. 2020, Mildenhall et al. 2020).
- ``siren``: ``sin(ω0 (W x + b))`` layers with the Sitzmann et al. (2020) init:
  first layer ``U(-1/n, 1/n)``, hidden ``U(-√(6/n)/ω0, √(6/n)/ω0)``.
- ``wire``: real Gabor wavelet ``cos(ω z) exp(-(s z)^2)``, ``z = W x + b``
  (Saragadam et al. 2023; ω = 20, s = 10).
- ``finer``: variable-periodic ``sin(ω0 (|z| + 1) z)`` with the scale ``|z|+1``
  held out of the gradient and a wide first-layer bias (Liu et al. 2024).

Every backbone of a 1-D mode can also read out a cosine series: ``basis`` B adds
the features ``cos(π k (x + 1) / 2)``, k < B, beside the last hidden layer. On
``linspace(-1, 1, N)`` these are the DCT-I vectors, so with B = N the output layer
can reproduce any factor curve on the stored samples exactly: a closed-form start
is then read out without loss, through the cosine terms alone (the hidden
features' weights start at zero and are left to refinement), so that between
samples the curve is the cosine interpolant of the stored values.
"""

from __future__ import annotations

import copy
import math
from typing import ClassVar

import torch
from torch import nn

__all__ = ["BACKBONES", "Backbone", "ReluPE", "Siren", "Wire", "Finer", "make_backbone"]

BACKBONES: dict[str, type["Backbone"]] = {}

#: Most cosine terms a mode network may read out.
MAX_BASIS = 8192


class Backbone(nn.Module):
    """A per-mode network ``(n, in_dim) -> (n, out_dim)``.

    Subclasses build ``self.body`` (coordinates to hidden features) and call
    :meth:`_finish` to add the output layer.
    """

    name: ClassVar[str]

    def __init_subclass__(cls, name: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if name is not None:
            cls.name = name
            BACKBONES[name] = cls

    def __init__(self, in_dim: int, out_dim: int, width: int = 128, depth: int = 2, *, basis: int = 0, **options):
        super().__init__()
        self.in_dim, self.out_dim, self.width, self.depth = int(in_dim), int(out_dim), int(width), int(depth)
        basis = int(basis)
        if not 0 <= basis <= MAX_BASIS:
            raise ValueError(f"basis must be between 0 and {MAX_BASIS}, got {basis}")
        if basis and self.in_dim != 1:
            raise ValueError(f"a cosine basis needs a 1-D mode, this one has {self.in_dim} inputs")
        self.basis = basis
        self.options = dict(options)
        self.register_buffer("basis_freqs", torch.arange(basis, dtype=torch.float32) * (math.pi / 2), persistent=False)

    def _finish(self, hidden_dim: int, init_bound: float) -> None:
        self.out = nn.Linear(hidden_dim + self.basis, self.out_dim)
        with torch.no_grad():
            self.out.weight.uniform_(-init_bound, init_bound)
            self.out.weight[:, hidden_dim:] = 0.0  # the cosine terms start silent; a readout sets them
            self.out.bias.zero_()

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer's features (n, width)."""
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the output layer reads: the hidden features, then the cosine terms (n, width + basis)."""
        h = self.hidden(x)
        if not self.basis:
            return h
        return torch.cat([h, torch.cos((x[:, :1] + 1) * self.basis_freqs)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (n, in_dim) normalized coordinates; returns (n, out_dim)."""
        return self.out(self.features(x))

    def config(self) -> dict:
        """JSON-ready arguments that rebuild this backbone (weights aside)."""
        out = {"name": self.name, "in_dim": self.in_dim, "out_dim": self.out_dim,
               "width": self.width, "depth": self.depth, **self.options}
        if self.basis:
            out["basis"] = self.basis
        return out

    def select_outputs(self, index: torch.Tensor) -> "Backbone":
        """A copy whose outputs are ``self(x)[:, index]`` (used for rank prefixes)."""
        new = copy.deepcopy(self)
        idx = index.to(self.out.weight.device)
        new.out = nn.Linear(self.out.in_features, len(index)).to(self.out.weight.device, self.out.weight.dtype)
        with torch.no_grad():
            new.out.weight.copy_(self.out.weight[idx])
            new.out.bias.copy_(self.out.bias[idx])
        new.out_dim = len(index)
        return new


def make_backbone(name: str, in_dim: int, out_dim: int, **kwargs) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; use one of {sorted(BACKBONES)}")
    return BACKBONES[name](in_dim, out_dim, **kwargs)


class _SineLayer(nn.Module):
    def __init__(self, n_in: int, n_out: int, omega: float, first: bool, bias_scale: float | None = None):
        super().__init__()
        self.omega = float(omega)
        self.linear = nn.Linear(n_in, n_out)
        bound = 1.0 / n_in if first else math.sqrt(6.0 / n_in) / self.omega
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound)
            if bias_scale is not None:
                self.linear.bias.uniform_(-bias_scale, bias_scale)
            else:
                self.linear.bias.uniform_(-bound, bound)

    def forward(self, x):
        return torch.sin(self.omega * self.linear(x))


class Siren(Backbone, name="siren"):
    """SIREN: sine layers with the Sitzmann initialisation.

    Options: ``omega0`` (first layer, default 30) and ``omega_hidden`` (default 30).
    """

    def __init__(self, in_dim, out_dim, width=128, depth=2, omega0: float = 30.0, omega_hidden: float = 30.0,
                 basis: int = 0):
        super().__init__(in_dim, out_dim, width, depth, basis=basis, omega0=float(omega0),
                         omega_hidden=float(omega_hidden))
        layers = [_SineLayer(in_dim, width, omega0, first=True)]
        layers += [_SineLayer(width, width, omega_hidden, first=False) for _ in range(depth)]
        self.body = nn.Sequential(*layers)
        self._finish(width, math.sqrt(6.0 / width) / omega_hidden)

    def hidden(self, x):
        return self.body(x)


class _FinerLayer(_SineLayer):
    def forward(self, x):
        z = self.linear(x)
        with torch.no_grad():
            scale = z.abs() + 1.0  # FINER: variable period, not differentiated
        return torch.sin(self.omega * scale * z)


class Finer(Backbone, name="finer"):
    """FINER: ``sin(ω0 (|z|+1) z)``, SIREN init, first-layer bias ``U(-k, k)``.

    Options: ``omega0`` (30), ``omega_hidden`` (30), ``first_bias_scale`` k (1.0).
    """

    def __init__(self, in_dim, out_dim, width=128, depth=2, omega0: float = 30.0, omega_hidden: float = 30.0,
                 first_bias_scale: float = 1.0, basis: int = 0):
        super().__init__(in_dim, out_dim, width, depth, basis=basis, omega0=float(omega0), omega_hidden=float(omega_hidden),
                         first_bias_scale=float(first_bias_scale))
        layers = [_FinerLayer(in_dim, width, omega0, first=True, bias_scale=first_bias_scale)]
        layers += [_FinerLayer(width, width, omega_hidden, first=False) for _ in range(depth)]
        self.body = nn.Sequential(*layers)
        self._finish(width, math.sqrt(6.0 / width) / omega_hidden)

    def hidden(self, x):
        return self.body(x)


class _GaborLayer(nn.Module):
    def __init__(self, n_in: int, n_out: int, omega: float, scale: float):
        super().__init__()
        self.omega, self.scale = float(omega), float(scale)
        self.linear = nn.Linear(n_in, n_out)

    def forward(self, x):
        z = self.linear(x)
        return torch.cos(self.omega * z) * torch.exp(-((self.scale * z) ** 2))


class Wire(Backbone, name="wire"):
    """WIRE (real): Gabor wavelet activations ``cos(ω z) exp(-(s z)^2)``.

    Options: ``omega0`` (ω, 20) and ``scale`` (s, 10), the paper's defaults.
    """

    def __init__(self, in_dim, out_dim, width=128, depth=2, omega0: float = 20.0, scale: float = 10.0,
                 basis: int = 0):
        super().__init__(in_dim, out_dim, width, depth, basis=basis, omega0=float(omega0), scale=float(scale))
        layers = [_GaborLayer(in_dim, width, omega0, scale)]
        layers += [_GaborLayer(width, width, omega0, scale) for _ in range(depth)]
        self.body = nn.Sequential(*layers)
        self._finish(width, 1.0 / math.sqrt(width))

    def hidden(self, x):
        return self.body(x)


class ReluPE(Backbone, name="relu"):
    """Positional encoding ``[x, sin(2^k π x), cos(2^k π x)]_{k<L}`` + ReLU MLP.

    Options: ``frequencies`` L (default 10).
    """

    def __init__(self, in_dim, out_dim, width=128, depth=2, frequencies: int = 10, basis: int = 0):
        super().__init__(in_dim, out_dim, width, depth, basis=basis, frequencies=int(frequencies))
        self.register_buffer("freqs", (2.0 ** torch.arange(int(frequencies), dtype=torch.float32)) * math.pi,
                             persistent=False)
        enc_dim = in_dim * (1 + 2 * int(frequencies))
        layers: list[nn.Module] = [nn.Linear(enc_dim, width), nn.ReLU()]
        for _ in range(depth):
            layers += [nn.Linear(width, width), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self._finish(width, 1.0 / math.sqrt(width))

    def encode(self, x):
        xb = x[..., None] * self.freqs  # (n, in, L)
        return torch.cat([x, torch.sin(xb).flatten(1), torch.cos(xb).flatten(1)], dim=-1)

    def hidden(self, x):
        return self.body(self.encode(x))


class Cosine(Backbone, name="cosine"):
    """No hidden layers: the features are the cosine series ``Σ_k a_k cos(π k (x + 1) / 2)`` alone.

    What a compact ``.finr`` file (format version 2) loads into: its factor curves
    are stored as cosine coefficients (``basis`` terms), baked from a fitted
    field's networks on the stored samples. Still trainable (the coefficients).
    """

    def __init__(self, in_dim, out_dim, width=1, depth=0, basis: int = 1):
        super().__init__(in_dim, out_dim, width, depth, basis=max(1, int(basis)))
        self._finish(0, 0.0)
        with torch.no_grad():  # no hidden features to carry a fresh field: the series starts random
            self.out.weight.uniform_(-1.0 / math.sqrt(self.basis), 1.0 / math.sqrt(self.basis))

    def hidden(self, x):
        return x.new_zeros((x.shape[0], 0))
