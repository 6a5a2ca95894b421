"""Discrete tensor decompositions of the data itself, sized to a parameter budget.

The data tensor is ``(T, H, W, C)`` (video) or ``(H, W, C)`` (image); the
channel axis is one more tensor mode. Each method is given the same number of
parameters as the finr3d model it is compared with:

- ``cp_als``: CP by alternating least squares (Kolda & Bader, SIAM Review 2009),
  rank ``R = ⌊P / Σ n_i⌋``, SVD start (tensorly's default). The MTTKRP is
  computed in rank chunks with ``einsum`` instead of tensorly's explicit
  Khatri-Rao product, which for a 120-frame clip at rank 200 would need ~5 GB;
  the maths is the same as ``tensorly.decomposition.parafac``.
- ``cp_als_torch``: the same CP-ALS with finr3d's own torch sweeps
  (:func:`finr3d.closed_form.cp_als_sweeps`, one einsum MTTKRP per mode: about
  100x faster per sweep than ``cp_als`` at rank 1000+ on one core), the channel
  mode included in the rank budget, data centred on its mean. It is finr3d's
  closed-form phase without the networks: the discrete model finr3d would be at
  equal parameters if every parameter were a factor entry.
- ``tucker``: truncated HOSVD (De Lathauwer et al. 2000) refined by HOOI sweeps,
  with tensorly's ``unfold``, ``multi_mode_dot`` and ``svd_interface`` (the same
  steps as ``tensorly.decomposition.tucker``, timed per sweep). Ranks are
  ``r_i ∝ n_i`` (the channel mode keeps all channels), the largest within P.
- ``tt_svd``: TT-SVD (Oseledets 2011) with ``tensorly.decomposition.tensor_train``
  and equal bond ranks (capped by the unfolding sizes), the largest within P.

Errors come from norms (``||X||² - ||core||²`` for orthonormal Tucker factors,
Gram matrices for CP) so the curve costs nothing extra; the final PSNR of
:meth:`predict_dense` is measured on the reconstruction, clipped to [0, 1].
"""

from __future__ import annotations

import math
import time

import numpy as np

from ._base import Baseline, Callback, Curve, check_data, psnr_from_mse

__all__ = ["CPALSBaseline", "CPALSTorchBaseline", "TuckerBaseline", "TTSVDBaseline", "cp_rank_for", "tucker_ranks_for", "tt_ranks_for"]

#: default parameter budget as a fraction of the data's values, when none is given
DEFAULT_BUDGET_FRACTION = 0.01


