"""Sparse local detail: a residual on lattice nodes inside a few bricks near the surface.

A fitted field may carry, beside its global factors, a residual sampled on
the nodes of a regular lattice over the normalized cube ``[-1, 1]^d`` (node
``i`` of an axis with ``N`` nodes sits at ``-1 + 2 i / (N - 1)``). The lattice
is cut into bricks of ``B^d`` nodes; only bricks with a non-zero value are
stored, every other node is 0. Between nodes the residual is interpolated
multilinearly, so ``global(x) + detail(x)`` stays continuous everywhere.
Coordinates outside the cube are clamped onto it.

Coding (format version 1, all little-endian):

- values are integers ``q = round(r / step)`` (``step`` in field units: the
  node error is at most ``step / 2`` where the residual was kept);
- inside each brick the integers are replaced by their d-dimensional Lorenzo
  residual (first differences along every axis, exactly inverted by cumulative
  sums), which turns smooth residuals into small numbers;
- bricks are grouped, in lattice (C) order, into chunks of ``chunk_bricks``
  bricks; each chunk is one zstd frame, so points and regions decode only the
  chunks they touch;
- the set of occupied bricks is a zstd-compressed bitmap or list of id gaps,
  whichever is smaller.

Layout: ``magic "FLDT" | u8 version | u8 ndim | u8 brick | u8 predictor |
u8 int bytes | u8 occupancy kind | u16 reserved (0) | u32 resolution * ndim |
f64 step | u32 bricks | u32 chunk_bricks | u32 occupancy length |
u32 chunk lengths * chunks | occupancy | chunks``.

This module needs numpy and zstandard only (no torch), so numpy-only decoders
can use it.
"""

from __future__ import annotations

import math
import struct
from typing import Sequence

import numpy as np
import zstandard

from finr3d.compact import zstd_bounded
from finr3d.errors import FormatError

__all__ = ["LocalDetail", "fit_local_detail", "PREDICTORS", "MAGIC", "VERSION"]

MAGIC = b"FLDT"
VERSION = 1
#: Integer predictors inside a brick: ``none`` stores the quantized values, ``delta`` first differences
#: along the last axis, ``lorenzo`` first differences along every axis (both exactly invertible).
PREDICTORS = ("none", "delta", "lorenzo")

_FIXED = struct.Struct("<4sBBBBBBH")
_TAIL = struct.Struct("<dIII")
_MAX_NDIM = 4
_MAX_BRICK = 32
_MAX_RESOLUTION = 1 << 16
_MAX_NODES = 1 << 33  # lattice nodes, stored or not (the brick ids are int64)
_MAX_Q = (1 << 31) - 1  # |quantized value| bound: Lorenzo sums stay exact in int64 for bricks <= 32^4
_OCC_BITMAP, _OCC_GAPS = 0, 1
#: Decoded size bound when the caller gives none (float32 of every stored node).
DEFAULT_MAX_DECODED = 1 << 31


def _zstd_level(level: int) -> zstandard.ZstdCompressor:
    return zstandard.ZstdCompressor(level=level, write_content_size=True)


def _decompress(blob: bytes, size: int, what: str) -> bytes:
    """One zstd frame that must decode to exactly ``size`` bytes."""
    out = zstd_bounded(blob, size, f"local detail: the {what}")
    if len(out) != size:
        raise FormatError(f"local detail: the {what} decodes to {len(out)} bytes, expected {size}")
    return out


# --------------------------------------------------------------------------- predictors


def _predict(q: np.ndarray, predictor: str) -> np.ndarray:
    """Integer residual of the predictor over the brick axes (all but the first, which counts bricks)."""
    if predictor == "none":
        return q
    axes = range(q.ndim - 1, 0, -1) if predictor == "lorenzo" else (q.ndim - 1,)
    for a in axes:
        q = np.diff(q, axis=a, prepend=0)
    return q


