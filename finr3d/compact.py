"""The compact form of a field: factor curves as cosine series, a quantized core, entropy-coded codes.

A fitted field's per-axis networks are only ever needed as the factor curves
they compute. The compact form stores each 1-D mode's curves as coefficients of
the cosine series ``f(x) = Σ_k a_k cos(π k (x + 1) / 2)`` (the basis of
``FieldConfig.basis``; on the stored samples ``linspace(-1, 1, N)`` the series
with ``K = N`` terms reproduces any curve exactly, and between samples it is the
smooth cosine interpolant), plus the decomposition's core or channel factor and
the bias. Bytes then follow the information: a rank prefix keeps fewer columns
and a smaller core, and coefficients below the quantization step cost almost
nothing.

Rate allocation (:func:`prepare`): a Tucker model is re-expressed on its stored
samples with orthogonal, energy-ordered factors (QR of each factor, then an
HOSVD of the small core: the function is unchanged), scaled so that a core
value is in field units (the factor columns have unit RMS over the samples).
One step ``Δ`` quantizes the core uniformly; the field's RMS error from a core
value's error is then that error, so one step for all of them is the right
allocation. A factor column ``r`` of mode ``m`` multiplies the core slice
``G_(m)[r]``; its step is ``Δ / ‖Ĝ_(m)[r]‖`` (TTHRESH-style: precision follows
the energy it feeds), computed by the decoder from the decoded core, so no
per-column step is stored. Core slices that quantize to zero end the rank
(zeroed tails are dropped). CP is normalized the same way (unit-RMS factor
columns, the weights in field units). TT keeps one step per tensor.

Entropy coding (:func:`encode_codes`): integer codes are written with an ANS
coder over a quantized Laplace model whose scale is stored per group (core:
one per shell ``max(i, j, ...)``; factors: one per column and band of 16
frequencies), from the maintained ``constriction`` package. zstd of the codes
is the fallback. ``benchmarks/compact_candidates.py`` measured the choice.

numpy only (plus constriction for the codes): no torch, no pickle.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from finr3d.errors import FormatError

__all__ = ["CompactField", "cosine_matrix", "bake", "prepare", "contract_grid", "contract_points"]

DECOMPOSITION_CODES = {"cp": 0, "tucker": 1, "tt": 2}
DECOMPOSITION_NAMES = {v: k for k, v in DECOMPOSITION_CODES.items()}


def cosine_matrix(x: np.ndarray, terms: int) -> np.ndarray:
    """``cos(π k (x + 1) / 2)`` for ``k < terms``: (len(x), terms) float64."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    return np.cos(np.outer(x + 1.0, np.arange(terms, dtype=np.float64) * (math.pi / 2)))


def bake(samples: np.ndarray) -> np.ndarray:
    """Cosine coefficients (N, D) of curves sampled on ``linspace(-1, 1, N)``: exact on the samples."""
    samples = np.asarray(samples, dtype=np.float64)
    n = samples.shape[0]
    if n == 1:
        return samples.copy()
    basis = cosine_matrix(np.linspace(-1.0, 1.0, n), n)
    return np.linalg.solve(basis, samples)


@dataclass
class CompactField:
    """A decoded compact field: cosine coefficients per mode, the mixing tensor and the bias.

    ``coefficients[m]`` is (K_m, D_m): mode ``m``'s D_m feature curves. ``mixing``
    is the CP weights (R, C), the Tucker core (R_0, ..., R_{M-1}, C) or the TT
    channel factor (r_M, C); ``bonds`` are the TT bonds (r_1 .. r_M).
    """

    decomposition: str
    coefficients: list
    mixing: np.ndarray
    bias: np.ndarray
    bonds: tuple = ()
    steps: dict = field(default_factory=dict)

    @property
    def ranks(self) -> tuple:
        if self.decomposition == "tucker":
            return tuple(self.mixing.shape[:-1])
        if self.decomposition == "cp":
            return (self.mixing.shape[0],)
        return tuple(self.bonds)

    @property
    def channels(self) -> int:
        return int(self.mixing.shape[-1])

    def features(self, m: int, x: np.ndarray) -> np.ndarray:
        a = self.coefficients[m]
        return cosine_matrix(x, a.shape[0]) @ a


def _tt_cores(feats, bonds):
    b = (1,) + tuple(bonds)
    return [f.reshape(f.shape[0], b[m], b[m + 1]) for m, f in enumerate(feats)]


def contract_grid(decomposition: str, feats: Sequence[np.ndarray], mixing: np.ndarray, bonds=()) -> np.ndarray:
    """numpy twin of :mod:`finr3d.decompositions` ``*_contract_grid``: (N_0, ..., N_{M-1}, C)."""
    sizes = [f.shape[0] for f in feats]
    if decomposition == "tucker":
        out = mixing
        for f in feats:  # contract the leading rank axis each time; it cycles to the back
            out = np.tensordot(out, f, axes=([0], [1]))
        # now (C, N_0, ..., N_{M-1})
        return np.moveaxis(out, 0, -1)
    if decomposition == "cp":
        rank = mixing.shape[0]
        acc = feats[0]
        for f in feats[1:-1]:
            acc = (acc[:, None, :] * f[None, :, :]).reshape(-1, rank)
        rhs = (feats[-1].T[:, :, None] * mixing[:, None, :]).reshape(rank, -1)
        return (acc @ rhs).reshape(*sizes, mixing.shape[1])
    cores = _tt_cores(feats, bonds)
    acc = cores[0][:, 0, :]
    for core in cores[1:]:
        acc = np.einsum("ar,nrs->ans", acc, core).reshape(-1, core.shape[2])
    return (acc @ mixing).reshape(*sizes, mixing.shape[1])


