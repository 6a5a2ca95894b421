"""Tensor decompositions that contract per-mode features into a field.

Mode ``m`` contributes a feature matrix ``F_m`` of shape ``(N_m, D_m)``: its
network evaluated at ``N_m`` coordinates. A decomposition turns the ``F_m`` and
its own parameters into values ``(N_0, ..., N_{M-1}, C)`` on the outer-product
grid (``*_contract_grid``) or ``(P, C)`` at points where every mode is evaluated
at the same ``P`` points (``*_contract_points``).

- CP, rank R:        ``f_c = Σ_r Π_m F_m[:, r] W[r, c]``
- Tucker, (R_m):     ``f_c = Σ_{r_0..r_{M-1}} G[r_0, ..., r_{M-1}, c] Π_m F_m[:, r_m]``
- TT, bonds (r_m):   ``f_c = F_0 F_1 ... F_{M-1} W[:, c]`` with ``F_m(x) ∈ R^{r_m × r_{m+1}}``,
  ``r_0 = 1`` and ``r_M`` the output bond that the channel factor ``W`` maps to channels.

Rank prefixes keep the leading components: CP components ``:r``, the Tucker
core's leading block, the leading TT bonds (the output bond is kept whole).
Decompositions join :data:`DECOMPOSITIONS` when their class is defined.
"""

from __future__ import annotations

import math
import string
from typing import ClassVar, Sequence

import torch
from torch import nn

__all__ = [
    "DECOMPOSITIONS",
    "Decomposition",
    "CP",
    "Tucker",
    "TT",
    "cp_contract_grid",
    "cp_contract_points",
    "tucker_contract_grid",
    "tucker_contract_points",
    "tt_contract_grid",
    "tt_contract_points",
]

DECOMPOSITIONS: dict[str, type["Decomposition"]] = {}


# ---------------------------------------------------------------------------
# The maths: pure functions over tensors
# ---------------------------------------------------------------------------