def _unpredict(e: np.ndarray, predictor: str) -> np.ndarray:
    if predictor == "none":
        return e
    axes = range(1, e.ndim) if predictor == "lorenzo" else (e.ndim - 1,)
    for a in axes:
        e = np.cumsum(e, axis=a)
    return e


def _int_bytes(values: np.ndarray) -> int:
    if values.size == 0:
        return 1
    m = max(int(values.max()), -int(values.min()) - 1)
    return 1 if m < 128 else 2 if m < 32768 else 4


def _pack_ints(e: np.ndarray, width: int) -> bytes:
    """Little-endian ints of ``width`` bytes, byte planes split (zstd sees the high bytes together)."""
    a = e.astype(f"<i{width}").reshape(-1)
    if width == 1:
        return a.tobytes()
    return a.view(np.uint8).reshape(-1, width).T.tobytes()


def _unpack_ints(raw: bytes, width: int, count: int) -> np.ndarray:
    b = np.frombuffer(raw, np.uint8)
    if width == 1:
        return b.view(np.int8).astype(np.int64)
    return np.ascontiguousarray(b.reshape(width, count).T).view(f"<i{width}").reshape(-1).astype(np.int64)


# --------------------------------------------------------------------------- the container


class LocalDetail:
    """A sparse, quantized residual on a lattice over ``[-1, 1]^d``; see the module docstring.

    Build one with :func:`fit_local_detail` or :meth:`from_bytes`.

    Attributes
    ----------
    ndim : int
    resolution : tuple of int
        Nodes per axis of the lattice.
    brick : int
        Nodes per axis of a brick.
    step : float
        Quantization step in field units.
    nbytes : int
        Size of :meth:`to_bytes`.
    bricks : int
        Stored (non-zero) bricks.
    """

    def __init__(self, *, resolution, brick: int, step: float, ids: np.ndarray, chunks: list[bytes],
                 chunk_bricks: int, predictor: str, int_bytes: int, occupancy: bytes, occupancy_kind: int):
        self.ndim = len(resolution)
        self.resolution = tuple(int(n) for n in resolution)
        self.brick = int(brick)
        self.step = float(step)
        self.predictor = predictor
        self.int_bytes = int(int_bytes)
        self.chunk_bricks = int(chunk_bricks)
        self._ids = ids  # sorted linear ids of the stored bricks in the brick grid
        self._chunks = chunks
        self._occupancy = occupancy
        self._occupancy_kind = occupancy_kind
        self.brick_grid = tuple(-(-n // self.brick) for n in self.resolution)
        self.nbytes = len(self.to_bytes())

    # ------------------------------------------------------------------ info
    @property
    def bricks(self) -> int:
        return len(self._ids)

    def __repr__(self):
        return (f"LocalDetail(resolution={self.resolution}, brick={self.brick}, step={self.step:.3g}, "
                f"bricks={self.bricks}/{math.prod(self.brick_grid)}, nbytes={self.nbytes})")

    def describe(self) -> dict:
        """JSON-ready summary (no values)."""
        return {"resolution": list(self.resolution), "brick": self.brick, "step": self.step,
                "bricks": self.bricks, "brick_grid": list(self.brick_grid), "predictor": self.predictor,
                "chunk_bricks": self.chunk_bricks, "nbytes": self.nbytes}

    # ------------------------------------------------------------------ decoding
    def _chunk_values(self, c: int) -> np.ndarray:
        """Decoded bricks of chunk ``c``: ``(n, B, ..., B)`` float32 in field units."""
        n = min(self.chunk_bricks, self.bricks - c * self.chunk_bricks)
        per = self.brick ** self.ndim
        raw = _decompress(self._chunks[c], n * per * self.int_bytes, f"chunk {c}")
        e = _unpack_ints(raw, self.int_bytes, n * per).reshape((n,) + (self.brick,) * self.ndim)
        q = _unpredict(e, self.predictor)
        return (q * self.step).astype(np.float32)

    def _bricks(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decode the stored bricks ``rows`` (sorted unique indices into the brick list).

        Returns ``values (len(rows), B^d)`` float32 and, for every stored brick, its row in ``values`` or -1.
        """
        per = self.brick ** self.ndim
        lookup = np.full(self.bricks, -1, np.int64)
        lookup[rows] = np.arange(len(rows))
        values = np.empty((len(rows), per), np.float32)
        chunks = np.unique(rows // self.chunk_bricks)
        for c in chunks:
            vals = self._chunk_values(int(c)).reshape(-1, per)
            lo = int(c) * self.chunk_bricks
            sel = rows[(rows >= lo) & (rows < lo + len(vals))]
            values[lookup[sel]] = vals[sel - lo]
        return values, lookup

    def _cell(self, x: np.ndarray, a: int) -> tuple[np.ndarray, np.ndarray]:
        """Lower node index and weight of the upper node along axis ``a`` for normalized coords ``x``."""
        n = self.resolution[a]
        t = (np.clip(np.asarray(x, np.float64), -1.0, 1.0) + 1.0) * (0.5 * (n - 1))
        i0 = np.clip(np.floor(t).astype(np.int64), 0, max(n - 2, 0))
        return i0, np.clip(t - i0, 0.0, 1.0).astype(np.float32)

    def points(self, x) -> np.ndarray:
        """Residual at points ``x`` ``(P, d)`` (normalized coordinates): ``(P,)`` float32.

        Decodes only the chunks holding bricks that the points' cells touch.
        """
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or x.shape[1] != self.ndim:
            raise ValueError(f"points expects a (P, {self.ndim}) array, got shape {x.shape}")
        out = np.zeros(len(x), np.float32)
        if self.bricks == 0 or len(x) == 0:
            return out
        cells = [self._cell(x[:, a], a) for a in range(self.ndim)]
        B = self.brick
        corners = []
        for corner in range(1 << self.ndim):
            node = [cells[a][0] + ((corner >> a) & 1) for a in range(self.ndim)]
            node = [np.minimum(node[a], self.resolution[a] - 1) for a in range(self.ndim)]
            w = np.ones(len(x), np.float32)
            for a in range(self.ndim):
                f = cells[a][1]
                w *= f if (corner >> a) & 1 else 1.0 - f
            bid = np.ravel_multi_index([n // B for n in node], self.brick_grid)
            off = np.ravel_multi_index([n % B for n in node], (B,) * self.ndim)
            corners.append((bid, off, w))
        all_ids = np.concatenate([c[0] for c in corners])
        pos = np.searchsorted(self._ids, all_ids)
        pos = np.minimum(pos, self.bricks - 1)
        hit = self._ids[pos] == all_ids
        rows = np.unique(pos[hit])
        values, lookup = self._bricks(rows)
        P = len(x)
        for k, (_, off, w) in enumerate(corners):
            p, h = pos[k * P:(k + 1) * P], hit[k * P:(k + 1) * P]
            idx = np.flatnonzero(h)
            out[idx] += w[idx] * values[lookup[p[idx]], off[idx]]
        return out

    def grid(self, axes: Sequence[np.ndarray]) -> np.ndarray:
        """Residual on the outer product of per-axis normalized coordinates: dense float32.

        Only the stored bricks under the region are decoded. Each brick adds
        its own nodes' share, ``sum_n v_n prod_a hat(t_a - n_a)`` (``hat`` the
        1-D linear B-spline), on the outputs within one cell of it; the sum
        over bricks is the multilinear interpolation of all nodes.
        """
        if len(axes) != self.ndim:
            raise ValueError(f"grid expects {self.ndim} coordinate arrays, got {len(axes)}")
        axes = [np.asarray(a, np.float64).reshape(-1) for a in axes]
        sizes = [len(a) for a in axes]
        out = np.zeros(sizes, np.float32)
        if self.bricks == 0 or 0 in sizes:
            return out
        B = self.brick
        # per axis and brick coordinate c: outputs strictly inside the padded node span cB-1 .. cB+B,
        # with their cell in the zero-padded brick (B + 2 nodes) and the weight of its upper node
        spans = []
        coords = np.stack(np.unravel_index(self._ids, self.brick_grid), axis=1)
        keep = np.ones(self.bricks, bool)
        for a, x in enumerate(axes):
            n = self.resolution[a]
            t = (np.clip(x, -1.0, 1.0) + 1.0) * (0.5 * (n - 1))
            per = {}
            for c in np.unique(coords[:, a]):
                lo = int(c) * B - 1
                idx = np.flatnonzero((t > lo) & (t < lo + B + 1))
                if len(idx):
                    u = t[idx] - lo
                    j0 = np.minimum(np.floor(u).astype(np.int64), B)
                    per[int(c)] = (idx, j0, (u - j0).astype(np.float32))
            spans.append(per)
            keep &= np.isin(coords[:, a], list(per))
        rows = np.flatnonzero(keep)
        if not len(rows):
            return out
        values, lookup = self._bricks(rows)
        padded = np.zeros((B + 2,) * self.ndim, np.float32)
        inner = (slice(1, B + 1),) * self.ndim
        for row in rows:
            padded[inner] = values[lookup[row]].reshape((B,) * self.ndim)
            vals = padded
            index = []
            for a in range(self.ndim):
                idx, j0, f = spans[a][int(coords[row, a])]
                shape = [1] * self.ndim
                shape[a] = -1
                f = f.reshape(shape)
                vals = np.take(vals, j0, axis=a) * (1 - f) + np.take(vals, j0 + 1, axis=a) * f
                index.append(idx)
            out[np.ix_(*index)] += vals
        return out

    def _dense_box(self, lo: list[int], hi: list[int]) -> np.ndarray | None:
        """Node values on the inclusive node box ``lo..hi``; None when no stored brick meets it."""
        B = self.brick
        ranges = [np.arange(l // B, h // B + 1) for l, h in zip(lo, hi)]
        mesh = np.meshgrid(*ranges, indexing="ij")
        bids = np.ravel_multi_index([m.reshape(-1) for m in mesh], self.brick_grid)
        pos = np.minimum(np.searchsorted(self._ids, bids), self.bricks - 1)
        hit = self._ids[pos] == bids
        if not hit.any():
            return None
        rows = pos[hit]
        values, lookup = self._bricks(np.unique(rows))
        # the box padded to whole bricks, then cropped
        origin = [r[0] * B for r in ranges]
        full = np.zeros([len(r) * B for r in ranges], np.float32)
        coords = np.stack(np.unravel_index(bids[hit], self.brick_grid), axis=1)
        for bc, row in zip(coords, rows):
            sl = tuple(slice(int(c) * B - o, int(c) * B - o + B) for c, o in zip(bc, origin))
            full[sl] = values[lookup[row]].reshape((B,) * self.ndim)
        crop = tuple(slice(l - o, h - o + 1) for l, h, o in zip(lo, hi, origin))
        return full[crop]

    def dense(self) -> np.ndarray:
        """Every node value, ``resolution``-shaped float32 (for tests and small lattices)."""
        box = self._dense_box([0] * self.ndim, [n - 1 for n in self.resolution])
        return np.zeros(self.resolution, np.float32) if box is None else box

    # ------------------------------------------------------------------ bytes
    def to_bytes(self) -> bytes:
        head = _FIXED.pack(MAGIC, VERSION, self.ndim, self.brick, PREDICTORS.index(self.predictor),
                           self.int_bytes, self._occupancy_kind, 0)
        head += struct.pack(f"<{self.ndim}I", *self.resolution)
        head += _TAIL.pack(self.step, self.bricks, self.chunk_bricks, len(self._occupancy))
        head += struct.pack(f"<{len(self._chunks)}I", *(len(c) for c in self._chunks))
        return head + self._occupancy + b"".join(self._chunks)

    @classmethod
    def from_bytes(cls, blob: bytes, *, max_decoded_bytes: int | None = None, verify: bool = True) -> "LocalDetail":
        """Parse and validate :meth:`to_bytes` output.

        Parameters
        ----------
        blob : bytes
        max_decoded_bytes : int, optional
            Refuse a detail whose decoded nodes (float32 of every stored
            brick) would exceed this many bytes (default 2 GiB).
        verify : bool
            Also decode every chunk once (one at a time, memory bounded by a
            chunk) so that a damaged chunk fails here, not at the first query.

        Raises
        ------
        FormatError
            Anything malformed: wrong magic, unknown version, out-of-range
            fields, lengths that do not add up, bad zstd frames, an occupancy
            that disagrees with the brick count.
        """
        blob = bytes(blob)
        limit = DEFAULT_MAX_DECODED if max_decoded_bytes is None else int(max_decoded_bytes)
        if len(blob) < _FIXED.size:
            raise FormatError(f"local detail: {len(blob)} bytes is shorter than its {_FIXED.size}-byte header")
        magic, version, ndim, brick, pred, width, occ_kind, reserved = _FIXED.unpack_from(blob, 0)
        if magic != MAGIC:
            raise FormatError(f"local detail: bad magic {magic!r} (expected {MAGIC!r})")
        if version != VERSION:
            raise FormatError(f"local detail: version {version} is not supported (this finr3d reads {VERSION}); "
                              "upgrade finr3d")
        if not 1 <= ndim <= _MAX_NDIM:
            raise FormatError(f"local detail: ndim {ndim} out of range 1..{_MAX_NDIM}")
        if not 2 <= brick <= _MAX_BRICK:
            raise FormatError(f"local detail: brick {brick} out of range 2..{_MAX_BRICK}")
        if pred >= len(PREDICTORS):
            raise FormatError(f"local detail: unknown predictor {pred}")
        if width not in (1, 2, 4):
            raise FormatError(f"local detail: integer width {width} is not 1, 2 or 4 bytes")
        if occ_kind not in (_OCC_BITMAP, _OCC_GAPS) or reserved != 0:
            raise FormatError(f"local detail: unknown occupancy kind {occ_kind} or reserved field {reserved}")
        off = _FIXED.size
        need = off + 4 * ndim + _TAIL.size
        if len(blob) < need:
            raise FormatError(f"local detail: truncated header ({len(blob)} of at least {need} bytes)")
        resolution = struct.unpack_from(f"<{ndim}I", blob, off)
        off += 4 * ndim
        step, n_bricks, chunk_bricks, occ_len = _TAIL.unpack_from(blob, off)
        off += _TAIL.size
        if any(not 2 <= n <= _MAX_RESOLUTION for n in resolution) or math.prod(resolution) > _MAX_NODES:
            raise FormatError(f"local detail: lattice {resolution} out of range (2..{_MAX_RESOLUTION} nodes an axis)")
        if not (math.isfinite(step) and 0 < step < 1e30):
            raise FormatError(f"local detail: quantization step {step!r} is not a positive finite number")
        grid = tuple(-(-n // brick) for n in resolution)
        total = math.prod(grid)
        if n_bricks > total:
            raise FormatError(f"local detail: {n_bricks} bricks but the lattice holds only {total}")
        decoded = n_bricks * brick**ndim * 4
        if decoded > limit:
            raise FormatError(f"local detail: decoding needs {decoded:,} bytes, over the limit of {limit:,}")
        if n_bricks and not 1 <= chunk_bricks <= n_bricks:
            raise FormatError(f"local detail: chunk size {chunk_bricks} out of range 1..{n_bricks}")
        if n_bricks == 0 and chunk_bricks != 1:
            raise FormatError(f"local detail: chunk size {chunk_bricks} for an empty detail (expected 1)")
        n_chunks = -(-n_bricks // chunk_bricks)
        if len(blob) < off + 4 * n_chunks:
            raise FormatError("local detail: truncated chunk table")
        lengths = struct.unpack_from(f"<{n_chunks}I", blob, off)
        off += 4 * n_chunks
        end = off + occ_len + sum(lengths)
        if end != len(blob):
            raise FormatError(f"local detail: sections add up to {end} bytes, the blob has {len(blob)}")
        occupancy = blob[off:off + occ_len]
        off += occ_len
        ids = _decode_occupancy(occupancy, occ_kind, total, n_bricks)
        chunks = []
        for n in lengths:
            chunks.append(blob[off:off + n])
            off += n
        out = cls(resolution=resolution, brick=brick, step=step, ids=ids, chunks=chunks,
                  chunk_bricks=chunk_bricks, predictor=PREDICTORS[pred], int_bytes=width,
                  occupancy=occupancy, occupancy_kind=occ_kind)
        if verify:
            for c in range(n_chunks):
                out._chunk_values(c)
        return out


# --------------------------------------------------------------------------- occupancy


def _encode_occupancy(ids: np.ndarray, total: int) -> tuple[int, bytes]:
    cctx = _zstd_level(19)
    bits = np.zeros(total, bool)
    bits[ids] = True
    bitmap = cctx.compress(np.packbits(bits).tobytes())
    gaps = np.diff(ids, prepend=-1) - 1  # >= 0: the ids are sorted and unique
    width = _int_bytes(gaps)
    gaps_blob = cctx.compress(bytes([width]) + _pack_ints(gaps, width))
    return (_OCC_BITMAP, bitmap) if len(bitmap) <= len(gaps_blob) else (_OCC_GAPS, gaps_blob)


def _decode_occupancy(blob: bytes, kind: int, total: int, n_bricks: int) -> np.ndarray:
    if kind == _OCC_BITMAP:
        raw = _decompress(blob, (total + 7) // 8, "occupancy bitmap")
        bits = np.unpackbits(np.frombuffer(raw, np.uint8))
        if bits[total:].any():
            raise FormatError("local detail: the occupancy bitmap has bits beyond the brick grid")
        ids = np.flatnonzero(bits[:total]).astype(np.int64)
        if len(ids) != n_bricks:
            raise FormatError(f"local detail: the occupancy marks {len(ids)} bricks, the header says {n_bricks}")
        return ids
    raw = zstd_bounded(blob, 1 + 4 * max(n_bricks, 1), "local detail: the occupancy list")
    if not raw or raw[0] not in (1, 2, 4) or len(raw) != 1 + raw[0] * n_bricks:
        raise FormatError("local detail: the occupancy list does not match the brick count")
    gaps = _unpack_ints(raw[1:], raw[0], n_bricks)
    if (gaps < 0).any():
        raise FormatError("local detail: the occupancy list has a negative gap")
    ids = np.cumsum(gaps + 1) - 1
    if n_bricks and ids[-1] >= total:
        raise FormatError(f"local detail: brick id {int(ids[-1])} beyond the brick grid of {total}")
    return ids


# --------------------------------------------------------------------------- fitting


def fit_local_detail(residual: np.ndarray, *, mask: np.ndarray | None = None, step: float, brick: int = 8,
                     predictor: str = "lorenzo", chunk_bricks: int = 64, level: int = 19,
                     deadzone: float = 0.5) -> LocalDetail:
    """Quantize and code a residual given on every lattice node.

    Parameters
    ----------
    residual : (N_0, ..., N_{d-1}) float
        Values on the nodes of the lattice over ``[-1, 1]^d`` (e.g. ground
        truth minus the global field, in field units).
    mask : same shape, bool, optional
        Nodes whose value matters (e.g. ``|sdf| < band``); the others are 0.
    step : float
        Quantization step in field units: a kept node is off by at most
        ``step / 2``. Larger steps give fewer, smaller bricks.
    brick : int
        Nodes per axis of a brick (2..32).
    predictor : {"lorenzo", "delta", "none"}
        Integer predictor inside a brick (see :data:`PREDICTORS`).
    chunk_bricks : int
        Bricks per zstd frame: the unit of random access.
    level : int
        zstd level.
    deadzone : float
        Node values with ``|r| < deadzone * step`` become 0 (0.5 is plain rounding;
        larger values drop more near-zero nodes, at a larger error bound).

    Returns
    -------
    LocalDetail
    """
    r = np.asarray(residual, np.float64)
    if not 1 <= r.ndim <= _MAX_NDIM or any(n < 2 for n in r.shape):
        raise ValueError(f"residual must be a 1- to {_MAX_NDIM}-D array with >= 2 nodes an axis, got shape {r.shape}")
    if not (isinstance(step, (int, float, np.floating)) and math.isfinite(step) and 0 < step < 1e30):
        raise ValueError(f"step must be a positive finite number (field units), got {step!r}")
    if isinstance(brick, bool) or not isinstance(brick, (int, np.integer)) or not 2 <= brick <= _MAX_BRICK:
        raise ValueError(f"brick must be an integer in 2..{_MAX_BRICK}, got {brick!r}")
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor must be one of {', '.join(PREDICTORS)}, got {predictor!r}")
    if not isinstance(chunk_bricks, (int, np.integer)) or chunk_bricks < 1:
        raise ValueError(f"chunk_bricks must be a positive integer, got {chunk_bricks!r}")
    if not 0.5 <= deadzone < 1e6:
        raise ValueError(f"deadzone must be >= 0.5 (plain rounding), got {deadzone!r}")
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != r.shape:
            raise ValueError(f"mask shape {mask.shape} differs from the residual's {r.shape}")
    if not np.isfinite(r if mask is None else r[mask]).all():
        raise ValueError("residual holds NaN or Inf where it matters")
    q = np.rint(np.where(mask, r, 0.0) / step) if mask is not None else np.rint(r / step)
    if deadzone > 0.5:
        q[np.abs(r) < deadzone * step] = 0
    if np.abs(q).max(initial=0) > _MAX_Q // (2 ** r.ndim):
        raise ValueError(f"step {step:g} is too small for residuals up to {np.abs(r).max():.3g}: "
                         "the quantized values overflow; use a larger step")
    q = q.astype(np.int64)
    B = int(brick)
    grid = tuple(-(-n // B) for n in r.shape)
    padded = np.zeros([g * B for g in grid], np.int64)
    padded[tuple(slice(0, n) for n in r.shape)] = q
    # (brick grid..., B...) -> (bricks, B, ..., B) in lattice order
    split = padded.reshape([v for g in grid for v in (g, B)])
    perm = list(range(0, 2 * r.ndim, 2)) + list(range(1, 2 * r.ndim, 2))
    blocks = split.transpose(perm).reshape((-1,) + (B,) * r.ndim)
    ids = np.flatnonzero(blocks.reshape(len(blocks), -1).any(axis=1)).astype(np.int64)
    blocks = blocks[ids]
    e = _predict(blocks, predictor)
    width = _int_bytes(e)
    cctx = _zstd_level(level)
    chunks = [cctx.compress(_pack_ints(e[s:s + chunk_bricks], width)) for s in range(0, len(ids), chunk_bricks)]
    occ_kind, occupancy = _encode_occupancy(ids, math.prod(grid))
    return LocalDetail(resolution=r.shape, brick=B, step=float(step), ids=ids, chunks=chunks,
                       chunk_bricks=int(min(chunk_bricks, max(len(ids), 1))), predictor=predictor,
                       int_bytes=width, occupancy=occupancy, occupancy_kind=occ_kind)
