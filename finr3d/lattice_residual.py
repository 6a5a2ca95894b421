"""A residual on every node of the source lattice, coded by multilevel interpolation (volumes and clips).

A global factorized field codes what is low-rank in a volume; what is local (edges, speckle, small features)
costs it rank everywhere. This layer stores, beside the field, the residual ``truth - field`` on every node of
the lattice the field was fitted to, coded the way the interpolation codecs (SZ3) code a whole grid:

- **levels.** Anchors on the coarsest power-of-two stride ``H`` are coded as they are, at a step
  ``ANCHOR_DIVISOR`` times finer. Each finer stride
  ``h = H/2 .. 1`` then refines axis by axis ("passes"): the new nodes of axis ``a`` (odd multiples of ``h``
  along it, on the nodes already known) are predicted from decoded neighbours along that axis;
- **predictors**, one per pass, the cheapest of: ``zero`` (the residual is white: predict 0), ``linear``
  (the mean of the two neighbours; the left one at a border) and ``cubic`` (``(-1, 9, 9, -1) / 16`` where
  four neighbours exist, linear elsewhere);
- **level-wise steps** (QoZ's idea): the pass at stride ``2^k`` quantizes with ``step / min(alpha^k, beta)``,
  since a coarse node's error spreads into every finer prediction that reads it; :func:`fit_within` picks
  ``(alpha, beta)`` among :data:`LEVEL_CHOICES` and the step by a scan (the error is not monotone in it);
- **closed loop.** A prediction reads decoded values only, so the decoder repeats it exactly (float32, the
  same operations in the same order) and every node's error is at most ``step / 2``;
- **entropy coding.** The integer codes ``round((r - prediction) / step)`` are ANS-coded (``constriction``,
  the coder of :mod:`finr3d.compact`) under a quantized Laplace whose scale depends on the pass and on a
  context: the local activity ``|right - left|`` of the decoded neighbours (``|left| + |right|`` for the
  zero predictor), in ``CONTEXTS`` bins that double in width. Contexts come from exact comparisons, never
  from transcendental functions, so every machine bins alike.

Between nodes the residual is interpolated multilinearly (node ``i`` of an axis with ``N`` nodes sits at
``-1 + 2 i / (N - 1)``, as in :mod:`finr3d.local_detail`; coordinates outside the cube are clamped), so
``field(x) + residual(x)`` is defined everywhere and equals the coded volume on its own lattice.

Layout (version 1, little-endian): ``magic "FLIR" | u8 version | u8 ndim | u8 code bits | u8 reserved (0) |
u32 resolution * ndim | f64 step | f64 offset | f32 alpha | f32 beta | u32 passes | u8 predictor * passes |
u8 scale code * (passes * CONTEXTS) |
u32 ANS words``. The pass count follows from the resolution and is checked.

numpy and constriction only (no torch), like the other numpy-only decoders. The predictor is written here
rather than taken from ``pysz``: the residual of a field is not a volume SZ3 can be asked to code next to
it, and a ``.finr`` must decode without a C++ codec.
"""

from __future__ import annotations

import math
import struct
from typing import Sequence

import numpy as np

from finr3d.compact import _scales_from_codes, best_scale_bits
from finr3d.errors import FormatError

__all__ = ["LatticeResidual", "fit_lattice_residual", "fit_within", "decoded_bytes", "MAGIC", "VERSION", "PREDICTORS",
           "LEVEL_CHOICES", "crop_box"]

MAGIC = b"FLIR"
VERSION = 1
PREDICTORS = ("zero", "linear", "cubic")
#: activity bins per pass; bin ``k`` holds activities in ``[step (2^(k-1) - 1/2), step (2^k - 1/2))``-ish
#: (thresholds ``step * (2^k - 1)``), the last one everything above
CONTEXTS = 12
#: the anchors are quantized this much finer than ``step``: they are few, and every interpolated node inherits
#: their error (a constant region, a volume's background, would otherwise carry the anchors' rounding
#: everywhere, which made the error jump with the step)
ANCHOR_DIVISOR = 16
_HEAD = struct.Struct("<4sBBBB")
#: largest level factor (alpha, beta) a file may give
_MAX_LEVEL_FACTOR = 64.0
_MAX_NDIM = 4
_MAX_RESOLUTION = 1 << 16
#: largest |code| (the ANS alphabet bound of :mod:`finr3d.compact`)
_MAX_CODE = (1 << 20) - 1
DEFAULT_MAX_DECODED = 1 << 31