def cp_contract_grid(factors: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """CP on a grid: ``out[n_0..n_{M-1}, c] = Σ_r Π_m F_m[n_m, r] W[r, c]``.

    factors : M tensors (N_m, R); weights : (R, C). Returns (N_0, ..., N_{M-1}, C).
    The Khatri-Rao product of all but the last mode meets the last mode and the
    channel factor in one matrix product.
    """
    rank = weights.shape[0]
    sizes = [f.shape[0] for f in factors]
    acc = factors[0]
    for f in factors[1:-1]:
        acc = (acc[:, None, :] * f[None, :, :]).reshape(-1, rank)
    last = factors[-1]
    rhs = (last.t()[:, :, None] * weights[:, None, :]).reshape(rank, -1)  # (R, N_last*C)
    return (acc @ rhs).reshape(*sizes, weights.shape[1])


def cp_contract_points(factors: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """CP at points: ``out[p, c] = Σ_r Π_m F_m[p, r] W[r, c]``; factors (P, R) each."""
    acc = factors[0]
    for f in factors[1:]:
        acc = acc * f
    return acc @ weights


def einsum_letters(n: int, offset: int = 0) -> str:
    """``n`` distinct einsum subscripts, starting ``offset`` letters in."""
    return string.ascii_letters[offset:offset + n]


def tucker_contract_grid(factors: Sequence[torch.Tensor], core: torch.Tensor) -> torch.Tensor:
    """Tucker on a grid: ``out = G ×_0 F_0 ×_1 F_1 ... ×_{M-1} F_{M-1}``.

    factors : M tensors (N_m, R_m); core : (R_0, ..., R_{M-1}, C).
    Returns (N_0, ..., N_{M-1}, C). opt_einsum picks the contraction order.
    """
    m = len(factors)
    ranks = einsum_letters(m)
    sizes = einsum_letters(m, 26)
    eq = ",".join(f"{sizes[i]}{ranks[i]}" for i in range(m)) + f",{ranks}z->{sizes}z"
    return torch.einsum(eq, *factors, core)


def tucker_contract_points(factors: Sequence[torch.Tensor], core: torch.Tensor) -> torch.Tensor:
    """Tucker at points: ``out[p, c] = Σ G[r_0..r_{M-1}, c] Π_m F_m[p, r_m]``."""
    acc = core.reshape(core.shape[0], -1)  # (R_0, rest)
    out = factors[0] @ acc  # (P, R_1...R_{M-1} C)
    for f in factors[1:]:
        r = f.shape[1]
        out = out.reshape(out.shape[0], r, -1)
        out = torch.einsum("pr,prk->pk", f, out)
    return out


def tt_contract_grid(cores: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """TT on a grid: ``out[n_0..n_{M-1}, c] = F_0[n_0] F_1[n_1] ... F_{M-1}[n_{M-1}] W[:, c]``.

    cores : M tensors (N_m, r_m, r_{m+1}) with r_0 = 1; weights : (r_M, C).
    """
    sizes = [c.shape[0] for c in cores]
    acc = cores[0][:, 0, :]
    for core in cores[1:]:
        acc = torch.einsum("ar,nrs->ans", acc, core).reshape(-1, core.shape[2])
    return (acc @ weights).reshape(*sizes, weights.shape[1])


def tt_contract_points(cores: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """TT at points: a batched chain of matrix products; cores (P, r_m, r_{m+1})."""
    acc = cores[0][:, 0, :]
    for core in cores[1:]:
        acc = torch.bmm(acc[:, None, :], core)[:, 0, :]
    return acc @ weights


# ---------------------------------------------------------------------------
# The registry: thin classes that hold ranks and parameters
# ---------------------------------------------------------------------------

class Decomposition(nn.Module):
    """Ranks, learned parameters (core or channel factor) and the contraction.

    Parameters
    ----------
    n_modes : int
    rank : int or sequence of int
    channels : int
    """

    name: ClassVar[str]

    def __init_subclass__(cls, name: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if name is not None:
            cls.name = name
            DECOMPOSITIONS[name] = cls

    def __init__(self, n_modes: int, rank, channels: int):
        super().__init__()
        self.n_modes, self.channels = int(n_modes), int(channels)
        self.ranks = self.normalize_rank(rank, n_modes, channels)

    # --- rank bookkeeping -------------------------------------------------
    @classmethod
    def normalize_rank(cls, rank, n_modes: int, channels: int) -> tuple[int, ...]:
        raise NotImplementedError

    def prefix(self, rank) -> tuple[int, ...]:
        """The ranks of the prefix model for ``rank`` (int or tuple), clipped to the trained ranks."""
        if rank is None:
            return self.ranks
        if isinstance(rank, int):
            if rank < 1:
                raise ValueError(f"rank must be at least 1, got {rank}")
            return tuple(min(rank, r) for r in self.ranks)
        rank = tuple(int(r) for r in rank)
        if len(rank) != len(self.ranks) or any(r < 1 for r in rank):
            raise ValueError(f"{self.name} expects {len(self.ranks)} positive ranks, got {rank}")
        return tuple(min(r, t) for r, t in zip(rank, self.ranks))

    def feature_dims(self) -> list[int]:
        """Number of features each mode network outputs."""
        raise NotImplementedError

    def feature_index(self, mode: int, prefix: tuple[int, ...]) -> torch.Tensor:
        """Indices of mode ``mode``'s features that the prefix model keeps."""
        raise NotImplementedError

    def select(self, feats: list[torch.Tensor], prefix: tuple[int, ...]) -> list[torch.Tensor]:
        if prefix == self.ranks:
            return feats
        return [f[:, self.feature_index(m, prefix).to(f.device)] for m, f in enumerate(feats)]

    # --- parameters ---------------------------------------------------------
    def mixing(self, prefix: tuple[int, ...]) -> torch.Tensor:
        """The learned core or channel factor, cut to the prefix."""
        raise NotImplementedError

    def mixing_parameter(self) -> nn.Parameter:
        """The learned core or channel factor (the parameter :meth:`mixing` cuts)."""
        raise NotImplementedError

    def n_terms(self, prefix=None) -> int:
        """How many products the contraction sums (for init scaling)."""
        return math.prod(self.prefix(prefix))

    # --- contraction --------------------------------------------------------
    def contract_grid(self, feats, prefix=None):
        raise NotImplementedError

    def contract_points(self, feats, prefix=None):
        raise NotImplementedError


class CP(Decomposition, name="cp"):
    """CP (CANDECOMP/PARAFAC): ``f_c = Σ_r Π_m φ_m(x_m)[r] W[r, c]``."""

    def __init__(self, n_modes, rank, channels):
        super().__init__(n_modes, rank, channels)
        self.weights = nn.Parameter(torch.randn(self.ranks[0], channels) / math.sqrt(self.ranks[0]))

    @classmethod
    def normalize_rank(cls, rank, n_modes, channels):
        if isinstance(rank, int):
            return (int(rank),)
        rank = tuple(int(r) for r in rank)
        if len(set(rank)) != 1:
            raise ValueError(f"cp has one rank shared by all modes, got {rank}; give one integer")
        return (rank[0],)

    def prefix(self, rank):
        if rank is not None and not isinstance(rank, int):
            rank = min(int(r) for r in rank)
        return super().prefix(rank)

    def feature_dims(self):
        return [self.ranks[0]] * self.n_modes

    def feature_index(self, mode, prefix):
        return torch.arange(prefix[0])

    def mixing(self, prefix):
        return self.weights[: prefix[0]]

    def mixing_parameter(self):
        return self.weights

    def contract_grid(self, feats, prefix=None):
        prefix = self.prefix(prefix)
        return cp_contract_grid(self.select(feats, prefix), self.mixing(prefix))

    def contract_points(self, feats, prefix=None):
        prefix = self.prefix(prefix)
        return cp_contract_points(self.select(feats, prefix), self.mixing(prefix))

    def n_terms(self, prefix=None):
        return self.prefix(prefix)[0]


class Tucker(Decomposition, name="tucker"):
    """Tucker: a learned core ``G`` (R_0 × ... × R_{M-1} × C) contracted with every mode."""

    def __init__(self, n_modes, rank, channels):
        super().__init__(n_modes, rank, channels)
        n = math.prod(self.ranks)
        self.core = nn.Parameter(torch.randn(*self.ranks, channels) / math.sqrt(n))

    @classmethod
    def normalize_rank(cls, rank, n_modes, channels):
        if isinstance(rank, int):
            return (int(rank),) * n_modes
        rank = tuple(int(r) for r in rank)
        if len(rank) != n_modes:
            raise ValueError(f"tucker needs one rank per mode ({n_modes}), got {rank}")
        return rank

    def feature_dims(self):
        return list(self.ranks)

    def feature_index(self, mode, prefix):
        return torch.arange(prefix[mode])

    def mixing(self, prefix):
        return self.core[tuple(slice(0, r) for r in prefix)]

    def mixing_parameter(self):
        return self.core

    def contract_grid(self, feats, prefix=None):
        prefix = self.prefix(prefix)
        return tucker_contract_grid(self.select(feats, prefix), self.mixing(prefix))

    def contract_points(self, feats, prefix=None):
        prefix = self.prefix(prefix)
        return tucker_contract_points(self.select(feats, prefix), self.mixing(prefix))


class TT(Decomposition, name="tt"):
    """Tensor train: ``f = φ_0(x_0) φ_1(x_1) ... φ_{M-1}(x_{M-1}) W``.

    ``ranks = (r_1, ..., r_{M-1}, r_M)``: the bonds between modes, then the
    output bond that the channel factor ``W`` (r_M × C) maps to channels. An
    integer rank R gives bonds R and an output bond of 1 for one channel, else
    ``min(R, 8)``. Prefixes cut the bonds between modes; the output bond stays.
    """

    def __init__(self, n_modes, rank, channels):
        super().__init__(n_modes, rank, channels)
        self.weights = nn.Parameter(torch.randn(self.ranks[-1], channels) / math.sqrt(self.ranks[-1]))

    @classmethod
    def normalize_rank(cls, rank, n_modes, channels):
        out_bond = 1 if channels == 1 else None
        if isinstance(rank, int):
            return (int(rank),) * (n_modes - 1) + (out_bond or min(int(rank), 8),)
        rank = tuple(int(r) for r in rank)
        if len(rank) == n_modes - 1:
            return rank + (out_bond or min(max(rank), 8),)
        if len(rank) != n_modes:
            raise ValueError(f"tt needs {n_modes - 1} bond ranks (or {n_modes} with the output bond), got {rank}")
        return rank

    def prefix(self, rank):
        if rank is None:
            return self.ranks
        if isinstance(rank, int):
            if rank < 1:
                raise ValueError(f"rank must be at least 1, got {rank}")
            return tuple(min(rank, r) for r in self.ranks[:-1]) + (self.ranks[-1],)
        rank = tuple(int(r) for r in rank)
        if len(rank) == len(self.ranks) - 1:
            rank = rank + (self.ranks[-1],)
        return super().prefix(rank)

    def _bonds(self, prefix):
        return (1,) + tuple(prefix)

    def feature_dims(self):
        b = self._bonds(self.ranks)
        return [b[m] * b[m + 1] for m in range(self.n_modes)]

    def feature_index(self, mode, prefix):
        full = self._bonds(self.ranks)
        cut = self._bonds(prefix)
        i = torch.arange(cut[mode])[:, None] * full[mode + 1]
        j = torch.arange(cut[mode + 1])[None, :]
        return (i + j).reshape(-1)

    def _cores(self, feats, prefix):
        b = self._bonds(prefix)
        return [f.reshape(f.shape[0], b[m], b[m + 1]) for m, f in enumerate(self.select(feats, prefix))]

    def mixing(self, prefix):
        return self.weights[: prefix[-1]]

    def mixing_parameter(self):
        return self.weights

    def contract_grid(self, feats, prefix=None):
        prefix = self.prefix(prefix)
        return tt_contract_grid(self._cores(feats, prefix), self.mixing(prefix))

    def contract_points(self, feats, prefix=None):
        prefix = self.prefix(prefix)
        return tt_contract_points(self._cores(feats, prefix), self.mixing(prefix))

    def n_terms(self, prefix=None):
        return math.prod(self.prefix(prefix))