def cp_rank_for(shape, budget: int) -> int:
    """Largest CP rank with ``R Σ n_i <= budget``."""
    return max(1, int(budget) // sum(shape))


def tucker_parameters(shape, ranks) -> int:
    return math.prod(ranks) + sum(n * r for n, r in zip(shape, ranks))


def tucker_ranks_for(shape, budget: int) -> list[int]:
    """Ranks ``r_i = round(α n_i)`` (channel mode: all channels), the largest α within ``budget``."""
    def ranks(alpha):
        return [n if i == len(shape) - 1 else min(n, max(1, round(alpha * n))) for i, n in enumerate(shape)]

    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if tucker_parameters(shape, ranks(mid)) <= budget else (lo, mid)
    return ranks(lo)


def tt_parameters(shape, ranks) -> int:
    return sum(ranks[k] * n * ranks[k + 1] for k, n in enumerate(shape))


def tt_ranks_for(shape, budget: int) -> list[int]:
    """Bond ranks ``[1, r, ..., r, 1]`` (each capped by its unfolding), the largest r within ``budget``."""
    d = len(shape)
    caps = [min(math.prod(shape[:k]), math.prod(shape[k:])) for k in range(1, d)]

    def ranks(r):
        return [1] + [min(r, c) for c in caps] + [1]

    r = 1
    while r < max(caps) and tt_parameters(shape, ranks(r + 1)) <= budget:
        r += 1
    return ranks(r)


class _TensorBaseline(Baseline):
    """Shared budget handling: ``rank`` given directly, or ``parameters`` to match a model."""

    def __init__(self, *, rank=None, parameters: int | None = None, seed: int = 0):
        super().__init__(seed=seed)
        self.rank, self.parameters = rank, parameters
        self._recon = None

    def _budget(self, data: np.ndarray) -> int:
        return int(self.parameters) if self.parameters else max(1, int(DEFAULT_BUDGET_FRACTION * data.size))

    def predict_dense(self, shape=None) -> np.ndarray:
        return self._reconstruct().astype(np.float32)

    def _psnr(self, sq_error: float, n: int) -> float:
        return psnr_from_mse(max(sq_error, 0.0) / n)


def _mttkrp(x: np.ndarray, factors: list[np.ndarray], mode: int, chunk_values: int = 1 << 25) -> np.ndarray:
    """``X_(mode) (⊙_{k≠mode} A_k)`` without forming the Khatri-Rao product: (n_mode, R)."""
    d = x.ndim
    rank = factors[0].shape[1]
    letters = "abcdefgh"[:d]
    others = [k for k in range(d) if k != mode]
    spec = ",".join([letters] + [letters[k] + "z" for k in others]) + "->" + letters[mode] + "z"
    biggest_other = max(x.shape[k] for k in others)
    chunk = max(1, min(rank, chunk_values // max(1, x.size // biggest_other)))
    out = np.empty((x.shape[mode], rank), dtype=x.dtype)
    for s in range(0, rank, chunk):
        e = min(rank, s + chunk)
        out[:, s:e] = np.einsum(spec, x, *[factors[k][:, s:e] for k in others], optimize="greedy")
    return out


class CPALSBaseline(_TensorBaseline, name="cp_als"):
    """CP-ALS with an SVD start; one curve point per ALS sweep."""

    reference = "CP-ALS (Kolda & Bader 2009), rank from the parameter budget"

    def _setup(self, data) -> tuple[np.ndarray, int]:
        """The checked data and the rank (given, or from the parameter budget)."""
        x = check_data(data)
        self.shape = x.shape
        self.rank_used = int(self.rank) if self.rank else cp_rank_for(x.shape, self._budget(x))
        return x, self.rank_used

    def fit(self, data, seconds: float, callback: Callback = None) -> Curve:
        x, rank = self._setup(data)
        rng = np.random.default_rng(self.seed)
        t0 = time.perf_counter()
        import tensorly as tl
        from tensorly.tenalg.svd import svd_interface

        factors = []
        for mode, n in enumerate(x.shape):
            u, _, _ = svd_interface(tl.unfold(x, mode), n_eigenvecs=min(rank, n))
            if u.shape[1] < rank:  # tensorly's svd init fills the missing columns randomly too
                u = np.concatenate([u, rng.random((n, rank - u.shape[1]), dtype=np.float32)], axis=1)
            factors.append(np.ascontiguousarray(u, dtype=np.float32))
        norm_sq = float(np.dot(x.ravel().astype(np.float64), x.ravel().astype(np.float64)))
        self.steps, self.curve = 0, []
        self._report(None, 0.0, self._psnr(norm_sq, x.size))  # the zero model
        while time.perf_counter() - t0 < seconds:
            grams = [f.T.astype(np.float64) @ f for f in factors]
            for mode in range(x.ndim):
                v = np.ones((rank, rank))
                for k, g in enumerate(grams):
                    if k != mode:
                        v *= g
                m = _mttkrp(x, factors, mode).astype(np.float64)
                factors[mode] = np.linalg.lstsq(v.T, m.T, rcond=None)[0].T.astype(np.float32)
                grams[mode] = factors[mode].T.astype(np.float64) @ factors[mode]
            # ||X - X̂||² = ||X||² - 2 <X, X̂> + ||X̂||², from the last mode's MTTKRP and the Grams
            inner = float(np.sum(m * factors[-1]))
            model_sq = float(np.sum(np.prod(np.stack(grams), axis=0)))
            self.steps += 1
            if not self._report(callback, time.perf_counter() - t0, self._psnr(norm_sq - 2 * inner + model_sq, x.size)):
                break
        self.factors = factors
        return self.curve

    def parameter_count(self) -> int:
        return self.rank_used * sum(self.shape)

    def _reconstruct(self):
        import tensorly as tl

        return tl.cp_to_tensor((None, self.factors))

    def settings(self):
        return {"rank": getattr(self, "rank_used", self.rank)}


class CPALSTorchBaseline(CPALSBaseline, name="cp_als_torch"):
    """CP-ALS with finr3d's torch sweeps; PSNR of the reconstruction after sweeps 1, 2, 4, 8, ... and the last.

    The clock excludes the reconstructions made for the curve (as the neural
    baselines' clocks exclude their scoring).
    """

    reference = "CP-ALS (Kolda & Bader 2009) with finr3d's torch MTTKRP, rank from the parameter budget"

    def fit(self, data, seconds: float, callback: Callback = None) -> Curve:
        import torch

        from finr3d.closed_form import cp_als_sweeps

        x, rank = self._setup(data)
        self.mean = x.reshape(-1, x.shape[-1]).mean(0)
        centred = torch.from_numpy(np.ascontiguousarray(x - self.mean, dtype=np.float32))
        self.steps, self.curve = 0, []
        self._report(None, 0.0, self._psnr(float(np.sum(np.square(x, dtype=np.float64))), x.size))  # the zero model
        spent, last = 0.0, 0.0
        t0 = time.perf_counter()
        for factors in cp_als_sweeps(centred, rank, seed=self.seed):
            now = time.perf_counter()
            last, spent = now - t0, spent + (now - t0)
            self.steps += 1
            self.factors = [f.numpy().copy() for f in factors]
            done = spent + last > seconds
            if done or self.steps & (self.steps - 1) == 0:
                err = float(np.sum(np.square(self._reconstruct() - x, dtype=np.float64)))
                if not self._report(callback, spent, self._psnr(err, x.size)):
                    break
            if done:
                break
            t0 = time.perf_counter()
        return self.curve

    def _reconstruct(self):
        return super()._reconstruct() + self.mean  # the sweeps fit the clip minus its mean


class TuckerBaseline(_TensorBaseline, name="tucker"):
    """Truncated HOSVD, then HOOI sweeps while time remains; one curve point each."""

    reference = "Tucker: HOSVD (De Lathauwer et al. 2000) + HOOI, ranks from the parameter budget"

    def fit(self, data, seconds: float, callback: Callback = None) -> Curve:
        import tensorly as tl
        from tensorly.tenalg import multi_mode_dot
        from tensorly.tenalg.svd import svd_interface

        x = check_data(data)
        self.shape = x.shape
        ranks = list(self.rank) if self.rank else tucker_ranks_for(x.shape, self._budget(x))
        self.ranks = ranks
        norm_sq = float(np.dot(x.ravel().astype(np.float64), x.ravel().astype(np.float64)))
        self.steps, self.curve = 0, []
        self._report(None, 0.0, self._psnr(norm_sq, x.size))
        t0 = time.perf_counter()
        factors = [svd_interface(tl.unfold(x, m), n_eigenvecs=r)[0] for m, r in enumerate(ranks)]
        while True:
            core = multi_mode_dot(x, factors, transpose=True)
            # orthonormal factors: ||X - X̂||² = ||X||² - ||core||²
            err = norm_sq - float(np.sum(core.astype(np.float64) ** 2))
            self.steps += 1
            if not self._report(callback, time.perf_counter() - t0, self._psnr(err, x.size)):
                break
            if time.perf_counter() - t0 >= seconds:
                break
            for m in range(x.ndim):  # one HOOI sweep
                y = multi_mode_dot(x, factors, skip=m, transpose=True)
                factors[m] = svd_interface(tl.unfold(y, m), n_eigenvecs=ranks[m])[0]
        self.core, self.factors = core, factors
        return self.curve

    def parameter_count(self) -> int:
        return tucker_parameters(self.shape, self.ranks)

    def _reconstruct(self):
        import tensorly as tl

        return tl.tucker_to_tensor((self.core, self.factors))

    def settings(self):
        return {"ranks": getattr(self, "ranks", self.rank)}


class TTSVDBaseline(_TensorBaseline, name="tt_svd"):
    """TT-SVD in one pass (not iterative: a single curve point)."""

    reference = "TT-SVD (Oseledets 2011), bond ranks from the parameter budget"

    def fit(self, data, seconds: float, callback: Callback = None) -> Curve:
        import tensorly as tl
        from tensorly.decomposition import tensor_train

        x = check_data(data)
        self.shape = x.shape
        ranks = list(self.rank) if self.rank else tt_ranks_for(x.shape, self._budget(x))
        self.ranks = ranks
        self.steps, self.curve = 0, []
        norm_sq = float(np.dot(x.ravel().astype(np.float64), x.ravel().astype(np.float64)))
        self._report(None, 0.0, self._psnr(norm_sq, x.size))
        t0 = time.perf_counter()
        self.cores = tensor_train(x, rank=ranks)
        elapsed = time.perf_counter() - t0
        err = float(np.sum((tl.tt_to_tensor(self.cores).astype(np.float64) - x) ** 2))
        self.steps = 1
        self._report(callback, elapsed, self._psnr(err, x.size))
        return self.curve

    def parameter_count(self) -> int:
        return tt_parameters(self.shape, self.ranks)

    def _reconstruct(self):
        import tensorly as tl

        return tl.tt_to_tensor(self.cores)

    def settings(self):
        return {"ranks": getattr(self, "ranks", self.rank)}
