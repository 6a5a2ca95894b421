"""Instant-NGP multiresolution hash encoding in pure PyTorch (Müller et al., "Instant
Neural Graphics Primitives with a Multiresolution Hash Encoding", SIGGRAPH 2022).

Level ``l`` of ``L`` is a grid of resolution ``N_l = ⌊N_min b^l⌋`` with growth
``b = exp((ln N_max - ln N_min) / (L - 1))`` (the paper's eq. 2). A point
``x ∈ [0, 1]^d`` is scaled to ``x N_l``; the ``2^d`` corners of its cell look
up ``F`` trainable features each, either directly (coarse levels, where
``(N_l + 1)^d ≤ T``) or through the spatial hash
``h(x) = (⊕_i x_i π_i) mod T`` with ``π = (1, 2654435761, 805459861)``; the
features are d-linearly interpolated and the ``L`` levels concatenated into a
tiny MLP. Defaults are the paper's: L = 16, F = 2, T = 2^19, N_min = 16,
N_max = the largest axis length, a 2 x 64 ReLU MLP, table entries
``U(-1e-4, 1e-4)``, Adam lr 1e-2 with β = (0.9, 0.99), ε = 1e-15, L2 1e-6 on the
MLP weights and 2^18 samples a step.

``log2_table_size`` sets T; :meth:`HashGridBaseline.for_parameters` picks the
largest T within a parameter budget, for equal-size comparisons. Differences
from the CUDA original: float32 tables (the original uses fp16), and Adam also
updates table entries whose gradient is zero in a step (the original skips
them), which matters little within minutes.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from ._base import NeuralBaseline

__all__ = ["HashGridBaseline", "HashEncoding", "hashgrid_parameters"]

PRIMES = (1, 2654435761, 805459861, 3674653429)


def _level_layout(dim: int, levels: int, features: int, table_size: int, base_res: int, max_res: int):
    growth = math.exp((math.log(max_res) - math.log(base_res)) / (levels - 1)) if levels > 1 else 1.0
    out = []
    offset = 0
    for level in range(levels):
        res = int(math.floor(base_res * growth**level))
        dense = (res + 1) ** dim
        entries = min(table_size, dense)
        out.append({"res": res, "entries": entries, "dense": dense <= table_size, "offset": offset})
        offset += entries
    return growth, out, offset


def hashgrid_parameters(dim: int, *, levels: int = 16, features: int = 2, log2_table_size: int = 19,
                        base_res: int = 16, max_res: int = 512, width: int = 64, hidden_layers: int = 2,
                        out_dim: int = 3) -> int:
    """Trainable parameters of a hash grid and its MLP."""
    _, _, entries = _level_layout(dim, levels, features, 1 << log2_table_size, base_res, max_res)
    mlp, n_in = 0, levels * features
    for _ in range(hidden_layers):
        mlp += n_in * width + width
        n_in = width
    return entries * features + mlp + n_in * out_dim + out_dim


class HashEncoding(nn.Module):
    """Multiresolution hash encoding ``[0, 1]^d -> R^{L F}``."""

    def __init__(self, dim: int, *, levels: int = 16, features: int = 2, table_size: int = 1 << 19,
                 base_res: int = 16, max_res: int = 512):
        super().__init__()
        if dim > len(PRIMES):
            raise ValueError(f"the hash encoding supports up to {len(PRIMES)} dimensions, got {dim}")
        self.dim, self.levels, self.features, self.table_size = dim, levels, features, table_size
        self.growth, self.layout, total = _level_layout(dim, levels, features, table_size, base_res, max(max_res, base_res))
        self.table = nn.Parameter(torch.empty(total, features).uniform_(-1e-4, 1e-4))
        corners = torch.tensor(list(itertools.product((0, 1), repeat=dim)), dtype=torch.long)  # (2^d, d)
        self.register_buffer("corners", corners, persistent=False)
        self.register_buffer("primes", torch.tensor(PRIMES[:dim], dtype=torch.long), persistent=False)

    @property
    def out_dim(self) -> int:
        return self.levels * self.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (P, d) in [0, 1]; returns (P, L F)."""
        outs = []
        corner_on = self.corners.bool()[None]  # (1, 2^d, d)
        for lv in self.layout:
            pos = x * lv["res"]
            base = pos.floor().long().clamp_(0, lv["res"] - 1 if lv["res"] > 1 else 0)
            frac = (pos - base).clamp_(0, 1)
            idx = base[:, None, :] + self.corners[None]  # (P, 2^d, d)
            if lv["dense"]:
                stride = (lv["res"] + 1) ** torch.arange(self.dim, device=x.device)
                flat = (idx * stride).sum(-1)
            else:
                h = idx * self.primes
                flat = h[..., 0]
                for k in range(1, self.dim):
                    flat = torch.bitwise_xor(flat, h[..., k])
                flat = torch.remainder(flat, lv["entries"])
            feats = self.table[lv["offset"] + flat]  # (P, 2^d, F)
            w = torch.where(corner_on, frac[:, None, :], 1 - frac[:, None, :]).prod(-1)  # (P, 2^d)
            outs.append((feats * w[..., None]).sum(1))
        return torch.cat(outs, dim=-1)


