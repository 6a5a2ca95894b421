"""Closed-form start: a discrete decomposition distilled into the per-mode networks.

1. Decompose the target's dense grid with a discrete method: truncated HOSVD
   (Tucker), TT-SVD (TT, tensorly) or CP-ALS (CP). The channel axis is one more
   tensor mode, so the channel factor comes out of the decomposition too.
2. Balance the factors so every column has unit RMS (the scale moves into the
   core / channel factor).
3. Distil each factor matrix into its mode network by regression on the factor
   curves, spline-interpolated between the stored samples so that the networks
   stay continuous off the lattice.

The discrete factors are ordered by energy (singular values; CP components by
weight), so rank prefixes of the result are already good models.

A CP field whose networks read out a cosine basis as long as each axis
(``basis='grid'``, the video default) skips step 3's regression: its readout
reproduces any factor curve on the stored samples, so the whole closed-form
phase is CP-ALS sweeps, each read out exactly, with a validation point after
sweeps 1, 2, 4, 8, ... (:func:`reads_out_exactly`).
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from finr3d.decompositions import einsum_letters

__all__ = ["discrete_decomposition", "hosvd", "cp_als", "cp_als_sweeps", "distill_factors", "readout",
           "column_energies", "reads_out_exactly", "closed_form_start"]


def _mode_tensor(values: torch.Tensor, modes) -> torch.Tensor:
    """(n_0..n_{d-1}, C) in axis order -> (N_mode0, ..., N_mode{M-1}, C)."""
    order = [a for m in modes for a in m]
    x = values.permute(*order, values.ndim - 1) if order != sorted(order) else values
    sizes = []
    for m in modes:
        sizes.append(math.prod(values.shape[a] for a in m))
    return x.reshape(*sizes, values.shape[-1])


def _unfold(x: torch.Tensor, mode: int) -> torch.Tensor:
    return torch.movedim(x, mode, 0).reshape(x.shape[mode], -1)


def _leading_vectors(mat: torch.Tensor, rank: int) -> torch.Tensor:
    """Leading left singular vectors of ``mat`` (rows x cols), padded to ``rank`` columns."""
    mat = mat.double()
    if mat.shape[0] <= mat.shape[1]:
        evals, evecs = torch.linalg.eigh(mat @ mat.T)
        u = evecs.flip(-1)
    else:
        u, _, _ = torch.linalg.svd(mat, full_matrices=False)
    u = u[:, :rank]
    if u.shape[1] < rank:  # rank above the matrix rank: pad with small orthogonal noise
        pad = torch.randn(u.shape[0], rank - u.shape[1], dtype=u.dtype) * 1e-3
        pad -= u @ (u.T @ pad)
        u = torch.cat([u, pad], dim=1)
    return u.float()


def hosvd(x: torch.Tensor, ranks) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Truncated HOSVD of ``x`` (N_0..N_{M-1}, C); the channel mode is kept whole.

    Returns factors U_m (N_m, R_m) with orthonormal columns and the core
    ``G = x ×_m U_m^T`` of shape (R_0, ..., R_{M-1}, C).
    """
    factors = [_leading_vectors(_unfold(x, m), r) for m, r in enumerate(ranks)]
    core = x
    for m, u in enumerate(factors):
        core = torch.movedim(torch.tensordot(core, u, dims=([m], [0])), -1, m)
    return factors, core


def tt_svd(x: torch.Tensor, bonds) -> tuple[list[torch.Tensor], torch.Tensor]:
    """TT-SVD of ``x`` (N_0..N_{M-1}, C) with bonds (r_1..r_M); returns cores (N_m, r_m, r_{m+1}) and W (r_M, C)."""
    import tensorly as tl
    from tensorly.decomposition import tensor_train

    arr = x.double().numpy()
    full = [1, *bonds, 1]
    valid = [1]
    for k in range(1, len(full) - 1):
        left = math.prod(arr.shape[:k])
        right = math.prod(arr.shape[k:])
        valid.append(min(full[k], left, right))
    valid.append(1)
    tt = tensor_train(tl.tensor(arr), rank=valid)
    cores = []
    for m, g in enumerate(tt.factors[:-1]):
        g = torch.from_numpy(np.asarray(g)).float()  # (r_{m}, N_m, r_{m+1})
        r_in, r_out = full[m], full[m + 1]
        padded = torch.zeros(r_in, g.shape[1], r_out)
        padded[: g.shape[0], :, : g.shape[2]] = g
        cores.append(padded.permute(1, 0, 2).contiguous())
    w = torch.from_numpy(np.asarray(tt.factors[-1])).float()[:, :, 0]  # (r_M, C)
    weights = torch.zeros(full[-2], x.shape[-1])
    weights[: w.shape[0]] = w
    return cores, weights