def contract_points(decomposition: str, feats: Sequence[np.ndarray], mixing: np.ndarray, bonds=()) -> np.ndarray:
    """numpy twin of ``*_contract_points``: feats (P, D_m) each -> (P, C)."""
    if decomposition == "tucker":
        out = feats[0] @ mixing.reshape(mixing.shape[0], -1)
        for f in feats[1:]:
            out = np.einsum("pr,prk->pk", f, out.reshape(out.shape[0], f.shape[1], -1))
        return out
    if decomposition == "cp":
        acc = feats[0]
        for f in feats[1:]:
            acc = acc * f
        return acc @ mixing
    cores = _tt_cores(feats, bonds)
    acc = cores[0][:, 0, :]
    for core in cores[1:]:
        acc = np.einsum("pr,prs->ps", acc, core)
    return acc @ mixing


# ---------------------------------------------------------------------------
# Rate allocation: re-express a model so that one step quantizes it well
# ---------------------------------------------------------------------------
def prepare(decomposition: str, samples: Sequence[np.ndarray], mixing: np.ndarray, bonds=()):
    """Energy-ordered, unit-RMS factors on the stored samples; returns (factor samples, mixing).

    ``samples[m]`` is (N_m, D_m), mode m's features on ``linspace(-1, 1, N_m)``.
    The represented function on the sample grid is unchanged (up to float64 rounding).
    """
    samples = [np.asarray(s, dtype=np.float64) for s in samples]
    mixing = np.asarray(mixing, dtype=np.float64)
    if decomposition == "tucker":
        core = mixing
        qs = []
        for m, f in enumerate(samples):
            q, r = np.linalg.qr(f)  # (N, k), (k, R_m), k = min(N, R_m)
            core = np.moveaxis(np.tensordot(r, np.moveaxis(core, m, 0), axes=([1], [0])), 0, m)
            qs.append(q)
        # HOSVD of the core: rotate each mode to its singular vectors (energy order)
        for m in range(len(qs)):
            unfold = np.moveaxis(core, m, 0).reshape(core.shape[m], -1)
            u, _, _ = np.linalg.svd(unfold, full_matrices=False)
            core = np.moveaxis(np.tensordot(u.T, np.moveaxis(core, m, 0), axes=([1], [0])), 0, m)
            qs[m] = qs[m] @ u
        # unit RMS over the samples: core values become field units
        for m, q in enumerate(qs):
            n = q.shape[0]
            qs[m] = q * math.sqrt(n)
            core = core / math.sqrt(n)
        return qs, core
    if decomposition == "cp":
        out, weights = [], mixing.copy()
        for f in samples:
            rms = np.sqrt(np.mean(f * f, axis=0))
            rms = np.where(rms > 0, rms, 1.0)
            out.append(f / rms)
            weights = weights * rms[:, None]
        order = np.argsort(-np.sqrt((weights ** 2).sum(axis=1)), kind="stable")
        return [f[:, order] for f in out], weights[order]
    return samples, mixing


# ---------------------------------------------------------------------------
# Quantization with implicit per-column steps
# ---------------------------------------------------------------------------
def slice_norms(decomposition: str, mixing: np.ndarray, n_modes: int) -> list:
    """Per mode, the norm of what each factor column feeds (Tucker: core slices; CP: weight rows)."""
    if decomposition == "tucker":
        sq = np.square(mixing, dtype=np.float64)  # one temporary, whatever the number of modes
        return [np.sqrt(sq.sum(axis=tuple(a for a in range(sq.ndim) if a != m))) for m in range(n_modes)]
    if decomposition == "cp":
        w = np.sqrt((mixing.astype(np.float64) ** 2).sum(axis=1))
        return [w] * n_modes
    return [None] * n_modes


def column_steps(decomposition: str, mixing_hat: np.ndarray, n_modes: int, step: float, dims: Sequence[int]):
    """Quantization step of every factor coefficient column, from the decoded mixing tensor."""
    norms = slice_norms(decomposition, mixing_hat, n_modes)
    out = []
    for m in range(n_modes):
        if norms[m] is None:
            total = float(np.sqrt((mixing_hat.astype(np.float64) ** 2).sum()))
            out.append(np.full(dims[m], step * math.sqrt(2.0) / max(total, step)))
        else:
            out.append(step * math.sqrt(2.0) / np.maximum(norms[m], step))
    return out