# --------------------------------------------------------------------------- the pass schedule


def _top_stride(resolution: Sequence[int]) -> int:
    n = max(resolution) - 1
    return 1 << (n.bit_length() - 1) if n >= 1 else 1


def _passes(resolution: Sequence[int]) -> list[tuple[int, int]]:
    """``(stride h, axis)`` of every refinement pass, coarse to fine (the anchors come before them)."""
    out = []
    h = _top_stride(resolution) // 2
    while h >= 1:
        out.extend((h, a) for a in range(len(resolution)))
        h //= 2
    return out


def _view(ndim: int, h: int, axis: int) -> tuple:
    """The nodes a pass sees: stride ``h`` along axes up to ``axis`` (refined already at this level, and the
    pass's own axis), ``2h`` along later ones."""
    return tuple(slice(0, None, h if a <= axis else 2 * h) for a in range(ndim))


def _neighbours(sub: np.ndarray, axis: int, cubic: bool):
    """Targets (odd indices of ``sub`` along ``axis``) and their decoded neighbours ``L, R`` along it (``R``:
    ``L`` at a border), and for ``cubic`` also ``L2, R2`` and where all four exist (else the pass stays linear
    there); ``None`` for those otherwise."""
    n = sub.shape[axis]
    t = np.arange(1, n, 2)
    has_r = t + 1 < n
    left = np.take(sub, t - 1, axis=axis)
    right = np.take(sub, np.where(has_r, t + 1, t - 1), axis=axis)
    if not cubic:
        return t, left, right, None, None, None
    has_4 = (t - 3 >= 0) & (t + 3 < n)
    left2 = np.take(sub, np.where(has_4, t - 3, t - 1), axis=axis)
    right2 = np.take(sub, np.where(has_4, t + 3, t - 1), axis=axis)
    shape = [1] * sub.ndim
    shape[axis] = -1
    return t, left, right, left2, right2, has_4.reshape(shape)


def _predict(kind: int, left, right, left2, right2, has_4) -> np.ndarray:
    if kind == 0:
        return np.zeros_like(left)
    lin = (left + right) * np.float32(0.5)
    if kind == 1:
        return lin
    cub = ((left + right) * np.float32(9.0) - (left2 + right2)) * np.float32(1.0 / 16.0)
    return np.where(has_4, cub, lin)


def _contexts(kind: int, left, right, thresholds: np.ndarray) -> np.ndarray:
    """Activity bin of every target (uint8, C order): how many thresholds its activity reaches (exact
    float32 comparisons, so encoder and decoder agree on every machine)."""
    act = (np.abs(left) + np.abs(right) if kind == 0 else np.abs(right - left)).reshape(-1)
    g = np.zeros(act.shape, np.uint8)
    for t in thresholds:
        g += act >= t
    return g


def _thresholds(step: float) -> np.ndarray:
    return (np.float32(step) * (np.exp2(np.arange(1, CONTEXTS, dtype=np.float64)) - 1.0)).astype(np.float32)


def _index(ndim: int, axis: int, t) -> tuple:
    idx = [slice(None)] * ndim
    idx[axis] = t
    return tuple(idx)


# --------------------------------------------------------------------------- the coder


#: symbols per ANS call: bounds the float64 scale array constriction reads (the stream is the same whatever
#: the chunking, so encoder and decoder need not agree on it)
_ANS_CHUNK = 1 << 22