#: Largest Khatri-Rao intermediate (values) of one MTTKRP chunk: bounds CP-ALS memory on long clips.
MTTKRP_CHUNK = 1 << 26

#: CP-ALS sweeps of a closed-form start with a step budget (a seconds budget sweeps until its share ends).
ALS_SWEEPS = 10


def _mttkrp(x: torch.Tensor, factors: list[torch.Tensor], m: int) -> torch.Tensor:
    """``x`` times the Khatri-Rao product of every factor but ``m``'s: (N_m, R).

    Chunked along the largest other axis so the intermediate stays under
    :data:`MTTKRP_CHUNK` values whatever the clip length and rank.
    """
    n, rank = x.ndim, factors[0].shape[1]
    letters = einsum_letters(n)
    others = [k for k in range(n) if k != m]
    eq = letters + "," + ",".join(f"{letters[k]}r" for k in others) + f"->{letters[m]}r"
    c = max(others, key=lambda k: x.shape[k])
    per_row = x.numel() // (x.shape[m] * x.shape[c]) * rank
    step = max(1, MTTKRP_CHUNK // max(per_row, 1))
    if step >= x.shape[c]:
        return torch.einsum(eq, x, *[factors[k] for k in others])
    out = None
    for i in range(0, x.shape[c], step):
        part = torch.einsum(eq, x.narrow(c, i, min(step, x.shape[c] - i)),
                            *[factors[k].narrow(0, i, min(step, x.shape[c] - i)) if k == c else factors[k]
                              for k in others])
        out = part if out is None else out + part
    return out


def _cp_init(x: torch.Tensor, rank: int, gen: torch.Generator) -> list[torch.Tensor]:
    n = x.ndim
    if n == 3:
        # a matrix with channels (an image): the truncated SVD of the channel mean pairs the row and column
        # factors already (independent unfoldings do not), so a few sweeps finish what many would otherwise do;
        # a rank above the matrix rank is padded with small random components
        u, s, vh = torch.linalg.svd(x.mean(-1), full_matrices=False)
        k = min(rank, s.shape[0])
        a, b = u[:, :k], vh[:k].T * s[:k]
        if k < rank:
            scale = 1e-3 * float(s[0]) / math.sqrt(max(x.shape[0], 1))
            a = torch.cat([a, torch.randn(x.shape[0], rank - k, generator=gen) / math.sqrt(x.shape[0])], 1)
            b = torch.cat([b, torch.randn(x.shape[1], rank - k, generator=gen) * scale], 1)
        return [a.contiguous(), b.contiguous(), torch.ones(x.shape[2], rank)]
    factors = []
    for m in range(n):
        if m < n - 1 and rank <= x.shape[m]:
            factors.append(_leading_vectors(_unfold(x, m), rank))
        else:
            factors.append(torch.randn(x.shape[m], rank, generator=gen))
    return factors


def cp_als_sweeps(x: torch.Tensor, rank: int, *, seed: int = 0) -> Iterator[list[torch.Tensor]]:
    """Endless CP-ALS sweeps of ``x`` (N_0..N_{M-1}, C): yields the raw factors after each sweep.

    Alternating least squares (Kolda & Bader 2009, as in tensorly's ``parafac``)
    over torch tensors: tensorly's numpy ``parafac`` took over 20 s on a Kodak
    image at rank 256, and on carphone (3M pixels) a rank-1024 sweep takes 1.2 s on
    one core here. The caller decides when to stop; :func:`cp_normalized` turns the
    raw factors into unit columns and channel weights.
    """
    gen = torch.Generator().manual_seed(seed)
    x = x.float()  # float32 sweeps: twice as fast, and the ridge keeps the normal equations well posed
    n = x.ndim
    factors = _cp_init(x, rank, gen)
    eye = torch.eye(rank)
    while True:
        for m in [n - 1, *range(n - 1)]:  # the channel factor first: it starts as a guess
            gram = torch.ones(rank, rank)
            for k in range(n):
                if k != m:
                    gram = gram * (factors[k].T @ factors[k])
            # the floor keeps a constant target (x = 0 after the mean, so gram = 0) solvable: its factors are 0
            reg = 1e-6 * torch.trace(gram) / rank + 1e-30
            factors[m] = torch.linalg.solve(gram + reg * eye, _mttkrp(x, factors, m).T).T
        yield factors


def cp_normalized(factors: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Raw CP factors -> unit-norm factors of every mode but the last, and W (R, C), sorted by weight."""
    w = factors[-1]
    spatial = []
    for f in factors[:-1]:
        norm = f.norm(dim=0).clamp_min(1e-30)
        spatial.append(f / norm)
        w = w * norm
    order = torch.argsort(w.norm(dim=0), descending=True)
    return [f[:, order].float() for f in spatial], w[:, order].T.contiguous().float()


def cp_als(x: torch.Tensor, rank: int, *, n_iter: Optional[int] = None,
           seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """CP-ALS of ``x`` (N_0..N_{M-1}, C); returns factors (N_m, R) and W (R, C), sorted by weight.

    ``n_iter`` sweeps (default 4 for a matrix with channels, whose start is already paired, else 5).
    Spatial factors start from the leading singular vectors.
    """
    if n_iter is None:
        n_iter = 4 if x.ndim == 3 else 5
    if n_iter <= 0:
        return cp_normalized(_cp_init(x.float(), rank, torch.Generator().manual_seed(seed)))
    for done, factors in enumerate(cp_als_sweeps(x, rank, seed=seed), 1):
        if done >= n_iter:
            return cp_normalized(factors)
    raise AssertionError("unreachable")


def discrete_decomposition(field, values: torch.Tensor) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
    """Decompose ``values`` (grid in axis order, (n_0..n_{d-1}, C)) for ``field``'s layout.

    Returns, per channel block, the per-mode feature targets (N_m, D_m) and the
    mixing parameter (core or channel factor), balanced so features have unit RMS.
    """
    x = _mode_tensor(values.float().cpu() - field.bias.detach().cpu(), field.modes)
    blocks_feats, blocks_mix = [], []
    channels = [x] if not field.independent else [x[..., c:c + 1] for c in range(field.channels)]
    for xc in channels:
        name = field.config.decomposition
        ranks = field.ranks
        if name == "tucker":
            factors, core = hosvd(xc, ranks)
            feats = []
            for m, u in enumerate(factors):
                s = math.sqrt(u.shape[0])
                feats.append(u * s)
                core = core / s  # G x_m U = (G / s) x_m (s U)
            blocks_feats.append(feats)
            blocks_mix.append(core.contiguous())
        elif name == "tt":
            cores, w = tt_svd(xc, ranks)
            feats = []
            for core in cores:
                rms = float(core.pow(2).mean().sqrt()) or 1.0
                feats.append(core.reshape(core.shape[0], -1) / rms)
                w = w * rms
            blocks_feats.append(feats)
            blocks_mix.append(w)
        else:
            feats, w = _unit_rms_cp(*cp_als(xc, ranks[0]))
            blocks_feats.append(feats)
            blocks_mix.append(w)
    return blocks_feats, blocks_mix


def _unit_rms_cp(factors: list[torch.Tensor], w: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """CP factors scaled to unit-RMS columns, the scale moved into the channel weights W (R, C)."""
    feats = []
    for f in factors:
        rms = f.pow(2).mean(dim=0).sqrt().clamp_min(1e-12)
        feats.append(f / rms)
        w = w * rms[:, None]
    return feats, w


def _spline_to(coords: torch.Tensor, feats: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
    """Factor curves ``feats`` (n, D) sampled at 1-D ``coords`` (n,), cubic-spline-interpolated at ``fine``."""
    from scipy.interpolate import CubicSpline

    spline = CubicSpline(coords.numpy().astype(np.float64), feats.numpy().astype(np.float64), axis=0,
                         bc_type="not-a-knot")
    return torch.from_numpy(spline(fine.numpy().astype(np.float64))).float()


def _spline_samples(coords: torch.Tensor, feats: torch.Tensor, factor: int):
    """Factor curves sampled ``factor`` x denser by cubic-spline interpolation (1-D modes)."""
    fine = torch.linspace(-1, 1, (len(coords) - 1) * factor + 1)
    return fine[:, None], _spline_to(coords[:, 0], feats, fine)


def readout(net, coords: torch.Tensor, feats: torch.Tensor, ridge: float, *, hidden: bool = True) -> None:
    """Set ``net``'s output layer to the ridge regression of ``feats`` (n, D) on its features at ``coords``.

    The ridge is a fraction of the mean eigenvalue of the feature Gram matrix.
    ``hidden=False`` reads out the cosine terms only and zeroes the hidden
    features' weights: with as many terms as samples the curve is then the
    cosine interpolant of ``feats``. A least-squares mix of both interpolates
    badly between samples, because the minimum-norm solution leans on sine
    features far faster than the samples resolve (benchmarks/video_readout.py:
    a test clip decoded on a twice-finer grid, 22.7 dB with the mix, 35.9 dB with
    the cosines alone, at 35.9 dB on the stored samples either way).
    """
    with torch.no_grad():
        h = net.features(coords)
        skip = 0 if hidden else h.shape[1] - net.basis
        h1 = torch.cat([h[:, skip:], torch.ones(h.shape[0], 1, device=h.device)], dim=1).double()
        gram = h1.T @ h1
        gram += ridge * torch.trace(gram) / gram.shape[0] * torch.eye(gram.shape[0], dtype=gram.dtype,
                                                                       device=gram.device)
        sol = torch.linalg.solve(gram, h1.T @ feats.double()).float()
        net.out.weight[:, :skip] = 0.0
        net.out.weight[:, skip:] = sol[:-1].T
        net.out.bias.copy_(sol[-1])


def distill_factors(field, mode_coords: list[torch.Tensor], targets: list[torch.Tensor], *,
                   seconds: Optional[float], steps: Optional[int], lr: float = 5e-4, upsample: int = 4,
                   ridge: float = 0.1, weights: Optional[list[torch.Tensor]] = None,
                   callback: Optional[Callable] = None) -> dict:
    """Regress each mode network onto its factor curves (continuous, spline-upsampled).

    mode_coords : per mode (N_m, k_m) lattice coordinates; targets : per mode (N_m, D_m);
    weights : per mode (D_m,) column weights of the squared error (mean 1; None: uniform), e.g. the
    energy each column carries in the reconstruction (:func:`column_energies`). Trains all mode networks jointly
    (one Adam) on the weighted MSE summed over modes.
    """
    device = field.device
    data = []
    for coords, feats in zip(mode_coords, targets):
        if coords.shape[1] == 1 and coords.shape[0] >= 4 and upsample > 1:
            coords, feats = _spline_samples(coords.cpu(), feats.cpu(), upsample)
        data.append((coords.to(device), feats.to(device)))
    weights = weights or [None] * len(data)
    col_w = [torch.ones(feats.shape[1], device=device) if w is None else w.to(device=device, dtype=torch.float32)
             for (_, feats), w in zip(data, weights)]
    # ridge readout first: the best output layer for the random hidden features. A strong ridge
    # (0.1 of the mean eigenvalue) costs a little of the start but keeps the weights small enough for
    # Adam to keep learning the features (RESULTS.md, "Where the presets come from")
    for net, (coords, feats) in zip(field.nets, data):
        readout(net, coords, feats, ridge)
    if steps == 0 or (seconds is not None and seconds <= 0):
        return {"distill_steps": 0, "distill_seconds": 0.0, "distill_loss": float("nan")}
    params = [p for net in field.nets for p in net.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    t0 = time.perf_counter()
    step, losses = 0, []
    max_steps = steps if steps is not None else 10**9
    limit = seconds if seconds is not None else float("inf")
    loss = torch.zeros(())
    while step < max_steps and time.perf_counter() - t0 < limit:
        progress = max(step / max_steps if steps else 0.0, (time.perf_counter() - t0) / limit if seconds else 0.0)
        for g in opt.param_groups:
            g["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        for net, (coords, feats), w in zip(field.nets, data, col_w):
            loss = loss + torch.mean((net(coords) - feats) ** 2 * w)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step % 50 == 0:
            losses.append(float(loss.detach()))
            if callback is not None:
                callback({"phase": "distill", "step": step, "loss": losses[-1], "elapsed": time.perf_counter() - t0})
    return {"distill_steps": step, "distill_seconds": time.perf_counter() - t0,
            "distill_loss": float(loss.detach()) if step else float("nan")}


def column_energies(field, blocks_mix: list[torch.Tensor], floor: float = 0.01) -> list[Optional[torch.Tensor]]:
    """Per mode, the share of the reconstruction's energy that each factor column carries (mean 1).

    With unit-RMS factor columns, an error in column k of mode m reaches the
    output scaled by the energy of the mixing slice that column feeds (the
    Tucker core slice, the CP component's channel weights), so the distillation
    weights its squared error by that energy: the leading, energetic columns are
    matched first, which also keeps small rank prefixes close to a model fitted at
    that rank. TT cores get uniform weights (None). Weights are floored at
    ``floor`` of the mean, so no network output is left untrained.
    """
    name = field.config.decomposition
    if name not in ("tucker", "cp"):
        return [None] * len(field.modes)
    out = []
    for m in range(len(field.modes)):
        parts = []
        for mix in blocks_mix:  # channel blocks, in the order their features are concatenated
            sq = mix.detach().float().cpu().pow(2)
            parts.append(sq.movedim(m, 0).reshape(sq.shape[m], -1).sum(1) if name == "tucker" else sq.sum(1))
        e = torch.cat(parts)
        e = (e / e.mean().clamp_min(1e-30)).clamp_min(floor)
        out.append(e / e.mean())
    return out


#: Ridge (a fraction of the mean Gram eigenvalue) of an exact cosine readout: the video preset's, which leaves
#: the readout exact to well under 1 % of a fit's error (RESULTS.md, 'Where the presets come from').
GRID_READOUT_RIDGE = 1e-3


def _cosines_cover_every_axis(field, target) -> bool:
    """Every mode of ``field`` is one axis whose network reads out a cosine basis at least as long as it."""
    return all(len(axes) == 1 and getattr(net, "basis", 0) >= target.shape[axes[0]]
               for axes, net in zip(field.modes, field.nets))


def reads_out_exactly(field, target) -> bool:
    """Whether every factor curve of ``field`` can take any values on ``target``'s grid.

    True for a CP field with a shared channel factor whose 1-D mode networks each
    read out a cosine basis at least as long as their axis (``basis='grid'``): a
    closed-form CP then moves into the networks without loss, and the closed-form
    phase keeps sweeping CP-ALS instead of distilling by gradient steps.
    """
    return field.config.decomposition == "cp" and not field.independent and _cosines_cover_every_axis(field, target)


def _read_out_on_axis(net, coords: torch.Tensor, fine: torch.Tensor, feats: torch.Tensor, ridge: float) -> None:
    """Put factor curves ``feats`` (decomposed at the 1-D ``coords``) into ``net``'s cosine readout on the axis's
    stored samples ``fine``, spline-interpolated there first when ``coords`` is a sub-lattice of it."""
    c, x = coords.reshape(-1), fine.reshape(-1)
    if len(c) != len(x) or not torch.allclose(c, x):
        feats = _spline_to(c, feats, x)
    readout(net, x[:, None].to(net.out.weight.device), feats.to(net.out.weight.device), ridge, hidden=False)


def _set_cp(field, factors: list[torch.Tensor], coords: list[torch.Tensor], fine: list[torch.Tensor],
            ridge: float) -> None:
    """Put raw CP-ALS factors (decomposed on ``coords``) into ``field``: weights and network readouts.

    A factor decomposed on a sub-lattice of its axis is spline-interpolated onto
    the axis's stored samples ``fine`` first.
    """
    feats, w = _unit_rms_cp(*cp_normalized(factors))
    with torch.no_grad():
        for m, f in enumerate(feats):
            _read_out_on_axis(field.nets[m], coords[m], fine[m], f, ridge)
        field.blocks[0].mixing_parameter().copy_(w.to(field.device))


def _als_start(field, target, coords, values, *, seconds, steps, seed, t0, callback, checkpoint) -> dict:
    """Closed-form phase of an exactly-reading-out CP field: CP-ALS sweeps, read out as they go.

    With a seconds budget the sweeps run until it ends (a sweep's time is
    predicted from the last one); with a step budget :data:`ALS_SWEEPS` sweeps.
    The networks read the factors out after sweeps 1, 2, 4, 8, ... and the last,
    and ``checkpoint()`` (the fit's validation) runs after each readout; it
    returns True when the fit has reached its target metric, which ends the
    sweeps. A ``callback`` returning False stops after the next readout.
    """
    x = _mode_tensor(values.float().cpu() - field.bias.detach().cpu(), field.modes)
    mode_coords = [c.cpu().reshape(-1) for c in coords]
    fine = [target.axis_coords(axes[0]).reshape(-1) for axes in field.modes]
    ridge = float(target.preset.readout_ridge)
    limit = seconds if seconds is not None else float("inf")
    max_sweeps = 10**9 if seconds is not None else ALS_SWEEPS if steps is None or steps > 0 else 1
    sweep, last_sweep, stop, reached, t_read = 0, 0.0, False, False, 0.0
    t_sweep = time.perf_counter()
    for factors in cp_als_sweeps(x, field.ranks[0], seed=seed):
        sweep += 1
        now = time.perf_counter()
        last_sweep, t_sweep = now - t_sweep, now
        done = sweep >= max_sweeps or (now - t0) + last_sweep > limit
        if callback is not None:
            stop = callback({"phase": "closed_form", "step": sweep, "elapsed": now - t0}) is False
        if done or stop or sweep & (sweep - 1) == 0:
            r0 = time.perf_counter()
            _set_cp(field, factors, mode_coords, fine, ridge)
            if checkpoint is not None:
                reached = bool(checkpoint())
            t_read += time.perf_counter() - r0
            t_sweep = time.perf_counter()
        if done or stop or reached:
            break
    return {"als_sweeps": sweep, "decomposition_seconds": time.perf_counter() - t0, "readout_seconds": t_read,
            "distill_steps": 0, "distill_seconds": 0.0, "cancelled": stop, "target_reached": reached}


#: Share of the closed-form phase's time the decomposition may take under a seconds budget; the readout,
#: the distillation and the validation that follow need the rest.
DECOMPOSITION_SHARE = 0.5
#: Coarsest sub-lattice of the anytime decomposition, as a fraction of the samples it may see.
COARSEST_LEVEL = 4**-4


def _decomposition_levels(target, max_samples: int) -> list[int]:
    """Sample counts of the sub-lattices an anytime decomposition tries, coarse to fine (each 4x the last)."""
    total = min(math.prod(target.shape), int(max_samples))
    floor = 4 ** target.ndim  # at least about 4 samples per axis
    levels, n = [], float(total)
    while n >= max(floor, total * COARSEST_LEVEL):
        levels.append(int(n))
        n /= 4
    return levels[::-1] or [total]


#: Share of the closed-form deadline the first CP-ALS sweep of an exactly-reading-out field may take.
ALS_FIRST_SWEEP_SHARE = 0.6
#: Sweep-time probes run CP-ALS on these fractions of the samples the sweeps may see (two sizes: the
#: difference gives the per-sample cost without the fixed one).
ALS_PROBE_FRACTIONS = (1 / 32, 1 / 16)
#: Only a deadline shorter than this is probed: a sweep over the most samples a preset lets the sweeps see
#: takes about a second on one core (RESULTS.md, 'Video readout'), so longer phases have room for it.
ALS_PROBE_BELOW_SECONDS = 5.0


def _als_samples_for(field, target, max_samples: int, seconds: float, seed: int) -> int:
    """Samples the first CP-ALS sweep may see so that it ends within ``seconds``.

    A sweep's time is a fixed part plus a part linear in the samples (its MTTKRPs are rank x samples); two
    timed probe sweeps on small sub-lattices (:data:`ALS_PROBE_FRACTIONS`) measure both, and predict the
    sweep over every sample. A budget too short for it gets an evenly spaced sub-lattice (read out onto
    every stored sample by spline interpolation, as for any sub-lattice); one with room, or a deadline of
    :data:`ALS_PROBE_BELOW_SECONDS` or more, keeps ``max_samples``.
    """
    total = min(math.prod(target.shape), int(max_samples))
    floor = 4 ** target.ndim
    sizes = [int(total * f) for f in ALS_PROBE_FRACTIONS]
    if seconds >= ALS_PROBE_BELOW_SECONDS or sizes[0] < floor:
        return max_samples
    start = time.perf_counter()
    timed = []
    for n in sizes:
        t0 = time.perf_counter()
        coords, values = target.dense(max_samples=n)
        x = _mode_tensor(values.float().cpu() - values.float().mean(), field.modes)
        next(iter(cp_als_sweeps(x, field.ranks[0], seed=seed)))
        timed.append((math.prod(len(c) for c in coords), time.perf_counter() - t0))
    (n1, t1), (n2, t2) = timed
    per_sample = (t2 - t1) / (n2 - n1) if n2 > n1 and t2 > t1 else t2 / max(1, n2)
    fixed = max(0.0, t1 - per_sample * n1)
    remaining = seconds - (time.perf_counter() - start)
    if fixed + per_sample * total <= remaining:
        return max_samples
    fits = int((remaining - fixed) / per_sample) if per_sample > 0 else total
    return max(floor, min(total, fits))


def _hosvd_on_every_sample(field, target) -> bool:
    """Whether ``field``'s start can take ``target``'s own HOSVD on every stored sample
    (:meth:`finr3d.volume.VolumeTarget.hosvd`): a 3-D volume of at most
    :data:`finr3d.volume.EVERY_SAMPLE_LIMIT` values (whose goal spectrum, :func:`finr3d.volume.goal_rank`, has
    read the same Gram matrices), and a Tucker with shared channels and one mode per axis, in axis order, whose
    networks each read out a cosine basis as long as their axis, so the factors go in exactly."""
    return (getattr(target, "hosvd_on_every_sample", False)  # a 3-D volume: its goal spectrum read the Grams
            and field.config.decomposition == "tucker" and not field.independent
            and [tuple(m) for m in field.modes] == [(a,) for a in range(target.ndim)]
            and _cosines_cover_every_axis(field, target))


def _streamed_tucker(field, target):
    """``(coords, (blocks_feats, blocks_mix))`` as :func:`discrete_decomposition` gives them, from the HOSVD of
    every stored sample of ``target`` (slab by slab, no float copy of the volume) instead of a sub-lattice's:
    on a 512 x 512 x 160 CT-like volume the 117 x 377 x 377 sub-lattice of 2^24 samples bounded ranks
    (49, 168, 161) at 35.0 dB where the whole volume's spectrum gives 32.2 dB, and a start decomposed there
    missed what the whole volume's truncation holds."""
    with torch.no_grad():
        field.bias.copy_(target.channel_means().float().to(field.device))
    factors, core = target.hosvd(field.ranks)
    feats = []
    for m, u in enumerate(factors):
        s = math.sqrt(u.shape[0])
        feats.append((u * s).float())
        core = core / s  # G x_m U = (G / s) x_m (s U)
    coords = [target.axis_coords(a) for a in range(target.ndim)]
    return coords, ([feats], [core.float().contiguous()])


def closed_form_start(field, target, *, seconds: Optional[float], steps: Optional[int], seed: int = 0,
                      max_samples: Optional[int] = None, callback: Optional[Callable] = None,
                      checkpoint: Optional[Callable[[], bool]] = None, deadline: Optional[float] = None) -> dict:
    """Initialise ``field`` from a discrete decomposition of ``target`` and distil it.

    The decomposition sees at most ``max_samples`` grid points (default: the
    preset's ``closed_form_samples``, or its ``hosvd_samples`` for a Tucker or TT start), an evenly spaced sub-lattice
    of larger targets, so its time and memory stay bounded on long clips.
    A field that reads out exactly (:func:`reads_out_exactly`) keeps sweeping
    CP-ALS for the whole phase instead, calling ``checkpoint()`` after each readout.

    ``deadline`` (seconds from the call) makes the phase an anytime algorithm:
    the decomposition runs on ever finer sub-lattices (each 4x the samples of
    the last) and stops before the next one would pass
    :data:`DECOMPOSITION_SHARE` of the deadline (its time predicted from the
    last level's), keeping the finest one done; the distillation and the CP-ALS
    sweeps end by the deadline too. ``seconds`` is the distillation's (or the
    sweeps') own share. Returns timing and loss information for the fit history.
    """
    t0 = time.perf_counter()
    preset_cap = max_samples is None
    if max_samples is None:
        max_samples = int(target.preset.closed_form_samples)
    if deadline is not None:
        seconds = deadline if seconds is None else min(seconds, deadline)
    if reads_out_exactly(field, target):
        if deadline is not None:
            # the sweeps may use the whole phase; the readout and a validation follow the first sweep
            max_samples = _als_samples_for(field, target, max_samples, ALS_FIRST_SWEEP_SHARE * deadline, seed)
        coords, values = target.dense(max_samples=max_samples)
        with torch.no_grad():
            field.bias.copy_(values.reshape(-1, values.shape[-1]).mean(0).to(field.device))
        return _als_start(field, target, coords, values, seconds=seconds, steps=steps, seed=seed, t0=t0,
                          callback=callback, checkpoint=checkpoint)
    hosvd_cap = target.preset.hosvd_samples
    if preset_cap and hosvd_cap is not None and field.config.decomposition in ("tucker", "tt"):
        max_samples = max(max_samples, int(hosvd_cap))
    levels = _decomposition_levels(target, max_samples) if deadline is not None else [max_samples]
    done, last = None, None
    if deadline is None and math.prod(target.shape) > max_samples and _hosvd_on_every_sample(field, target):
        done, levels = _streamed_tucker(field, target), []
    for n in levels:
        if done is not None and last is not None:
            n_prev, t_prev = last
            # Gram matrices and eigensolvers grow faster than the samples: (d + 1) / d power of the count
            predicted = t_prev * (n / n_prev) ** ((target.ndim + 1) / target.ndim)
            if time.perf_counter() - t0 + predicted > DECOMPOSITION_SHARE * deadline:
                break
        t_level = time.perf_counter()
        coords, values = target.dense(max_samples=n)
        with torch.no_grad():
            field.bias.copy_(values.reshape(-1, values.shape[-1]).mean(0).to(field.device))
        done = coords, discrete_decomposition(field, values)
        last = (n, time.perf_counter() - t_level)
    coords, (blocks_feats, blocks_mix) = done
    t_decomp = time.perf_counter() - t0
    with torch.no_grad():
        for blk, mix in zip(field.blocks, blocks_mix):
            blk.mixing_parameter().copy_(mix.to(field.device))
    # per-mode targets: concatenate channel blocks along features
    targets = [torch.cat([bf[m] for bf in blocks_feats], dim=1) for m in range(len(field.modes))]
    mode_coords = [field.mode_coords([c.cpu() for c in coords], m) for m in range(len(field.modes))]
    if seconds is not None:
        seconds = max(0.0, seconds - (time.perf_counter() - t0)) if deadline is not None else seconds
    if _cosines_cover_every_axis(field, target):
        # every mode network reads out a cosine basis as long as its axis: the factors go in exactly, on the
        # axis's own samples, instead of a ridge regression onto 4x spline-upsampled curves (which cost a Tucker
        # of the CT-like phantom at ranks (55, 106, 147) 42.7 -> 32.8 dB at its start)
        t_read = time.perf_counter()
        with torch.no_grad():
            for m, (axes, f) in enumerate(zip(field.modes, targets)):
                _read_out_on_axis(field.nets[m], mode_coords[m], target.axis_coords(axes[0]), f, GRID_READOUT_RIDGE)
        info = {"distill_steps": 0, "distill_seconds": 0.0, "distill_loss": float("nan"),
                "readout_seconds": time.perf_counter() - t_read}
    else:
        info = distill_factors(field, mode_coords, targets, seconds=seconds, steps=steps, callback=callback,
                               ridge=float(target.preset.readout_ridge),
                               weights=column_energies(field, blocks_mix))
    info["decomposition_seconds"] = t_decomp
    info["decomposition_samples"] = int(math.prod(len(c) for c in coords))
    return info