def trim(decomposition: str, factors: list, mixing_q: np.ndarray):
    """Drop trailing factor columns whose mixing slice quantized to all zero."""
    if decomposition == "tucker":
        keep = []
        for m in range(len(factors)):
            unfold = np.moveaxis(mixing_q, m, 0).reshape(mixing_q.shape[m], -1)
            nz = np.flatnonzero(np.any(unfold != 0, axis=1))
            keep.append(int(nz[-1]) + 1 if len(nz) else 1)
        mixing_q = mixing_q[tuple(slice(0, k) for k in keep)]
        return [f[:, :k] for f, k in zip(factors, keep)], mixing_q
    if decomposition == "cp":
        nz = np.flatnonzero(np.any(mixing_q != 0, axis=1))
        k = int(nz[-1]) + 1 if len(nz) else 1
        return [f[:, :k] for f in factors], mixing_q[:k]
    return factors, mixing_q


# ---------------------------------------------------------------------------
# Entropy coding of integer codes
# ---------------------------------------------------------------------------
#: largest magnitude of one integer code
MAX_CODE = (1 << 20) - 1
#: group scales are stored as uint8 u: b = 2^(u / 8 - 8); u = 0 marks an all-zero group
_SCALE_BASE = 8.0


def _group_scale_codes(codes: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    absq = np.abs(codes).astype(np.float64)
    sums = np.bincount(groups, weights=absq, minlength=n_groups)
    counts = np.maximum(np.bincount(groups, minlength=n_groups), 1)
    mean = sums / counts
    nonzero = np.bincount(groups, weights=(codes != 0).astype(np.float64), minlength=n_groups) > 0
    u = np.clip(np.rint((np.log2(np.maximum(mean, 1e-12)) + _SCALE_BASE) * 8.0), 1, 255)
    return np.where(nonzero, u, 0).astype(np.uint8)


def _scales_from_codes(u: np.ndarray) -> np.ndarray:
    return np.exp2(u.astype(np.float64) / 8.0 - _SCALE_BASE)


def _best_scale_codes(codes: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Per group, the scale code ``u`` whose quantized Laplace gives the group's codes the fewest bits.

    The code length of a group under ``QuantizedLaplace(0, b)`` depends only on its zeros ``n0``, its
    nonzeros ``n1`` and their magnitude sum ``s``: ``-n0 log2 P(0) + n1 (1 - log2(1 - e^(-1/b)) - 0.5 / (b ln 2))
    + s / (b ln 2)``, so all 255 candidate scales are scored at once. (The mean |code| that
    :func:`_group_scale_codes` takes is far too small a scale for sparse groups: their few nonzeros then cost
    tens of bits each.)
    """
    return best_scale_bits(codes, groups, n_groups)[0]


def best_scale_bits(codes: np.ndarray, groups: np.ndarray, n_groups: int) -> tuple[np.ndarray, float]:
    """:func:`_best_scale_codes` and the codes' estimated length in bits under those scales (all-zero
    groups cost nothing)."""
    a = np.abs(codes)
    n1 = np.bincount(groups, weights=(a != 0), minlength=n_groups)
    n0 = np.bincount(groups, minlength=n_groups) - n1
    s = np.bincount(groups, weights=a, minlength=n_groups)
    u = np.arange(1, 256, dtype=np.float64)
    inv = 1.0 / _scales_from_codes(u)
    per_zero = -np.log2(-np.expm1(-0.5 * inv))
    per_nonzero = 1.0 - np.log2(-np.expm1(-inv)) - 0.5 * inv / math.log(2)
    per_unit = inv / math.log(2)
    bits = n0[:, None] * per_zero + n1[:, None] * per_nonzero + s[:, None] * per_unit
    pick = np.argmin(bits, axis=1)
    best = (pick + 1).astype(np.uint8)
    total = float(np.where(n1 > 0, bits[np.arange(n_groups), pick], 0.0).sum())
    return np.where(n1 > 0, best, 0).astype(np.uint8), total


def encode_codes(codes: np.ndarray, groups: np.ndarray, n_groups: int, *, bounded: bool = True) -> bytes:
    """ANS-code integer ``codes`` with a quantized Laplace model per group.

    ``bounded`` (coder :data:`CODER_ANS_BOUNDED`): one byte ``n``, the bit length of ``max |code|``, the
    group scales (uint8, each the one with the fewest bits), then the ANS words over ``[-M, M]``,
    ``M = 2^n - 1``. Otherwise (coder
    :data:`CODER_ANS`, read for older files): the group scales from the mean |code| and the words over
    ``[-MAX_CODE, MAX_CODE]``, whose leaked probability costs every symbol about 0.19 bit.
    """
    import constriction

    codes = np.asarray(codes, dtype=np.int64).reshape(-1)
    top = int(np.abs(codes).max()) if codes.size else 0
    if top > MAX_CODE:
        raise ValueError(f"a quantized value exceeds {MAX_CODE}; use a larger step")
    u = _best_scale_codes(codes, groups, n_groups) if bounded else _group_scale_codes(codes, groups, n_groups)
    bits = top.bit_length()
    bound = (1 << bits) - 1 if bounded else MAX_CODE
    head = (bytes([bits]) if bounded else b"") + u.tobytes()
    live = u[groups] > 0
    if not live.any():
        return head
    sym = codes[live].astype(np.int32)
    scale = _scales_from_codes(u[groups[live]])
    coder = constriction.stream.stack.AnsCoder()
    model = constriction.stream.model.QuantizedLaplace(-bound, bound)
    coder.encode_reverse(sym, model, np.zeros(len(sym)), scale)
    return head + coder.get_compressed().astype("<u4").tobytes()


def decode_codes(blob: memoryview, groups: np.ndarray, n_groups: int, *, bounded: bool = True) -> np.ndarray:
    """Inverse of :func:`encode_codes` (int32 codes); malformed input raises FormatError."""
    import constriction

    bound = MAX_CODE
    if bounded:
        if len(blob) < 1:
            raise FormatError("truncated code section; the file is damaged: re-export it")
        bits = blob[0]
        if bits > MAX_CODE.bit_length():
            raise FormatError(f"code alphabet bound 2^{bits} is over {MAX_CODE}; the file is damaged or hostile")
        bound = (1 << bits) - 1
        blob = blob[1:]
    if len(blob) < n_groups:
        raise FormatError("truncated code section; the file is damaged: re-export it")
    u = np.frombuffer(bytes(blob[:n_groups]), dtype=np.uint8)
    out = np.zeros(len(groups), dtype=np.int32)
    live = u[groups] > 0
    rest = blob[n_groups:]
    if not live.any():
        if len(rest):
            raise FormatError("unexpected bytes in an all-zero code section; re-export the file")
        return out
    if bound == 0:
        raise FormatError("a code block with alphabet bound 0 has nonzero groups; the file is damaged")
    if len(rest) % 4:
        raise FormatError("code section length is not a whole number of ANS words; the file is damaged")
    # no words at all is a valid stream: the encoder's state can end where it began (one code of -1 under a
    # wide Laplace, say), and decoding from the empty coder gives those codes back
    words = np.frombuffer(bytes(rest), dtype="<u4").astype(np.uint32)
    scale = _scales_from_codes(u[groups[live]])
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        model = constriction.stream.model.QuantizedLaplace(-bound, bound)
        sym = coder.decode(model, np.zeros(int(live.sum())), scale)
        if not coder.is_empty():
            raise FormatError("code section has bytes left after its symbols; the file is damaged")
    except FormatError:
        raise
    except Exception as exc:  # constriction raises its own errors on corrupt data
        raise FormatError(f"code section does not decode ({exc}); the file is damaged: re-export it") from None
    out[live] = sym
    return out


def core_groups(shape: Sequence[int]) -> tuple[np.ndarray, int]:
    """Group of every core value (C order, channel axis last): its shell max(i, j, ...) (coder ANS)."""
    idx = np.indices(tuple(shape[:-1])).reshape(len(shape) - 1, -1).max(axis=0) if len(shape) > 1 else np.zeros(1, int)
    idx = np.repeat(idx, shape[-1])
    n = int(max(shape[:-1])) if len(shape) > 1 else 1
    return idx.astype(np.int64), n


def core_sum_groups(shape: Sequence[int]) -> tuple[np.ndarray, int]:
    """Group of every core value (C order, channel axis last): its index sum i + j + ... (coder ANS_BOUNDED).

    An energy-ordered core's magnitudes fall with every index, so values of equal index sum are alike: a
    tighter grouping than the shell max(i, j, ...), which puts (0, 0, 47) with (47, 47, 47).
    """
    ranks = [int(r) for r in shape[:-1]]
    g = np.zeros((1,), dtype=np.int32)
    for r in ranks:
        g = (g[:, None] + np.arange(r, dtype=np.int32)[None, :]).reshape(-1)
    g = np.repeat(g, int(shape[-1]))
    return g, sum(r - 1 for r in ranks) + 1 if ranks else 1


BAND = 16


def factor_groups(k: int, d: int) -> tuple[np.ndarray, int]:
    """Group of every coefficient of a (K, D) matrix stored column by column: (column, band of 16)."""
    bands = (k + BAND - 1) // BAND
    col = np.repeat(np.arange(d), k)
    band = np.tile(np.arange(k) // BAND, d)
    return (col * bands + band).astype(np.int64), d * bands


# ---------------------------------------------------------------------------
# The binary FIELD section: what a decoder needs to evaluate the field
# ---------------------------------------------------------------------------
KIND_CODES = {"sdf": 0, "volume": 1, "image": 2, "video": 3, "signal": 4}
KIND_NAMES = {v: k for k, v in KIND_CODES.items()}
_FIELD_HEAD = struct.Struct("<BBBBBBHf")  # kind, decomposition, ndim, n_modes, channels, flags, reserved, step
_MODE = struct.Struct("<BHH")  # axis mask, cosine terms K, feature columns D
MAX_NDIM = 8
MAX_CHANNELS = 64
MAX_TERMS = 8192
MAX_COLUMNS = 1 << 16
#: largest magnitude of a decoded mixing value or coefficient (header_schema.MAX_MAGNITUDE): stays finite in float32
MAX_VALUE = 1e30
#: FIELD flag: the mode features are stored as cosine coefficients (a CODES section follows)
FLAG_COMPACT = 1
#: FIELD flag: the step is 0 and the coefficients are raw float32 values
FLAG_RAW = 2
#: FIELD flag: a general affine placement follows the bias (a field moved or turned after its fit; without it
#: the placement is the axis-aligned map of ``bounds`` onto ``[-1, 1]``)
FLAG_AFFINE = 4
#: FIELD flag (SDF fields): the values are the tanh profile of the distance, ``tanh(d / t)``
#: (:mod:`finr3d.profiles`); without it an SDF is the clamp profile ``clip(d / t, -1, 1)``
FLAG_TANH = 8
#: FIELD flag (SDF fields): the field came from an open mesh; meshing drops the faces where it jumps sign
#: without a surface (the winding number's 1/2 level spanning a hole, :data:`finr3d.meshing.TRIM_JUMP`)
FLAG_TRIM = 16


@dataclass
class FieldSpec:
    """The essentials of a field (the FIELD section)."""

    kind: str
    decomposition: str
    ndim: int
    channels: int
    modes: list            # list of tuples of axes
    terms: list            # cosine terms K_m per mode (0: mode stored as network weights)
    columns: list          # feature columns D_m per mode
    bounds: np.ndarray     # (ndim, 2) world box mapped to [-1, 1]
    value_offset: float
    value_scale: float
    bias: np.ndarray       # (C,) float32
    step: float = 0.0
    flags: int = 0
    bonds: tuple = ()      # TT bonds r_1 .. r_M
    affine: np.ndarray | None = None  # (ndim, ndim + 1) world = A @ normalized + t, when FLAG_AFFINE

    def world_from_normalized(self) -> np.ndarray:
        """(ndim + 1, ndim + 1): the stored affine placement, else the axis-aligned map of ``bounds``."""
        if self.affine is None:
            return aligned_placement(self.bounds)
        m = np.eye(self.ndim + 1)
        m[: self.ndim] = self.affine
        return m

    def to_normalized(self, world: np.ndarray) -> np.ndarray:
        """(P, ndim) world points to ``[-1, 1]`` coordinates (the inverse placement)."""
        if self.affine is None:
            lo, hi = self.bounds[:, 0], self.bounds[:, 1]
            return (world - lo) * (2.0 / (hi - lo)) - 1.0
        a, t = self.affine[:, : self.ndim], self.affine[:, self.ndim]
        return np.linalg.solve(a, (np.asarray(world, np.float64) - t).T).T

    def mixing_shape(self) -> tuple:
        if self.decomposition == "tucker":
            return tuple(self.columns) + (self.channels,)
        if self.decomposition == "cp":
            return (self.columns[0], self.channels)
        return (self.bonds[-1], self.channels)


def aligned_placement(bounds: np.ndarray) -> np.ndarray:
    """(d + 1, d + 1) map of ``[-1, 1]^d`` onto the world box ``bounds`` ((d, 2) of ``[lo, hi]``)."""
    bounds = np.asarray(bounds, np.float64)
    ndim = len(bounds)
    lo, hi = bounds[:, 0], bounds[:, 1]
    m = np.eye(ndim + 1)
    m[:ndim, :ndim] = np.diag((hi - lo) / 2.0)
    m[:ndim, ndim] = (hi + lo) / 2.0
    return m


def placement_affine(matrix, bounds: np.ndarray, ndim: int) -> np.ndarray | None:
    """The (ndim, ndim + 1) affine of ``world_from_normalized`` when ``bounds`` alone does not give it."""
    if matrix is None:
        return None
    m = np.asarray(matrix, np.float64)
    if m.shape != (ndim + 1, ndim + 1):
        return None
    if np.allclose(m, aligned_placement(bounds), rtol=1e-9, atol=1e-12 * max(1.0, float(np.abs(m).max()))):
        return None
    return m[:ndim].copy()


def pack_field(spec: FieldSpec) -> bytes:
    out = [_FIELD_HEAD.pack(KIND_CODES.get(spec.kind, 4), DECOMPOSITION_CODES[spec.decomposition], spec.ndim,
                            len(spec.modes), spec.channels, spec.flags, 0, float(spec.step))]
    out.append(np.asarray(spec.bounds, "<f8").reshape(-1).tobytes())
    out.append(struct.pack("<dd", float(spec.value_offset), float(spec.value_scale)))
    for axes, k, d in zip(spec.modes, spec.terms, spec.columns):
        out.append(_MODE.pack(sum(1 << a for a in axes), int(k), int(d)))
    if spec.decomposition == "tt":
        out.append(np.asarray(spec.bonds, "<u2").tobytes())
    out.append(np.asarray(spec.bias, "<f4").tobytes())
    if spec.flags & FLAG_AFFINE:
        out.append(np.asarray(spec.affine, "<f8").reshape(spec.ndim, spec.ndim + 1).tobytes())
    return b"".join(out)


def _bad(problem: str) -> FormatError:
    return FormatError(f"FIELD section: {problem}; the file is malformed or hostile: re-export it")


def unpack_field(raw) -> FieldSpec:
    """Parse and validate the FIELD section (every value is checked before use)."""
    raw = bytes(raw)
    if len(raw) < _FIELD_HEAD.size:
        raise _bad(f"{len(raw)} bytes is shorter than its {_FIELD_HEAD.size}-byte head")
    kind, dec, ndim, n_modes, channels, flags, reserved, step = _FIELD_HEAD.unpack_from(raw)
    if kind not in KIND_NAMES:
        raise _bad(f"unknown kind code {kind}")
    if dec not in DECOMPOSITION_NAMES:
        raise _bad(f"unknown decomposition code {dec} (upgrade finr3d if the file is newer)")
    if not 2 <= ndim <= MAX_NDIM or not 2 <= n_modes <= ndim or not 1 <= channels <= MAX_CHANNELS:
        raise _bad(f"ndim {ndim}, modes {n_modes}, channels {channels} out of range")
    if flags & ~(FLAG_COMPACT | FLAG_RAW | FLAG_AFFINE | FLAG_TANH | FLAG_TRIM) or reserved:
        raise _bad(f"unknown flags 0x{flags:02x} (upgrade finr3d if the file is newer)")
    for flag, name in ((FLAG_TANH, "tanh profile"), (FLAG_TRIM, "open-mesh trim")):  # SDF-only flags
        if flags & flag and KIND_NAMES.get(kind) != "sdf":
            raise _bad(f"the {name} flag is set on a field that is not an SDF")
    if not (math.isfinite(step) and step >= 0) or (bool(flags & FLAG_RAW) != (step == 0) and flags & FLAG_COMPACT):
        raise _bad(f"invalid step {step}")
    decomposition = DECOMPOSITION_NAMES[dec]
    at = _FIELD_HEAD.size
    need = at + 16 * ndim + 16 + _MODE.size * n_modes + (2 * n_modes if decomposition == "tt" else 0) + 4 * channels
    need += 8 * ndim * (ndim + 1) if flags & FLAG_AFFINE else 0
    if len(raw) != need:
        raise _bad(f"{len(raw)} bytes, expected {need}")
    bounds = np.frombuffer(raw, "<f8", 2 * ndim, at).reshape(ndim, 2).astype(np.float64)
    at += 16 * ndim
    if not np.isfinite(bounds).all() or not (bounds[:, 1] > bounds[:, 0]).all():
        raise _bad("world bounds must be finite with lo < hi")
    value_offset, value_scale = struct.unpack_from("<dd", raw, at)
    at += 16
    if not (math.isfinite(value_offset) and math.isfinite(value_scale)):
        raise _bad("value offset/scale must be finite")
    modes, terms, columns, seen = [], [], [], 0
    for _ in range(n_modes):
        mask, k, d = _MODE.unpack_from(raw, at)
        at += _MODE.size
        axes = tuple(a for a in range(ndim) if mask >> a & 1)
        if not axes or mask >> ndim or mask & seen:
            raise _bad(f"mode axis mask 0x{mask:02x} is empty, out of range or overlaps another mode")
        seen |= mask
        if k > MAX_TERMS or not 1 <= d < MAX_COLUMNS or (flags & FLAG_COMPACT and (k < 1 or len(axes) != 1)):
            raise _bad(f"mode with {k} cosine terms and {d} columns is out of range")
        modes.append(axes)
        terms.append(int(k))
        columns.append(int(d))
    if seen != (1 << ndim) - 1:
        raise _bad("the modes do not cover every axis")
    bonds = ()
    if decomposition == "tt":
        bonds = tuple(int(b) for b in np.frombuffer(raw, "<u2", n_modes, at))
        at += 2 * n_modes
        b = (1,) + bonds
        if any(x < 1 for x in bonds) or any(columns[m] != b[m] * b[m + 1] for m in range(n_modes)):
            raise _bad(f"TT bonds {bonds} do not match the mode columns {columns}")
    elif decomposition == "cp" and len(set(columns)) != 1:
        raise _bad(f"CP modes must share one rank, got {columns}")
    bias = np.frombuffer(raw, "<f4", channels, at).astype(np.float32)
    if not np.isfinite(bias).all():
        raise _bad("bias holds NaN/Inf")
    at += 4 * channels
    affine = None
    if flags & FLAG_AFFINE:
        affine = np.frombuffer(raw, "<f8", ndim * (ndim + 1), at).reshape(ndim, ndim + 1).astype(np.float64)
        lin = affine[:, :ndim]
        finite = np.isfinite(affine).all()
        with np.errstate(over="ignore", invalid="ignore"):  # a hostile 1e308 entry: det overflows, cond refuses
            singular = finite and (abs(np.linalg.det(lin)) < 1e-300 or not np.linalg.cond(lin) <= 1e12)
        if not finite or singular:
            raise _bad("the affine placement must be finite and invertible")
    return FieldSpec(KIND_NAMES[kind], decomposition, ndim, channels, modes, terms, columns, bounds,
                     float(value_offset), float(value_scale), bias, float(step), int(flags), bonds, affine)


# ---------------------------------------------------------------------------
# The CODES section: quantized core and factor coefficients
# ---------------------------------------------------------------------------
#: coders (byte 0 of CODES): raw float32; ANS over the full alphabet with mean-|code| scales and shell groups
#: (the first format-v2 files, still read); zstd (no constriction); ANS over a bounded alphabet with best-fit
#: scales and index-sum groups (written by default)
CODER_RAW, CODER_ANS, CODER_ZSTD, CODER_ANS_BOUNDED = 0, 1, 2, 3
ANS_CODERS = (CODER_ANS, CODER_ANS_BOUNDED)
#: the coder the encoder writes when constriction is importable (benchmarks set CODER_ANS to compare)
DEFAULT_CODER = CODER_ANS_BOUNDED


def _blocks(spec: FieldSpec, coder: int = CODER_ANS_BOUNDED):
    """(shape, groups, n_groups) of every code block in order: mixing, then each mode's (K, D) column-major."""
    shape = spec.mixing_shape()
    if spec.decomposition == "tucker":
        g, n = core_sum_groups(shape) if coder == CODER_ANS_BOUNDED else core_groups(shape)
    else:
        g = np.repeat(np.arange(shape[0]), shape[1]).astype(np.int64)
        n = shape[0]
    out = [(shape, g, n)]
    for k, d in zip(spec.terms, spec.columns):
        g, n = factor_groups(k, d)
        out.append(((k, d), g, n))
    return out


def _code_bytes(codes, groups, n, coder):
    if coder in ANS_CODERS:
        return encode_codes(codes, groups, n, bounded=coder == CODER_ANS_BOUNDED)
    import zstandard

    return zstandard.ZstdCompressor(level=19).compress(np.asarray(codes, "<i4").tobytes())


#: Rounding threshold of the quantizer, in steps: a value maps to ``sign(v) floor(|v| / step + 1 - DEADZONE)``
#: (0.5 is rounding to nearest). A wider zero bin trades a little error for many fewer nonzero codes; at
#: equal Chamfer it saved 8-19 % of the bytes on bunny, kitten and rocker-arm against rounding, and 5-35 % on
#: an image at equal PSNR (benchmarks/coders.py, RESULTS.md). The decoder is unchanged: a code still means
#: ``q * step``.
DEADZONE = 0.65
#: Kinds quantized with another threshold: a volume's PSNR over every voxel gained nothing from the wider bin
#: (neghip and the smoke clip: 1-5 % more bytes at 40 and 45 dB), so volumes round to nearest.
KIND_DEADZONE = {"volume": 0.5}


def _round(x: np.ndarray, deadzone: float) -> np.ndarray:
    return (np.sign(x) * np.floor(np.abs(x) + (1.0 - deadzone))).astype(np.int64)


def quantize(spec: FieldSpec, factors: list, mixing: np.ndarray, deadzone: float | None = None):
    """Quantize prepared factor samples and mixing with ``spec.step`` (zero bin ``deadzone``, default
    :data:`KIND_DEADZONE` of the kind, else :data:`DEADZONE`).

    Returns (spec with trimmed columns, mixing codes, factor codes per mode (K, D)).
    ``factors[m]`` are the (N_m, D_m) prepared samples; K_m = N_m cosine terms.
    """
    dz = KIND_DEADZONE.get(spec.kind, DEADZONE) if deadzone is None else float(deadzone)
    step = spec.step
    q = _round(mixing / step, dz)
    factors, q = trim(spec.decomposition, list(factors), q)
    columns = [f.shape[1] for f in factors]
    spec = dataclasses.replace(spec, columns=columns, terms=[f.shape[0] for f in factors])
    steps = column_steps(spec.decomposition, q * step, len(factors), step, columns)
    codes = []
    for f, st in zip(factors, steps):
        codes.append(_round(bake(f) / st[None, :], dz))
    return spec, q, codes


def zstd_bounded(blob, max_size: int, what: str) -> bytes:
    """Decompress one zstd frame of at most ``max_size`` bytes; anything else is a FormatError.

    ``ZstdDecompressor.decompress`` allocates the size a frame *declares*, whatever ``max_output_size``
    says, so the declared size is checked first (a mutated frame header cannot ask for gigabytes).
    """
    import zstandard

    try:
        declared = zstandard.get_frame_parameters(bytes(blob[:18])).content_size
        if declared > max_size and declared != zstandard.CONTENTSIZE_UNKNOWN:
            raise FormatError(f"{what}: the zstd frame declares {declared:,} bytes, more than the {max_size:,} "
                              "it can hold; the file is damaged or hostile: re-export it")
        return zstandard.ZstdDecompressor().decompress(bytes(blob), max_output_size=max(int(max_size), 1))
    except zstandard.ZstdError as exc:
        raise FormatError(f"{what} is not a valid zstd frame ({exc}); re-export the file") from None


def encode_codes_section(spec: FieldSpec, mixing_codes, factor_codes, coder: int) -> bytes:
    """The CODES section: per block a uint32 length, then the block's coded bytes."""
    parts = []
    arrays = [mixing_codes.reshape(-1)] + [c.T.reshape(-1) for c in factor_codes]
    for arr, (_, g, n) in zip(arrays, _blocks(spec, coder)):
        blob = _code_bytes(arr, g, n, coder)
        parts.append(struct.pack("<I", len(blob)) + blob)
    return b"".join(parts)


def encode_raw_section(mixing, coefficients) -> bytes:
    arrays = [np.asarray(mixing, "<f4").reshape(-1)] + [np.asarray(c, "<f4").T.reshape(-1) for c in coefficients]
    return b"".join(a.tobytes() for a in arrays)


def decoded_values(spec: FieldSpec) -> int:
    """How many values the CODES section decodes to (for the budget check before allocation)."""
    return math.prod(spec.mixing_shape()) + sum(k * d for k, d in zip(spec.terms, spec.columns))


def decode_codes_section(spec: FieldSpec, raw, coder: int) -> CompactField:
    """Decode the CODES section into a :class:`CompactField` (validated, finite)."""
    raw = memoryview(bytes(raw))
    blocks = _blocks(spec, coder)
    arrays = []
    if coder == CODER_RAW:
        need = 4 * decoded_values(spec)
        if len(raw) != need:
            raise FormatError(f"CODES section holds {len(raw)} bytes, expected {need}; re-export the file")
        at = 0
        for shape, _, _ in blocks:
            n = math.prod(shape)
            arrays.append(np.frombuffer(raw, "<f4", n, at).astype(np.float64))
            at += 4 * n
    else:
        at = 0
        for shape, g, n_groups in blocks:
            if at + 4 > len(raw):
                raise FormatError("truncated CODES section; the file is damaged: re-export it")
            (length,) = struct.unpack_from("<I", raw, at)
            at += 4
            if at + length > len(raw):
                raise FormatError("a CODES block runs past its section; the file is damaged: re-export it")
            blob = raw[at:at + length]
            at += length
            n = math.prod(shape)
            if coder in ANS_CODERS:
                arrays.append(decode_codes(blob, g, n_groups, bounded=coder == CODER_ANS_BOUNDED).astype(np.float64))
            elif coder == CODER_ZSTD:
                out = zstd_bounded(blob, 4 * n, "CODES block")
                if len(out) != 4 * n:
                    raise FormatError("CODES block decodes to the wrong length; re-export the file")
                arrays.append(np.frombuffer(out, "<i4").astype(np.float64))
            else:
                raise FormatError(f"unknown coder {coder} (upgrade finr3d if the file is newer)")
        if at != len(raw):
            raise FormatError("unexpected bytes after the CODES blocks; the file is damaged: re-export it")
    mixing = arrays[0].reshape(blocks[0][0])
    factors = [a.reshape(shape[1], shape[0]).T for a, (shape, _, _) in zip(arrays[1:], blocks[1:])]
    if coder != CODER_RAW:
        step = spec.step
        mixing *= step  # in place: the decoded codes are this function's own float64 copy
        steps = column_steps(spec.decomposition, mixing, len(factors), step, spec.columns)
        factors = [f * st[None, :] for f, st in zip(factors, steps)]
    if not np.isfinite(mixing).all() or not all(np.isfinite(f).all() for f in factors):
        raise FormatError("CODES section decodes to NaN/Inf; the file is damaged: re-export it")
    if max([float(max(mixing.max(initial=0), -mixing.min(initial=0)))]
           + [float(np.abs(f).max(initial=0)) for f in factors]) > MAX_VALUE:
        # e.g. a hostile step: finite in float64, infinite once loaded as float32
        raise FormatError(f"CODES section decodes to values beyond {MAX_VALUE:g} (outside float32 fields); the "
                          "file is damaged or hostile: re-export it")
    return CompactField(spec.decomposition, factors, mixing, spec.bias.astype(np.float64), spec.bonds)


# ---------------------------------------------------------------------------
# Network weights evaluated in numpy (editable files, v1 files)
# ---------------------------------------------------------------------------
def network_features(config: dict, weights: dict, x: np.ndarray) -> np.ndarray:
    """A per-mode network of :mod:`finr3d.backbones` evaluated in numpy (float64).

    ``config`` is its ``Backbone.config()``, ``weights`` its state-dict entries
    without the ``nets.<m>.`` prefix, ``x`` the (n, in_dim) coordinates.
    """
    name = config["name"]
    x = np.asarray(x, dtype=np.float64)
    depth = int(config.get("depth", 2))
    w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}

    def lin(h, key):
        return h @ w[f"{key}.weight"].T + w[f"{key}.bias"]

    if name == "cosine":
        h = np.zeros((x.shape[0], 0))
    elif name == "siren":
        h = np.sin(float(config.get("omega0", 30.0)) * lin(x, "body.0.linear"))
        for i in range(1, depth + 1):
            h = np.sin(float(config.get("omega_hidden", 30.0)) * lin(h, f"body.{i}.linear"))
    elif name == "finer":
        h = x
        for i in range(depth + 1):
            z = lin(h, f"body.{i}.linear")
            omega = float(config.get("omega0", 30.0) if i == 0 else config.get("omega_hidden", 30.0))
            h = np.sin(omega * (np.abs(z) + 1.0) * z)
    elif name == "wire":
        h = x
        omega, scale = float(config.get("omega0", 20.0)), float(config.get("scale", 10.0))
        for i in range(depth + 1):
            z = lin(h, f"body.{i}.linear")
            h = np.cos(omega * z) * np.exp(-((scale * z) ** 2))
    elif name == "relu":
        freqs = (2.0 ** np.arange(int(config.get("frequencies", 10)))) * math.pi
        xb = x[..., None] * freqs
        h = np.concatenate([x, np.sin(xb).reshape(len(x), -1), np.cos(xb).reshape(len(x), -1)], axis=-1)
        for i in range(depth + 1):
            h = np.maximum(lin(h, f"body.{2 * i}"), 0.0)
    else:
        raise FormatError(f"unknown backbone {name!r} in the file; upgrade finr3d")
    basis = int(config.get("basis", 0))
    if basis:
        h = np.concatenate([h, cosine_matrix(x[:, 0], basis)], axis=1)
    return lin(h, "out")


def have_ans() -> bool:
    """Whether the ANS coder (the ``constriction`` package) is importable."""
    try:
        import constriction  # noqa: F401
    except ImportError:
        return False
    return True