class _HashNet(nn.Module):
    def __init__(self, encoding: HashEncoding, width: int, hidden_layers: int, out_dim: int):
        super().__init__()
        self.encoding = encoding
        layers: list[nn.Module] = []
        n_in = encoding.out_dim
        for _ in range(hidden_layers):
            layers += [nn.Linear(n_in, width), nn.ReLU()]
            n_in = width
        layers.append(nn.Linear(n_in, out_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x):
        return self.mlp(self.encoding(x))


class HashGridBaseline(NeuralBaseline, name="hashgrid"):
    """Instant-NGP hash grid + tiny MLP; see the module docstring for the settings."""

    reference = "Instant-NGP hash grid, Mueller et al. 2022 (L16 F2 T2^19 Nmin16, MLP 2x64, Adam 1e-2)"
    coord_range = (0.0, 1.0)
    value_range = (0.0, 1.0)

    def __init__(self, *, levels: int = 16, features: int = 2, log2_table_size: int = 19, base_res: int = 16,
                 max_res: int | None = None, width: int = 64, hidden_layers: int = 2, lr: float = 1e-2,
                 weight_decay: float = 1e-6, batch: int | None = 1 << 18, seed: int = 0, device: str = "cpu"):
        super().__init__(lr=lr, batch=batch, betas=(0.9, 0.99), eps=1e-15, seed=seed, device=device)
        self.levels, self.features, self.log2_table_size = int(levels), int(features), int(log2_table_size)
        self.base_res, self.max_res = int(base_res), max_res
        self.width, self.hidden_layers, self.weight_decay = int(width), int(hidden_layers), float(weight_decay)

    @classmethod
    def for_parameters(cls, budget: int, shape, channels: int, **options) -> "HashGridBaseline":
        """The largest table (a power of two) whose model has at most ``budget`` parameters."""
        max_res = options.get("max_res") or max(shape)
        common = {k: options[k] for k in ("levels", "features", "base_res", "width", "hidden_layers") if k in options}
        best = 4
        for log2 in range(4, 25):
            if hashgrid_parameters(len(shape), log2_table_size=log2, max_res=max_res, out_dim=channels, **common) <= budget:
                best = log2
        return cls(log2_table_size=best, **options)

    def build(self, in_dim, out_dim, shape):
        enc = HashEncoding(in_dim, levels=self.levels, features=self.features, table_size=1 << self.log2_table_size,
                           base_res=self.base_res, max_res=self.max_res or max(shape))
        return _HashNet(enc, self.width, self.hidden_layers, out_dim)

    def param_groups(self, model):
        weights = [p for n, p in model.mlp.named_parameters() if n.endswith("weight")]
        biases = [p for n, p in model.mlp.named_parameters() if not n.endswith("weight")]
        return [{"params": [model.encoding.table], "weight_decay": 0.0},
                {"params": weights, "weight_decay": self.weight_decay},
                {"params": biases, "weight_decay": 0.0}]

    def settings(self):
        out = {"levels": self.levels, "features": self.features, "log2_table_size": self.log2_table_size,
               "base_res": self.base_res, "max_res": self.max_res or (max(self.shape) if self.shape else None),
               "width": self.width, "hidden_layers": self.hidden_layers, "lr": self.lr, "batch": self.batch}
        if self.model is not None:
            out["growth"] = round(self.model.encoding.growth, 4)
        return out