def _quantize(x: np.ndarray, pred: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Codes (int32) and decoded values (float32) of ``x`` around ``pred``."""
    q = np.rint((x.astype(np.float64) - pred) / step)  # float64: float32 rounding here cost 0.1 dB on neghip
    if q.size and float(np.abs(q).max()) > _MAX_CODE:
        raise ValueError(f"a residual needs codes over {_MAX_CODE} at step {step:g}; use a larger step")
    q = q.astype(np.int32)
    return q, pred + q.astype(np.float32) * np.float32(step)


def _level_steps(resolution: Sequence[int], step: float, alpha: float, beta: float) -> list[float]:
    """Each pass's step: ``step / min(alpha^k, beta)`` at stride ``2^k`` (the finest pass keeps ``step``).

    A coarse node's error spreads into every finer prediction that reads it, so coarser levels pay for a finer
    step (QoZ's level-wise error bounds). The powers are repeated float64 products, the same on every machine.
    """
    out = []
    for h, _ in _passes(resolution):
        factor, k = 1.0, h.bit_length() - 1
        for _ in range(k):
            factor *= alpha
        out.append(step / min(factor, beta))
    return out


def _run_encoder(r: np.ndarray, step: float, *, predictors: Sequence[int] | None = None, keep: bool = True,
                 alpha: float = 1.0, beta: float = 1.0):
    """The closed loop: per pass, the predictor (the given one, or the cheapest by estimated bits), its codes,
    contexts and scale codes. Returns ``(decoded, sse, bits, coded, kinds)``: the decoded lattice (float32),
    its squared error against ``r``, the codes' estimated length in bits, ``(codes, contexts, scale codes)``
    of the anchors and then of every pass (None for a pass without nodes; only with ``keep``: the step
    searches need the error and the bits alone) and each pass's predictor."""
    ndim = r.ndim
    res = r.shape
    d = np.zeros(res, np.float32)
    H = _top_stride(res)
    anchors = tuple(slice(0, None, H) for _ in range(ndim))
    xa = r[anchors]
    qa, dec = _quantize(xa, np.zeros(xa.shape, np.float32), step / ANCHOR_DIVISOR)
    d[anchors] = dec
    sse = float(np.sum(np.square(dec.astype(np.float64) - xa)))
    qa, ga = qa.reshape(-1), np.zeros(qa.size, np.uint8)
    ua, total_bits = best_scale_bits(qa, ga, CONTEXTS)
    coded, chosen = [(qa, ga, ua) if keep else None], []
    for p, ((h, axis), s_p) in enumerate(zip(_passes(res), _level_steps(res, step, alpha, beta))):
        view = _view(ndim, h, axis)
        sub, xs = d[view], r[view]
        kinds = (predictors[p],) if predictors is not None else (0, 1, 2)
        t, left, right, left2, right2, has_4 = _neighbours(sub, axis, 2 in kinds)
        if not len(t):
            coded.append(None)
            chosen.append(0)
            continue
        x = xs[_index(ndim, axis, t)]
        thr = _thresholds(s_p)
        best = None
        for kind in kinds:
            pred = _predict(kind, left, right, left2, right2, has_4)
            q, dec = _quantize(x, pred, s_p)
            del pred
            groups = _contexts(kind, left, right, thr)
            u, bits = best_scale_bits(q.reshape(-1), groups, CONTEXTS)
            if best is None or bits < best[0]:
                best = (bits, kind, q, dec, groups, u)
            del q, dec, groups, u
        bits, kind, q, dec, groups, u = best
        total_bits += bits
        del best, left, right, left2, right2
        sse += float(np.sum(np.square(dec.astype(np.float64) - x)))
        sub[_index(ndim, axis, t)] = dec  # sub is a view of d
        coded.append((q.reshape(-1), groups, u) if keep else None)
        chosen.append(kind)
        del q, dec, groups, x
    return d, sse, total_bits, coded, chosen


def _ans_model(bound: int):
    import constriction

    return constriction.stream.model.QuantizedLaplace(-bound, bound)


def fit_lattice_residual(residual: np.ndarray, *, step: float, predictors: Sequence[int] | None = None,
                         offset: float = 0.0, levels: tuple[float, float] = (1.0, 1.0)) -> "LatticeResidual":
    """Code ``residual`` (the lattice's values, any float dtype) with quantization ``step`` (field units).

    Every node of the decoded residual is within about ``step / 2`` of ``residual`` (float32 rounding aside).
    ``predictors`` fixes each pass's predictor (indices into :data:`PREDICTORS`); by default each pass takes
    the one with the fewest estimated bits. ``offset`` is taken off before coding and added back by the
    decoder (a constant that makes most nodes 0, such as an empty background's value). ``levels``
    ``(alpha, beta)``: the pass at stride ``2^k`` quantizes with ``step / min(alpha^k, beta)`` (both at least
    1; ``(1, 1)`` is one step for all). The result's ``sse`` is the decoded lattice's squared error.
    """
    import constriction

    r = _checked(residual)
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"step must be a positive finite number, got {step!r}")
    offset = float(np.float32(offset))
    alpha, beta = (float(np.float32(v)) for v in levels)
    if not (1.0 <= alpha <= _MAX_LEVEL_FACTOR and 1.0 <= beta <= _MAX_LEVEL_FACTOR):
        raise ValueError(f"level factors must be in 1..{_MAX_LEVEL_FACTOR}, got {levels!r}")
    decoded, sse, _, coded, kinds = _run_encoder(r - np.float32(offset) if offset else r, float(step),
                                                 predictors=predictors, alpha=alpha, beta=beta)
    live_passes = [c for c in coded if c is not None]
    top = max((int(np.abs(q).max()) for q, _, _ in live_passes if len(q)), default=0)
    bits = top.bit_length()
    scales = [np.zeros(CONTEXTS, np.uint8) if c is None else c[2] for c in coded]
    coder = constriction.stream.stack.AnsCoder()
    model = _ans_model(max((1 << bits) - 1, 1))
    for q, g, u in reversed(live_passes):
        live = np.flatnonzero(u[g] > 0)
        chunks = range(0, len(live), _ANS_CHUNK)
        for c0 in reversed(chunks):
            sel = live[c0:c0 + _ANS_CHUNK]
            coder.encode_reverse(q[sel], model, np.zeros(len(sel)), _scales_from_codes(u[g[sel]]))
    words = coder.get_compressed().astype("<u4").tobytes()
    out = LatticeResidual(resolution=r.shape, step=float(step), bits=bits, offset=offset, levels=(alpha, beta),
                          predictors=kinds, scales=np.stack(scales), words=words)
    if offset:
        decoded += np.float32(offset)
    out._dense = decoded
    out.sse = sse
    return out


def _checked(residual) -> np.ndarray:
    r = np.asarray(residual)
    if not 1 <= r.ndim <= _MAX_NDIM:
        raise ValueError(f"a lattice residual has 1..{_MAX_NDIM} axes, got {r.ndim}")
    if any(n > _MAX_RESOLUTION for n in r.shape) or 0 in r.shape:
        raise ValueError(f"lattice {r.shape} out of range (1..{_MAX_RESOLUTION} nodes an axis)")
    if not np.isfinite(r).all():
        raise ValueError("the residual has NaN or infinite values")
    return r.astype(np.float32, copy=False)


#: the (alpha, beta) level factors :func:`fit_within` chooses among (``(1, 1)``: one step for every level).
#: Measured on neghip and the CT-like phantom (a scan of steps 1.12x apart per setting, the smallest file at
#: 40 and 45 dB): level factors took neghip's residual from 9.5 to 6.7-6.9 KB at 40 dB and 14.3 to 11.5 KB at
#: 45 dB, the phantom's from 175 to 61-79 KB and 358 to 186-254 KB; no one setting was best for both.
LEVEL_CHOICES = ((1.0, 1.0), (1.5, 4.0), (2.0, 4.0), (2.0, 8.0), (3.0, 9.0))
#: the step scan: steps ``SCAN_RATIO`` apart from ``SCAN_FIRST`` to ``SCAN_LAST`` powers of it around the
#: uniform quantizer's step for the error, stopping after ``SCAN_MISSES`` misses in a row past a hit
SCAN_RATIO, SCAN_FIRST, SCAN_LAST, SCAN_MISSES = 1.2, -3, 16, 4
#: steps below a crop's best step where a hinted scan starts (:func:`fit_within`'s ``hint``); scanning only
#: 3 steps either side missed by 1.6 dB (47 % more bytes) on a 512 x 512 x 160 CT-like volume at 35 dB
HINT_SPAN = 3
#: the level factors are chosen on a central crop of at most this many nodes (the step is then scanned on
#: the whole lattice)
LEVEL_CROP_NODES = 1 << 18
#: settings the crop keeps for the whole lattice's scan
LEVEL_FINALISTS = 2


def _sse(decoded: np.ndarray, r: np.ndarray, base, bounds, offset: float = 0.0, slab: int = 1 << 22) -> float:
    """Squared error of ``decoded`` against ``r``, or, with ``base`` and ``bounds``, of
    ``clip(base + offset + decoded)`` against ``base + offset + r`` (what a reader that clips to the value
    range sees)."""
    if base is None:
        return float(np.sum(np.square(decoded.astype(np.float64) - r)))
    lo, hi = bounds
    rows = max(1, slab // max(1, decoded[0].size))
    sse = 0.0
    for i in range(0, decoded.shape[0], rows):
        b = base[i:i + rows] + np.float32(offset)
        e = np.clip(b + decoded[i:i + rows], lo, hi).astype(np.float64) - (b + r[i:i + rows])
        sse += float(np.vdot(e.ravel(), e.ravel()))
    return sse


def crop_box(shape: Sequence[int], max_nodes: int) -> tuple:
    """A central box of about ``max_nodes`` nodes with the lattice's proportions (every axis kept whole when
    the lattice is small enough)."""
    n = math.prod(shape)
    if n <= max_nodes:
        return tuple(slice(None) for _ in shape)
    f = (max_nodes / n) ** (1.0 / len(shape))
    out = []
    for m in shape:
        k = min(m, max(8, int(round(m * f))))
        a = (m - k) // 2
        out.append(slice(a, a + k))
    return tuple(out)


def _scan(x: np.ndarray, sse_max: float, base, bounds, offset: float, levels, *,
          around: float | None = None) -> tuple[float, float, list]:
    """The step (and per-pass predictors) with the fewest estimated bits among those whose error holds:
    ``(bits, step, predictors)``, or ``(inf, 0, [])`` when no step of the scan holds. ``around``: scan only
    from :data:`HINT_SPAN` steps below this one (a crop's best step; a central crop holds less of a volume's
    empty border, so the whole lattice's step is often coarser) up, to the usual misses."""
    s0 = math.sqrt(12.0 * sse_max / x.size) if around is None else around
    first, last = (SCAN_FIRST, SCAN_LAST) if around is None else (-HINT_SPAN, SCAN_LAST)
    alpha, beta = levels

    def run(step, predictors=None):
        d, sse, bits, _, kinds = _run_encoder(x, step, predictors=predictors, keep=False, alpha=alpha, beta=beta)
        if base is not None:  # the error a reader that clips sees
            sse = _sse(d, x, base, bounds, offset)
        return sse <= sse_max, bits, kinds

    _, _, predictors = run(s0 * SCAN_RATIO ** (3 if around is None else 0))
    best, misses, k = (math.inf, 0.0, predictors), 0, first
    while k <= last:
        step = s0 * SCAN_RATIO ** k
        ok, bits, _ = run(step, predictors)
        if ok:
            misses = 0
            if bits < best[0]:
                best = (bits, step, predictors)
        else:
            misses += 1
            if math.isfinite(best[0]) and misses >= SCAN_MISSES:
                break
            if not math.isfinite(best[0]) and k == first:
                # not even the finest step of the scan holds: go finer until one does
                for _ in range(24):
                    step /= SCAN_RATIO
                    ok, bits, _ = run(step, predictors)
                    if ok:
                        best = (bits, step, predictors)
                        break
                if not math.isfinite(best[0]):
                    return best[0], 0.0, []
        k += 1
    bits, step, predictors = best
    for trial in (step / math.sqrt(SCAN_RATIO), step * math.sqrt(SCAN_RATIO)):  # between the scan's steps
        ok, b, _ = run(trial, predictors)
        if ok and b < bits:
            bits, step = b, trial
    ok, b, free = run(step)  # the predictors chosen afresh at that step
    if ok and b < bits:
        bits, predictors = b, free
    return bits, step, predictors


def fit_within(residual: np.ndarray, sse_max: float, *, base: np.ndarray | None = None,
               bounds: tuple[float, float] | None = None, offset: float = 0.0,
               hint: "LatticeResidual | None" = None) -> "LatticeResidual":
    """The residual with the fewest bytes whose decoded lattice's squared error is at most ``sse_max``.

    The level factors (:data:`LEVEL_CHOICES`) are ranked on a central crop (:data:`LEVEL_CROP_NODES`), then for
    the best :data:`LEVEL_FINALISTS` of them the step is scanned on the whole lattice (:data:`SCAN_RATIO`
    apart, around the uniform quantizer's step for the error, ``sqrt(12 sse_max / n)``; the error is not
    monotone in the step, so this is a scan, not a bisection), with the predictors of a free run, and finally
    with predictors chosen afresh at the best step.
    With ``base`` (the field's decoded lattice) and ``bounds`` (the value range) the error is that of
    ``clip(base + residual)``, as a reader that clips sees it (a volume's empty background then costs almost
    nothing). ``offset``: as in :func:`fit_lattice_residual`. ``hint``: the result of ``fit_within`` on a crop
    of the same volume; its finalists' level factors are taken, and each step scan starts just below the
    crop's best (:data:`HINT_SPAN`), which saves the level ranking and the scan's fine end."""
    r = _checked(residual)
    if not (math.isfinite(sse_max) and sse_max > 0):
        raise ValueError(f"the allowed squared error must be positive and finite, got {sse_max!r}")
    if (base is None) != (bounds is None):
        raise ValueError("give both base and bounds, or neither")
    offset = float(np.float32(offset))
    shifted = r - np.float32(offset) if offset else r
    if hint is not None:
        starts = getattr(hint, "finalists", None) or [(hint.levels, hint.step)]
        tried = [(*_scan(shifted, sse_max, base, bounds, offset, lv, around=st), lv) for lv, st in starts]
    else:
        box = crop_box(r.shape, LEVEL_CROP_NODES)
        part, part_base = shifted[box], None if base is None else base[box]
        share = part.size / r.size
        scores = sorted(((_scan(part, sse_max * share, part_base, bounds, offset, lv)[0], i)
                         for i, lv in enumerate(LEVEL_CHOICES)))
        # the crop's two best settings, each scanned on the whole lattice (the crop ranks them roughly: on the
        # hydrogen atom its best alone cost 15 % more than the whole lattice's best)
        tried = [(*_scan(shifted, sse_max, base, bounds, offset, LEVEL_CHOICES[i]), LEVEL_CHOICES[i])
                 for _, i in scores[:LEVEL_FINALISTS]]
    bits, step, predictors, levels = min(tried, key=lambda t: t[0])
    if not math.isfinite(bits):
        raise ValueError("no step reaches the error; the residual is not finite-precision")
    del shifted
    out = fit_lattice_residual(r, step=step, predictors=predictors, offset=offset, levels=levels)
    #: the settings scanned and their best steps, best first: a hint for the same search on a larger lattice
    out.finalists = [(lv, st) for b, st, _, lv in sorted(tried, key=lambda t: t[0]) if math.isfinite(b)]
    out.sse = _sse(out.dense(), r, base, bounds)
    return out


#: decoding holds the lattice and a pass's neighbours and codes: about this many float32 lattices at its peak
DECODE_COPIES = 3


def decoded_bytes(blob) -> int:
    """Memory a decode of ``blob`` needs (:data:`DECODE_COPIES` float32 lattices), from its header alone."""
    blob = bytes(blob[:_HEAD.size + 4 * _MAX_NDIM])
    if len(blob) < _HEAD.size or blob[:4] != MAGIC:
        raise FormatError("lattice residual: not a lattice residual section; the file is damaged: re-export it")
    ndim = blob[5]
    if not 1 <= ndim <= _MAX_NDIM or len(blob) < _HEAD.size + 4 * ndim:
        raise FormatError(f"lattice residual: ndim {ndim} out of range 1..{_MAX_NDIM}, or a truncated header")
    return DECODE_COPIES * 4 * math.prod(struct.unpack_from(f"<{ndim}I", blob, _HEAD.size))


class LatticeResidual:
    """A residual on every node of a lattice over ``[-1, 1]^d``; see the module docstring.

    Build one with :func:`fit_lattice_residual` or :meth:`from_bytes`. The interface is
    :class:`finr3d.local_detail.LocalDetail`'s (``grid``, ``points``, ``dense``, ``to_bytes``,
    ``describe``), so a field carries either as its ``detail``.
    """

    def __init__(self, *, resolution, step: float, bits: int, predictors: Sequence[int], scales: np.ndarray,
                 words: bytes, offset: float = 0.0, levels: tuple[float, float] = (1.0, 1.0)):
        self.ndim = len(resolution)
        self.resolution = tuple(int(n) for n in resolution)
        self.step = float(step)
        self.offset = float(offset)
        self.levels = (float(levels[0]), float(levels[1]))
        self.bits = int(bits)
        self.predictors = [int(k) for k in predictors]
        self._scales = np.asarray(scales, np.uint8).reshape(len(self.predictors) + 1, CONTEXTS)
        self._words = bytes(words)
        self._dense = None
        #: squared error of the decoded lattice against what was coded (set by the encoder; None when read)
        self.sse = None
        self.nbytes = len(self.to_bytes())

    def __repr__(self):
        return f"LatticeResidual(resolution={self.resolution}, step={self.step:.3g}, nbytes={self.nbytes})"

    def describe(self) -> dict:
        """JSON-ready summary (no values)."""
        counts = {name: self.predictors.count(i) for i, name in enumerate(PREDICTORS)}
        return {"coder": "lattice interpolation", "resolution": list(self.resolution), "step": self.step,
                "offset": self.offset, "levels": list(self.levels),
                "passes": len(self.predictors), "predictors": counts, "nbytes": self.nbytes}

    # ------------------------------------------------------------------ bytes
    def to_bytes(self) -> bytes:
        head = _HEAD.pack(MAGIC, VERSION, self.ndim, self.bits, 0)
        head += struct.pack(f"<{self.ndim}I", *self.resolution)
        head += struct.pack("<ddffI", self.step, self.offset, *self.levels, len(self.predictors))
        return head + bytes(self.predictors) + self._scales.tobytes() + self._words

    @classmethod
    def from_bytes(cls, blob: bytes, *, max_decoded_bytes: int | None = None,
                   verify: bool = True) -> "LatticeResidual":
        """Parse and validate :meth:`to_bytes` output; ``verify`` decodes it once (a damaged stream fails here).

        Raises FormatError on anything malformed, and when the decoded lattice (float32) would exceed
        ``max_decoded_bytes`` (default 2 GiB).
        """
        blob = bytes(blob)
        limit = DEFAULT_MAX_DECODED if max_decoded_bytes is None else int(max_decoded_bytes)
        if len(blob) < _HEAD.size:
            raise FormatError(f"lattice residual: {len(blob)} bytes is shorter than its {_HEAD.size}-byte header")
        magic, version, ndim, bits, reserved = _HEAD.unpack_from(blob, 0)
        if magic != MAGIC:
            raise FormatError(f"lattice residual: bad magic {magic!r} (expected {MAGIC!r})")
        if version != VERSION:
            raise FormatError(f"lattice residual: version {version} is not supported (this finr3d reads "
                              f"{VERSION}); upgrade finr3d")
        if not 1 <= ndim <= _MAX_NDIM or reserved != 0:
            raise FormatError(f"lattice residual: ndim {ndim} out of range 1..{_MAX_NDIM}, or reserved {reserved}")
        if bits > _MAX_CODE.bit_length():
            raise FormatError(f"lattice residual: code bound 2^{bits} is over {_MAX_CODE}; the file is damaged")
        off = _HEAD.size
        if len(blob) < off + 4 * ndim + 28:
            raise FormatError("lattice residual: truncated header; the file is damaged: re-export it")
        resolution = struct.unpack_from(f"<{ndim}I", blob, off)
        off += 4 * ndim
        step, offset, alpha, beta, n_passes = struct.unpack_from("<ddffI", blob, off)
        off += 28
        if any(not 1 <= n <= _MAX_RESOLUTION for n in resolution):
            raise FormatError(f"lattice residual: lattice {resolution} out of range (1..{_MAX_RESOLUTION} a side)")
        decoded = math.prod(resolution) * 4
        if decoded > limit:
            raise FormatError(f"lattice residual: decoding needs {decoded:,} bytes, over the limit of {limit:,}")
        if not (math.isfinite(step) and 0 < step < 1e30):
            raise FormatError(f"lattice residual: quantization step {step!r} is not a positive finite number")
        if not (math.isfinite(offset) and abs(offset) < 1e30):
            raise FormatError(f"lattice residual: offset {offset!r} is not a finite number")
        if not (1.0 <= alpha <= _MAX_LEVEL_FACTOR and 1.0 <= beta <= _MAX_LEVEL_FACTOR):
            raise FormatError(f"lattice residual: level factors ({alpha!r}, {beta!r}) out of range "
                              f"1..{_MAX_LEVEL_FACTOR}")
        expected = len(_passes(resolution))
        if n_passes != expected:
            raise FormatError(f"lattice residual: {n_passes} passes, but a {resolution} lattice has {expected}")
        need = off + n_passes + (n_passes + 1) * CONTEXTS
        if len(blob) < need or (len(blob) - need) % 4:
            raise FormatError("lattice residual: truncated tables or a partial ANS word; the file is damaged")
        predictors = list(blob[off:off + n_passes])
        if any(k >= len(PREDICTORS) for k in predictors):
            raise FormatError(f"lattice residual: unknown predictor in {sorted(set(predictors))}")
        off += n_passes
        scales = np.frombuffer(blob, np.uint8, (n_passes + 1) * CONTEXTS, off).copy()
        off += (n_passes + 1) * CONTEXTS
        out = cls(resolution=resolution, step=step, bits=bits, predictors=predictors, scales=scales,
                  words=blob[off:], offset=offset, levels=(alpha, beta))
        if verify:
            out.dense()
        return out

    # ------------------------------------------------------------------ decoding
    def dense(self) -> np.ndarray:
        """Every node value, ``resolution``-shaped float32 (decoded once, then cached)."""
        if self._dense is None:
            self._dense = self._decode()
        return self._dense

    def _decode(self) -> np.ndarray:
        import constriction

        res, ndim, step = self.resolution, self.ndim, self.step
        words = np.frombuffer(self._words, "<u4").astype(np.uint32)
        try:
            coder = constriction.stream.stack.AnsCoder(words)
        except Exception as exc:
            raise FormatError(f"lattice residual: the ANS stream does not open ({exc}); re-export the file") from None
        model = _ans_model(max((1 << self.bits) - 1, 1))

        def codes(n: int, groups: np.ndarray, u: np.ndarray) -> np.ndarray:
            q = np.zeros(n, np.int32)
            live = np.flatnonzero(u[groups] > 0)
            if len(live) and self.bits == 0:
                raise FormatError("lattice residual: nonzero contexts under a zero code bound; the file is damaged")
            for c0 in range(0, len(live), _ANS_CHUNK):
                sel = live[c0:c0 + _ANS_CHUNK]
                try:
                    q[sel] = coder.decode(model, np.zeros(len(sel)), _scales_from_codes(u[groups[sel]]))
                except Exception as exc:  # constriction's own errors on a corrupt stream
                    raise FormatError(f"lattice residual: the codes do not decode ({exc}); re-export the "
                                      "file") from None
            return q

        d = np.zeros(res, np.float32)
        H = _top_stride(res)
        anchors = tuple(slice(0, None, H) for _ in range(ndim))
        n_a = d[anchors].size
        qa = codes(n_a, np.zeros(n_a, np.uint8), self._scales[0])
        d[anchors] = (qa.astype(np.float32) * np.float32(step / ANCHOR_DIVISOR)).reshape(d[anchors].shape)
        for p, ((h, axis), s_p) in enumerate(zip(_passes(res), _level_steps(res, step, *self.levels))):
            sub = d[_view(ndim, h, axis)]
            kind = self.predictors[p]
            t, left, right, left2, right2, has_4 = _neighbours(sub, axis, kind == 2)
            if not len(t):
                continue
            pred = _predict(kind, left, right, left2, right2, has_4)
            q = codes(pred.size, _contexts(kind, left, right, _thresholds(s_p)), self._scales[p + 1])
            sub[_index(ndim, axis, t)] = pred + q.reshape(pred.shape).astype(np.float32) * np.float32(s_p)
        if not coder.is_empty():
            raise FormatError("lattice residual: words left after the last code; the file is damaged")
        if self.offset:
            d += np.float32(self.offset)
        return d

    def _axis_weights(self, a: int, x: np.ndarray):
        n = self.resolution[a]
        if n == 1:
            z = np.zeros(len(x), np.int64)
            return z, z, np.zeros(len(x), np.float32)
        u = (np.clip(np.asarray(x, np.float64).reshape(-1), -1.0, 1.0) + 1.0) * (0.5 * (n - 1))
        j0 = np.minimum(np.floor(u).astype(np.int64), n - 1)
        return j0, np.minimum(j0 + 1, n - 1), (u - j0).astype(np.float32)

    def grid(self, axes: Sequence[np.ndarray]) -> np.ndarray:
        """The residual on the outer product of per-axis normalized coordinates (multilinear between
        nodes), float32."""
        if len(axes) != self.ndim:
            raise ValueError(f"grid expects {self.ndim} coordinate arrays, got {len(axes)}")
        vals = self.dense()
        for a, x in enumerate(axes):
            j0, j1, f = self._axis_weights(a, x)
            lo = np.take(vals, j0, axis=a)
            if not f.any():
                vals = lo
                continue
            shape = [1] * self.ndim
            shape[a] = -1
            f = f.reshape(shape)
            vals = lo * (1 - f) + np.take(vals, j1, axis=a) * f
        return np.ascontiguousarray(vals, np.float32)

    def points(self, x) -> np.ndarray:
        """The residual at ``(n, d)`` normalized points (multilinear between nodes), float32 ``(n,)``."""
        x = np.asarray(x, np.float64).reshape(-1, self.ndim)
        vals = self.dense()
        parts = [self._axis_weights(a, x[:, a]) for a in range(self.ndim)]
        out = np.zeros(len(x), np.float32)
        for corner in range(1 << self.ndim):
            idx, w = [], np.ones(len(x), np.float32)
            for a, (j0, j1, f) in enumerate(parts):
                up = (corner >> a) & 1
                idx.append(j1 if up else j0)
                w = w * (f if up else 1 - f)
            out += w * vals[tuple(idx)]
        return out
