"""Volumes and time-varying volumes: reading N-D arrays without guessing, sampling without a float copy.

A volume is stored in the array order ``(z, y, x)``, a time-varying one in
``(t, z, y, x)``, with channels last; these are the target's axes. The source
may hold its axes in any order: ``axes`` names them with the letters
``t z y x c`` (``"zyx"``, ``"tzyx"``, ``"zyxc"``, ``"xyzt"``, ...). A 3-D
array is read as ``zyx``; an array of any other rank needs ``axes``, so a
(6, 24, 24, 24) array is never read silently as 24 channels. NIfTI names its
axes itself (``x, y, z[, t]``) and a folder of per-frame volumes is ``t`` then
the frame's axes.

The source array is kept in its own dtype, memory-mapped where the format
allows (``.npy``, ``.raw``, uncompressed NIfTI), and only the samples a
sub-grid touches are converted to float32: a 512^3 uint8 volume fits without a
dense float copy (``benchmarks/volume_fit.py``, the memory bound). Scores are
computed slab by slab for the same reason.

Values are min-max normalized: the field predicts ``(v - lo) / (hi - lo)`` in
``[0, 1]``, and PSNR takes the source's value range ``hi - lo`` as its peak
(1 in the field's units).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from finr3d.errors import InputError
from finr3d.targets import (FRAME_SUFFIXES, MAX_SAMPLES, Target, _is_frame_file, check_finite, even_indices,  # noqa: F401
                            is_volume_folder, lattice, lerp_axes, psnr)

__all__ = ["VolumeTarget", "read_volume", "parse_axes", "parse_layout", "ssim_volume", "frame_field",
           "FRAME_SUFFIXES", "AXIS_LETTERS", "hosvd_psnr_bounds", "goal_rank", "GOAL_RANKS", "GOAL_MARGIN_DB",
           "CLIP_SLACK_DB"]

#: Letters ``axes`` may use: time, the three space axes (array order z, y, x) and channels.
AXIS_LETTERS = "tzyxc"
#: Values per slab when a field is scored or decoded slab by slab (64 MiB of float32).
SLAB_VALUES = 1 << 24
#: Voxels per SSIM slab (scikit-image holds about a dozen float64 copies of a slab and its halo)
SSIM_SLAB_VALUES = 1 << 21
#: float64 values a slab of :meth:`VolumeTarget.mode_grams` and :meth:`VolumeTarget.hosvd` holds (32 MiB)
GRAM_SLAB_VALUES = 1 << 22
#: Values up to which a 3-D volume's spectrum (:func:`goal_rank`) and its exact Tucker start read every stored
#: sample (:meth:`VolumeTarget.mode_grams`): about 33 s of Gram products on one core at this size (1.0 TFlop;
#: 42M values took 3.1 s). Larger volumes fall back to an evenly spaced sub-lattice of :data:`SPECTRUM_SAMPLES`.
EVERY_SAMPLE_LIMIT = 1 << 28
#: Samples of the sub-lattice a spectrum is read on where every sample is not (a float64 copy: 128 MiB).
SPECTRUM_SAMPLES = 1 << 24
#: Side of the SSIM window (7^3 voxels, scikit-image's default for 3-D).
SSIM_WINDOW = 7

_RAW_NAME = re.compile(r"(\d+)x(\d+)x(\d+)(?:x(\d+))?_(u?int8|u?int16|u?int32|float32|float64)", re.I)


# ---------------------------------------------------------------------------
# Axes and layouts
# ---------------------------------------------------------------------------

def parse_axes(axes: str, ndim: int, name: str = "the array") -> str:
    """Validate an axes string (letters of ``t z y x c``, one per array axis) and return it lower-cased.

    Raises :class:`InputError` naming the problem: wrong length, unknown or
    repeated letters, or a missing space axis.
    """
    letters = str(axes).strip().lower()
    bad = sorted(set(letters) - set(AXIS_LETTERS))
    if bad:
        raise InputError(f"--axes {axes!r}: unknown letter(s) {''.join(bad)!r}; use t z y x c, e.g. tzyx or zyxc")
    if len(set(letters)) != len(letters):
        raise InputError(f"--axes {axes!r} repeats a letter; name each axis once, e.g. tzyx")
    if len(letters) != ndim:
        raise InputError(f"--axes {axes!r} names {len(letters)} axes but {name} has {ndim} "
                         f"(one letter per axis, slowest first)")
    missing = [a for a in "zyx" if a not in letters]
    if missing:
        raise InputError(f"--axes {axes!r} has no {', '.join(missing)} axis; a volume needs z, y and x")
    return letters


def canonical_order(letters: str) -> list[int]:
    """Permutation taking an array with axes ``letters`` to ``[t] z y x [c]``."""
    return [letters.index(a) for a in AXIS_LETTERS if a in letters]


def parse_layout(layout: Optional[str], axis_names: Sequence[str]) -> list[tuple[int, ...]]:
    """Modes from a layout string: ``"x+y+z+t"`` one mode per axis, ``"xyz+t"`` grouped.

    Each ``+``-separated group names the axes of one mode network; every axis
    appears once. Returns axis-index tuples (indices into ``axis_names``), each
    sorted, in the order given.
    """
    if layout is None:
        return [(i,) for i in range(len(axis_names))]
    text = str(layout).strip().lower().replace(" ", "").replace("(", "").replace(")", "").replace(",", "")
    groups = [g for g in text.split("+")]
    known = "".join(axis_names)
    if any(not g for g in groups) or any(ch not in known for g in groups for ch in g):
        raise InputError(f"layout {layout!r}: use the axis letters {'+'.join(reversed(known))} grouped by '+', "
                         f"e.g. {'+'.join(reversed(known))} (one network per axis) or "
                         f"{''.join(a for a in reversed(known) if a != 't')}+t")
    flat = "".join(groups)
    if sorted(flat) != sorted(known):
        raise InputError(f"layout {layout!r} must name each of the axes {', '.join(axis_names)} exactly once")
    if len(groups) < 2:
        raise InputError(f"layout {layout!r} has a single group; a factorized field needs at least two modes")
    return [tuple(sorted(known.index(ch) for ch in g)) for g in groups]


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------

def _natural_key(p: Path):
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", p.name.lower())]


def frame_files(folder: Path) -> list[Path]:
    """The per-frame volume files of ``folder`` in natural order (``f2`` before ``f10``)."""
    files = sorted((p for p in Path(folder).iterdir() if _is_frame_file(p)), key=_natural_key)
    if not files:
        raise InputError(f"{folder}: the folder holds no volume frames ({', '.join(FRAME_SUFFIXES)})")
    kinds = {"".join(p.suffixes[-2:]).lower() if p.name.lower().endswith(".nii.gz") else p.suffix.lower()
             for p in files}
    if len(kinds) > 1:
        raise InputError(f"{folder}: the frames mix file types {sorted(kinds)}; keep one type per folder")
    return files


def read_volume(path, *, dims=None, dtype=None, key=None) -> tuple[np.ndarray, Optional[str]]:
    """Read a volume file or a folder of frames without converting it.

    Returns
    -------
    array : ndarray (a read-only-safe copy-on-write memmap where the format allows)
        In the file's own dtype and axis order.
    axes : str or None
        The axes the format itself defines (NIfTI ``zyx``/``tzyx`` after reordering, a frame folder ``t`` + the
        frame's), or None when only the caller can say (``.npy``, ``.npz``, ``.raw``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file; check the path")
    if path.is_dir():
        return _read_frames(path, dims=dims, dtype=dtype, key=key)
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty (0 bytes)")
    suffix = path.suffix.lower()
    name = path.name.lower()
    if suffix == ".npy":
        from finr3d.targets import _check_npy_header

        with open(path, "rb") as handle:
            _check_npy_header(handle, path.stat().st_size, path.name)  # a hostile header allocates nothing
        try:
            return np.load(path, mmap_mode="c", allow_pickle=False), None
        except ValueError as exc:
            raise InputError(f"{path.name}: cannot read the array ({exc}); object/pickled arrays and truncated "
                             "files are refused") from exc
        except OSError as exc:
            raise InputError(f"{path.name}: cannot read the array ({exc})") from exc
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                if not keys:
                    raise InputError(f"{path.name}: the .npz holds no arrays")
                if key is None and len(keys) > 1:
                    raise InputError(f"{path.name}: the .npz holds {keys}; choose one with key=")
                if key is not None and key not in keys:
                    raise InputError(f"{path.name}: no array {key!r} in the .npz; it holds {keys}")
                member = f"{key or keys[0]}.npy"
                if member in z.zip.namelist():
                    from finr3d.targets import _check_npy_header

                    with z.zip.open(member) as handle:
                        _check_npy_header(handle, z.zip.getinfo(member).file_size, f"{path.name}:{member}")
                return z[key or keys[0]], None
        except InputError:
            raise
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"{path.name}: cannot read the array ({exc}); object/pickled arrays are refused") from exc
    if suffix == ".raw":
        return _read_raw(path, dims=dims, dtype=dtype), None
    if name.endswith(".nii") or name.endswith(".nii.gz"):
        return _read_nifti(path)
    raise InputError(f"{path.name}: unsupported volume type; use .npy, .npz, .raw (with dims in the name), "
                     ".nii[.gz] or a folder of per-frame volumes")


def _read_raw(path: Path, *, dims=None, dtype=None) -> np.ndarray:
    if dims is None or dtype is None:
        m = _RAW_NAME.search(path.stem)
        if m is None:
            raise InputError(
                f"{path.name}: a .raw volume needs its dims and dtype, e.g. name it "
                "'name_128x128x128_uint8.raw' (x first) or pass dims=(X, Y, Z) and dtype='uint8'"
            )
        dims = dims or tuple(int(g) for g in m.groups()[:4] if g is not None)
        dtype = dtype or m.group(5).lower()
    dims = tuple(int(d) for d in dims)
    if len(dims) not in (3, 4) or min(dims) < 1:
        raise InputError(f"{path.name}: dims must be 3 or 4 positive sizes (x first), got {dims}")
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise InputError(f"{path.name}: unknown dtype {dtype!r}") from exc
    expected = math.prod(dims) * dt.itemsize
    size = path.stat().st_size
    if size != expected:
        raise InputError(f"{path.name}: {size} bytes, but {'x'.join(map(str, dims))} {dt} needs {expected}; "
                         "check dims and dtype")
    # dims are listed fastest first (x, y, z[, 4th]); the array is indexed slowest first
    return np.memmap(path, dtype=dt, mode="c", shape=tuple(reversed(dims)))


def _read_nifti(path: Path) -> tuple[np.ndarray, str]:
    try:
        import nibabel
    except ImportError as exc:
        raise InputError("reading NIfTI needs nibabel: pip install 'finr3d[nifti]'") from exc
    try:
        img = nibabel.load(str(path))
        arr = np.asanyarray(img.dataobj)  # the stored dtype (memory-mapped when uncompressed and unscaled)
    except Exception as exc:  # nibabel raises many types for broken files
        raise InputError(f"{path.name}: cannot read NIfTI ({exc})") from exc
    while arr.ndim > 3 and arr.shape[-1] == 1:  # NIfTI pads unused trailing dims with 1
        arr = arr[..., 0]
    if arr.ndim == 3:
        return arr.transpose(2, 1, 0), "zyx"
    if arr.ndim == 4:
        return arr.transpose(3, 2, 1, 0), "tzyx"  # NIfTI's 4th axis is time (x, y, z, t)
    raise InputError(f"{path.name}: a {arr.ndim}-D NIfTI image (shape {arr.shape}); finr3d reads x, y, z[, t]")


def _read_frames(folder: Path, *, dims=None, dtype=None, key=None) -> tuple[np.ndarray, Optional[str]]:
    files = frame_files(folder)
    frames, axes = [], None
    for p in files:
        arr, native = read_volume(p, dims=dims, dtype=dtype, key=key)
        if native is None:
            if arr.ndim != 3:
                raise InputError(f"{p.name}: a frame of shape {arr.shape}; frames of a folder must be 3-D (z, y, x)")
            native = "zyx"
        if native != "zyx":
            raise InputError(f"{p.name}: a {native} frame; frames of a folder must be 3-D volumes")
        if frames and (arr.shape != frames[0].shape or arr.dtype != frames[0].dtype):
            raise InputError(f"{p.name}: shape {arr.shape} {arr.dtype} differs from the first frame's "
                             f"{frames[0].shape} {frames[0].dtype}; every frame must match")
        frames.append(arr)
        axes = "t" + native
    if len(frames) < 2:
        raise InputError(f"{folder}: one frame only; fit a single volume file instead")
    return np.stack(frames), axes


# ---------------------------------------------------------------------------
# Sampling a stored grid of any dtype
# ---------------------------------------------------------------------------

def _axis_plan(c: torch.Tensor, n: int):
    """Stored indices one axis needs for coordinates ``c``, and how to interpolate them."""
    c = torch.as_tensor(c).to(torch.float32).cpu().reshape(-1)
    if n == 1:
        return np.zeros(len(c), np.int64), None
    pos = (c.clamp(-1, 1) + 1) * 0.5 * (n - 1)
    snapped = pos.round()
    on_lattice = (pos - snapped).abs() < 1e-4
    if bool(on_lattice.all()):
        return snapped.long().numpy(), None
    pos = torch.where(on_lattice, snapped, pos)
    i0 = pos.floor().long().clamp_(0, n - 2)
    w = (pos - i0).clamp_(0, 1)
    need, inverse = torch.unique(torch.cat([i0, i0 + 1]), sorted=True, return_inverse=True)
    return need.numpy(), (inverse[: len(i0)], inverse[len(i0):], w)


def sample_array(array: np.ndarray, coords: Sequence[torch.Tensor], offset: float = 0.0,
                 scale: float = 1.0) -> torch.Tensor:
    """Multilinear interpolation of a stored ``(N_0, ..., N_{d-1}, C)`` array of any dtype, as ``(v - offset) / scale``.

    Only the stored samples the sub-grid touches are read (from a memmap:
    from disk) and converted to float32: ``Π n_i C`` values when every
    coordinate falls on a stored sample, at most ``Π min(2 n_i, N_i) C`` otherwise.

    Returns a ``(n_0, ..., n_{d-1}, C)`` float32 tensor.
    """
    plans = [_axis_plan(c, array.shape[a]) for a, c in enumerate(coords)]
    sub = array[np.ix_(*[p[0] for p in plans])]
    out = torch.from_numpy(np.asarray(sub, dtype=np.float32))
    if offset != 0.0:
        out -= np.float32(offset)
    if scale != 1.0:
        out /= np.float32(scale)
    return lerp_axes(out, [plan for _, plan in plans])


# ---------------------------------------------------------------------------
# SSIM of volumes, slab by slab
# ---------------------------------------------------------------------------

def ssim_volume(pred_slab, ref_slab, depth: int, *, data_range: float = 1.0, slab: int = 64) -> float:
    """3-D SSIM (uniform 7^3 window, scikit-image) of two (Z, Y, X) volumes given slab by slab.

    ``pred_slab(z0, z1)`` and ``ref_slab(z0, z1)`` return planes ``z0..z1-1``
    (float arrays ``(z1 - z0, Y, X)``). Each slab is scored with a halo of 3
    planes either side and the per-voxel SSIM map is averaged over the
    interior that scikit-image averages (3 voxels cropped per side), so the
    result equals ``structural_similarity(pred, ref, win_size=7)`` on the
    whole volume while memory stays at a few slabs. Axes shorter than 7 take
    the largest odd window that fits; below 3, NaN.
    """
    from skimage.metrics import structural_similarity

    first = np.asarray(ref_slab(0, 1))
    dims = (depth, *first.shape[1:])
    win = min(SSIM_WINDOW, *dims)
    win = win if win % 2 == 1 else win - 1
    if win < 3:
        return float("nan")
    pad = (win - 1) // 2
    total, count = 0.0, 0
    for z0 in range(pad, depth - pad, slab):
        z1 = min(depth - pad, z0 + slab)
        a, b = max(0, z0 - pad), min(depth, z1 + pad)
        p = np.asarray(pred_slab(a, b), np.float64)
        r = np.asarray(ref_slab(a, b), np.float64)
        _, smap = structural_similarity(p, r, win_size=win, data_range=data_range, full=True)
        inner = smap[z0 - a: z1 - a, pad: dims[1] - pad, pad: dims[2] - pad]
        total += float(inner.sum(dtype=np.float64))
        count += inner.size
    return total / count if count else float("nan")


# ---------------------------------------------------------------------------
# The target
# ---------------------------------------------------------------------------

class VolumeTarget(Target):
    """A scalar or multi-channel volume, or a time-varying one, from an array or a file.

    Parameters
    ----------
    source : path, folder or ndarray
        ``.npy``, ``.npz``, headerless ``.raw`` (dims and dtype in the name,
        ``name_XxYxZ[xT]_uint8.raw``, x fastest, or ``dims``/``dtype``), NIfTI
        (``x, y, z[, t]``), or a folder of per-frame ``.npy``/``.raw``/``.nii``
        volumes (natural order).
    axes : str, optional
        The source's axes, slowest first, in the letters ``t z y x c``. A 3-D
        array defaults to ``zyx``; any other rank needs it (NIfTI and frame
        folders name their own axes).
    layout : str, optional
        Modes as axis letters grouped by ``+``: ``"x+y+z[+t]"`` (default, one
        network per axis) or e.g. ``"xyz+t"``.
    dims, dtype : for ``.raw`` files without dims in the name.
    key : the array of a multi-array ``.npz``.

    Attributes
    ----------
    shape : ``(Z, Y, X)`` or ``(T, Z, Y, X)``
    array : the source array (its own dtype, possibly memory-mapped) in that order, channels last.
    source_axes : the source's axes letters (``decode`` writes arrays back in this order).
    """

    kind = "volume"
    #: PSNR peak in the field's units: values are min-max normalized to [0, 1], so the source's range
    data_range = 1.0
    value_bounds = (0.0, 1.0)

    def __init__(self, source, *, axes: Optional[str] = None, layout: Optional[str] = None, dims=None,
                 dtype=None, key: Optional[str] = None):
        native = None
        if isinstance(source, (str, os.PathLike)):
            arr, native = read_volume(source, dims=dims, dtype=dtype, key=key)
            name = str(source)
        else:
            arr, name = np.asarray(source), "<array>"
        if arr.dtype.kind not in "uif" or arr.dtype.itemsize > 8:
            raise InputError(f"{Path(name).name}: unsupported voxel type {arr.dtype}; use integer or float voxels")
        if axes is not None:
            if native is not None and len(str(axes)) != arr.ndim:
                raise InputError(f"--axes {axes!r} names {len(str(axes))} axes but {Path(name).name} reads as "
                                 f"{native} ({arr.ndim}-D)")
            # for NIfTI and frame folders, already ordered as `native`, --axes relabels (e.g. czyx: channels)
            letters = parse_axes(axes, arr.ndim, Path(name).name)
        elif native is not None:
            letters = native
        elif arr.ndim == 3:
            letters = "zyx"
        elif arr.ndim == 4:
            raise InputError(f"{Path(name).name}: a 4-D array of shape {tuple(arr.shape)} could be time x volume or "
                             "a volume with channels; say which with --axes (e.g. --axes tzyx or --axes zyxc)")
        else:
            raise InputError(f"{Path(name).name}: a {arr.ndim}-D array of shape {tuple(arr.shape)}; name its axes "
                             "with --axes (letters t z y x c, e.g. tzyxc), or give a 3-D (z, y, x) volume")
        canon = arr.transpose(canonical_order(letters))
        if "c" not in letters:
            canon = canon[..., None]
        spatial = canon.shape[:-1]
        if canon.size == 0:
            raise InputError(f"{Path(name).name}: the volume is empty (shape {arr.shape})")
        if min(spatial) < 2:
            raise InputError(f"{Path(name).name}: every axis needs at least 2 samples, got "
                             f"{dict(zip([a for a in AXIS_LETTERS if a in letters and a != 'c'], spatial))}")
        if canon.size > MAX_SAMPLES:
            raise InputError(f"{Path(name).name}: {canon.size:,} samples is more than {MAX_SAMPLES:,}; "
                             "downsample or crop it first")
        if canon.shape[-1] > 64:
            raise InputError(f"{Path(name).name}: {canon.shape[-1]} channels is more than 64; check --axes")
        check_finite(arr, Path(name).name)
        lo, hi = _min_max(arr)
        self.array = canon
        self.source_axes = letters
        self.axis_names = tuple(a for a in AXIS_LETTERS if a in letters and a != "c")
        self.shape = tuple(int(s) for s in spatial)
        self.channels = int(canon.shape[-1])
        self.value_offset = lo
        self.value_scale = hi - lo if hi > lo else 1.0
        self.bounds = np.asarray([[0, n - 1] for n in self.shape], float)
        self.source = name
        self.dtype = str(arr.dtype)
        self._modes = parse_layout(layout, self.axis_names)
        self.layout = layout
        # a clip larger than its preset's CP-ALS sub-lattice sweeps half the budget, then refines on every sample
        self.sweep_fraction = 1.0 if math.prod(self.shape) <= self.preset.closed_form_samples else 0.5

    @property
    def preset(self):
        """The volume preset; a time-varying volume with one network per axis takes the x+y+z+t preset."""
        from finr3d.presets import PRESETS, TIMED_VOLUME_PRESET

        if self.ndim == 4 and all(len(m) == 1 for m in self._modes):
            return TIMED_VOLUME_PRESET
        return PRESETS["volume"]

    # --- the Target interface ------------------------------------------------
    @property
    def default_modes(self) -> list[tuple[int, ...]]:
        return list(self._modes)

    @property
    def data(self) -> torch.Tensor:
        """The whole volume as float32 in the field's units; allocates 4 bytes a value, prefer :meth:`sample`."""
        return sample_array(self.array, [self.axis_coords(a) for a in range(self.ndim)],
                            self.value_offset, self.value_scale)

    def sample(self, coords):
        return sample_array(self.array, coords, self.value_offset, self.value_scale)

    def sample_indices(self, indices) -> torch.Tensor:
        """Ground truth at integer lattice indices (outer product): exact, no interpolation."""
        idx = [np.asarray(torch.as_tensor(i).cpu(), np.int64).reshape(-1) for i in indices]
        sub = np.asarray(self.array[np.ix_(*idx)], np.float32)
        out = torch.from_numpy(sub)
        out -= np.float32(self.value_offset)
        out /= np.float32(self.value_scale)
        return out

    def dense(self, max_samples: int = 256**3):
        """Stored samples on an evenly spaced index sub-lattice of at most ``max_samples`` samples (exact voxels)."""
        idx = even_indices(self.shape, max_samples)
        coords = [lattice(n)[i] for n, i in zip(self.shape, idx)]
        return coords, self.sample_indices(idx)

    def _slabs(self, axis: int, *, centred: bool = True, values: Optional[int] = None):
        """``(start, slab)`` along ``axis``: every stored sample once, as float64 in the field's units (centred on
        each channel's mean, :meth:`channel_means`, unless ``centred`` is False); about ``values`` values a slab."""
        n = self.shape[axis]
        step = max(1, (values or GRAM_SLAB_VALUES) // max(1, math.prod(self.array.shape) // n))
        mean = self.channel_means() if centred else None
        for s0 in range(0, n, step):
            index = [slice(None)] * self.array.ndim
            index[axis] = slice(s0, min(n, s0 + step))
            slab = torch.from_numpy(np.asarray(self.array[tuple(index)], np.float64))
            slab -= self.value_offset
            slab /= self.value_scale
            if mean is not None:
                slab -= mean
            yield s0, slab

    @property
    def hosvd_on_every_sample(self) -> bool:
        """Whether this volume's goal spectrum (:func:`goal_rank`) and exact Tucker start (:meth:`hosvd`) read
        every stored sample: a 3-D volume of at most :data:`EVERY_SAMPLE_LIMIT` values."""
        return self.ndim == 3 and math.prod(self.shape) * self.channels <= EVERY_SAMPLE_LIMIT

    def channel_means(self) -> torch.Tensor:
        """Each channel's mean over every stored sample in the field's units (float64, computed once by slabs)."""
        if not hasattr(self, "_channel_means"):
            total = torch.zeros(self.channels, dtype=torch.float64)
            for _, slab in self._slabs(0, centred=False):
                total += slab.reshape(-1, self.channels).sum(0)
            self._channel_means = total / math.prod(self.shape)
        return self._channel_means

    def mode_grams(self) -> list[torch.Tensor]:
        """Per axis ``m``, the Gram matrix ``X_(m) X_(m)^T`` (float64, ``(N_m, N_m)``) of the volume's unfolding
        on every stored sample, centred on each channel's mean, channels kept in the columns.

        Read a slab at a time (at most :data:`GRAM_SLAB_VALUES` float64 values at once, never a float copy of the
        whole volume): axis 0's slabs give every other axis's Gram, axis 1's give axis 0's. Computed once and
        kept (``N_m^2`` values each). A sub-lattice's spectrum is not the volume's: on a 512 x 512 x 160 CT-like
        volume the 117 x 377 x 377 sub-lattice of 2^24 samples put the HOSVD bound of ranks (49, 168, 161) at
        35.0 dB, where every sample gives 32.2 dB.
        """
        if getattr(self, "_mode_grams", None) is None:
            d = len(self.shape)
            grams = [torch.zeros(n, n, dtype=torch.float64) for n in self.shape]
            for _, slab in self._slabs(0):
                for m in range(1, d):
                    mat = torch.movedim(slab, m, 0).reshape(self.shape[m], -1)
                    grams[m] += mat @ mat.T
            for _, slab in self._slabs(1):
                mat = slab.reshape(self.shape[0], -1)
                grams[0] += mat @ mat.T
            self._mode_grams = grams
        return self._mode_grams

    def hosvd(self, ranks: Sequence[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Truncated HOSVD on every stored sample (channels kept whole, centred on :meth:`channel_means`):
        factors ``U_m`` (float64, ``(N_m, R_m)``, orthonormal columns, the leading eigenvectors of
        :meth:`mode_grams`) and the core ``X x_m U_m^T`` of shape ``(R_0, ..., R_{d-1}, C)``, projected a slab
        of axis 0 at a time. The same truncation :func:`finr3d.closed_form.hosvd` takes of a dense array."""
        factors, gen = [], torch.Generator().manual_seed(0)
        for g, r in zip(self.mode_grams(), ranks):
            _, vecs = torch.linalg.eigh(g)
            u = vecs.flip(-1)[:, :int(r)]
            if u.shape[1] < int(r):  # more ranks than samples: small noise columns, as closed_form.hosvd pads
                u = torch.cat([u, 1e-3 * torch.randn(u.shape[0], int(r) - u.shape[1], generator=gen,
                                                     dtype=u.dtype)], dim=1)
            factors.append(u.contiguous())
        core = None
        for s0, slab in self._slabs(0):
            part = slab
            for m in range(1, len(self.shape)):  # contract axes 1.. with their factors, keep the slab's rows
                part = torch.movedim(torch.tensordot(part, factors[m], dims=([m], [0])), -1, m)
            part = torch.tensordot(factors[0][s0:s0 + part.shape[0]], part, dims=([0], [0]))
            core = part if core is None else core + part
        return factors, core

    def evaluate(self, field, rank=None, *, ssim: bool = True) -> dict:
        """PSNR on the source's value range and 3-D SSIM, computed slab by slab.

        Predictions are clipped to the source's range first. A time-varying
        volume is scored frame by frame as well.

        Returns
        -------
        dict
            ``psnr`` (dB; the MSE of every voxel against the whole source's
            value range ``hi - lo``), ``ssim`` (3-D, uniform 7^3 window, mean
            over voxels; per frame, then the mean, for time-varying volumes),
            and for time-varying volumes ``psnr_mean`` (mean of the per-frame
            PSNRs), ``psnr_per_frame`` and ``ssim_per_frame``.
        """
        fitted = (getattr(field, "target_info", None) or {}).get("shape")
        if fitted is not None and tuple(int(v) for v in fitted) != self.shape:
            raise InputError(f"the field was fitted to a {'x'.join(map(str, fitted))} volume but the reference is "
                             f"{'x'.join(map(str, self.shape))}; give the volume it was fitted to")
        if getattr(field, "ndim", self.ndim) != self.ndim:
            raise InputError(f"the field has {field.ndim} axes but the reference volume has {self.ndim}")
        lo, hi = self.value_bounds
        full = [self.axis_coords(a) for a in range(self.ndim)]
        timed = self.ndim == 4
        frames = range(self.shape[0]) if timed else [None]
        space = self.shape[1:] if timed else self.shape
        plane = math.prod(space[1:]) * self.channels
        step = max(1, SLAB_VALUES // plane)
        sse_total, psnrs, ssims = 0.0, [], []
        for t in frames:
            lead = [full[0][t:t + 1]] if timed else []
            lead_idx = [torch.tensor([t])] if timed else []

            def pred_slab(z0, z1, lead=lead):
                coords = lead + [full[len(lead)][z0:z1]] + full[len(lead) + 1:]
                out = field.grid(coords, rank=rank, squeeze=False)
                out = np.clip(np.asarray(out, np.float32), lo, hi)
                return out[0] if timed else out

            def ref_slab(z0, z1, lead_idx=lead_idx):
                idx = lead_idx + [torch.arange(z0, z1)] + [torch.arange(n) for n in space[1:]]
                out = self.sample_indices(idx).numpy()
                return out[0] if timed else out

            sse = 0.0
            for z0 in range(0, space[0], step):
                z1 = min(space[0], z0 + step)
                d = pred_slab(z0, z1).astype(np.float64) - ref_slab(z0, z1)
                sse += float(np.vdot(d.ravel(), d.ravel()))
            sse_total += sse
            n = math.prod(space) * self.channels
            psnrs.append(_psnr_from_mse(sse / n, self.data_range))
            if ssim:
                per_channel = [ssim_volume(lambda a, b, c=c: pred_slab(a, b)[..., c],
                                           lambda a, b, c=c: ref_slab(a, b)[..., c], space[0],
                                           data_range=self.data_range, slab=max(8, SSIM_SLAB_VALUES // plane))
                               for c in range(self.channels)]
                ssims.append(float(np.mean(per_channel)))
        out = {"psnr": _psnr_from_mse(sse_total / (math.prod(self.shape) * self.channels), self.data_range)}
        if ssim:
            out["ssim"] = float(np.mean(ssims))
        if timed:
            out["psnr_mean"] = float(np.mean(psnrs))
            out["psnr_per_frame"] = [float(v) for v in psnrs]
            if ssim:
                out["ssim_per_frame"] = [float(v) for v in ssims]
        return out

    def describe(self) -> dict:
        return {**super().describe(), "source_axes": self.source_axes, "dtype": self.dtype,
                "layout": self.layout, "world_from_normalized": self.world_from_normalized().tolist()}

    def world_from_normalized(self) -> np.ndarray:
        """4x4 map from the field's normalized spatial coordinates ``(z, y, x)`` to voxel indices ``(x, y, z)``.

        Meshes extracted from a volume field come out in voxel units, x first.
        """
        from finr3d.placement import voxel_frame

        return voxel_frame(self.shape)


# ---------------------------------------------------------------------------
# The Tucker rank a PSNR goal needs
# ---------------------------------------------------------------------------

#: Uniform Tucker ranks whose HOSVD bounds a goal's message and history report; the largest sets how big the
#: goal's core may grow (``max(GOAL_RANKS)**3`` values, each mode capped at its size), while the ranks themselves
#: are per mode (:func:`_allocate_ranks`). 128^3 is the largest measured: on a 192 x 160 x 128 CT-like phantom
#: a rank-128 Tucker with a per-sample cosine basis reaches 39.3 dB in 2000 steps (its best file 39.0 dB),
#: where the preset's rank 48 holds 24.4 dB (benchmarks/volume_ct_phantom.py, RESULTS.md 'A CT-like volume');
#: its 2.1M-value core already takes 12 steps a second on one core, and a larger one fits slower still.
GOAL_RANKS = (48, 64, 96, 128)
#: Head room over the goal that the HOSVD bound must show: quantization and the networks' fit lose some. 2 dB,
#: not the 1 dB of the eighth session: on the CT-like phantom the files at 30 / 35 / 40 dB are 0-9 % smaller with
#: it, and at 45 dB the 1-dB ranks missed the goal (best file 44.8 dB) where the 2-dB ranks reach it in 0.89-0.90x
#: SZ3's bytes (tenth session; RESULTS.md 'A CT-like volume').
GOAL_MARGIN_DB = 2.0
#: Adam steps a goal's fit takes after its start when that start is the HOSVD truncation of every voxel (a
#: cosine basis as long as each axis reads the factors out exactly: :func:`finr3d.closed_form.closed_form_start`).
#: None at all: a field that holds any factor curve on the samples can only gain what a better Tucker of the same ranks
#: holds (HOOI over HOSVD, tenths of a dB), and Adam did not find it. The 2000 steps after such a start never
#: passed it: the CT-like phantom at 40 dB (42.61 dB, the start), the 4-D clip (51.18 dB), and a 512 x 512 x 160
#: CT-like volume at ranks (66, 186, 170) (35.46 dB of validation, 139 s for nothing; eleventh session).
GOAL_STEPS_AFTER_EXACT_START = 0
#: How far over the spectrum's ceiling (:func:`hosvd_psnr_bounds` with ``ceiling``) a goal may be before the fit
#: is refused up front: clipping to the value range can lift a field a little above the ceiling.
CLIP_SLACK_DB = 1.0


def _mode_tails(values: torch.Tensor) -> tuple[list[torch.Tensor], int]:
    """Per space mode of ``values`` (N_0, ..., N_{d-1}, C), centred: ``tails[r]`` = the sum of the Gram matrix's
    eigenvalues from the r-th on (what a rank-r truncation of that unfolding leaves out); and the value count."""
    x = values.double()  # one float64 copy (128 MiB for the 256^3 sub-lattice of a large volume), centred in place
    x -= x.mean()
    grams = []
    for m in range(x.ndim - 1):
        mat = torch.movedim(x, m, 0).reshape(x.shape[m], -1)
        grams.append(mat @ mat.T)
    return _tails_from_grams(grams), x.numel()


def _tails_from_grams(grams: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``tails[m][r]``: the sum of mode ``m``'s Gram eigenvalues from the r-th on (float64, one more entry than
    the mode's size, the last 0)."""
    tails = []
    for g in grams:
        ev = torch.linalg.eigvalsh(g.double()).clamp_min(0)  # ascending
        tails.append(torch.cat([ev.cumsum(0).flip(0), ev.new_zeros(1)]))
    return tails


def _tail_psnr(sse: float, n: int) -> float:
    return float("inf") if sse <= 0 else 10 * math.log10(n / sse)


def _tails_psnr(tails: list[torch.Tensor], n: int, rank: int, combine=sum) -> float:
    """PSNR of the per-mode tails at ``rank`` in every mode, summed (the HOSVD guarantee) or their largest
    (``combine=max``)."""
    return _tails_psnr_at(tails, n, [rank] * len(tails), combine)


def hosvd_psnr_bounds(values: torch.Tensor, ranks: Sequence[int], *, ceiling: bool = False) -> dict[int, float]:
    """Guaranteed PSNR (peak 1) of a truncated HOSVD of ``values`` (N_0, ..., N_{d-1}, C) at each uniform rank,
    or with ``ceiling`` the most that any Tucker of that rank can reach.

    The squared error of a truncated HOSVD is at most the sum over modes of the discarded eigenvalues of each
    mode's Gram matrix (De Lathauwer et al. 2000, property 10): that is the bound, one symmetric eigensolve per
    mode and no reconstruction, 0.4-3 dB below the true truncation on the shared volumes and the CT-like
    phantom. No rank-r Tucker, HOSVD or not, has a smaller error than the largest of those per-mode sums (each
    unfolding of it has rank r: Eckart-Young), the ceiling; it is at most 10 log10(3) = 4.8 dB above the bound
    (take rank r + 1 for a Tucker plus a constant, as a field is).
    Both hold before predictions are clipped to the value range, which can only lower the error a little.
    The channel mode is kept whole, as :func:`finr3d.closed_form.hosvd` does.
    """
    tails, n = _mode_tails(values)
    combine = max if ceiling else sum
    return {int(r): _tails_psnr(tails, n, r, combine) for r in ranks}


def goal_rank(target, psnr_goal: float, *, ranks: Sequence[int] = GOAL_RANKS, margin: float = GOAL_MARGIN_DB,
              max_samples: Optional[int] = None) -> Optional[dict]:
    """Field settings a 3-D volume fit needs for a PSNR goal its preset's rank cannot reach, or None.

    Only a target on the 3-D volume preset (a Tucker) is considered. The HOSVD bound
    (:func:`hosvd_psnr_bounds`; on every stored voxel, :meth:`VolumeTarget.mode_grams`, as the closed-form
    start of the goal's field decomposes it, up to :data:`EVERY_SAMPLE_LIMIT` values; with ``max_samples``, or
    past that limit, on an evenly spaced sub-lattice of at most ``max_samples`` or :data:`SPECTRUM_SAMPLES`) is
    taken at the preset's rank; when it is below ``psnr_goal + margin``, per-mode
    ranks whose bound is not are returned (:func:`_allocate_ranks`: each mode grows where its spectrum pays
    most, within ``max(ranks)**3`` core values; the largest such core when none reaches it), with a cosine basis as
    long as each axis (``basis="grid"``: a few dozen network features cannot hold a hundred jagged singular
    vectors; on the CT-like phantom the HOSVD start keeps 29.0 dB with it and 24.4 dB without) and no nested
    ranks (``nested_ranks=False``: the file keeps the goal's rank, so training its prefixes only costs the full
    rank quality and time). The dict
    also carries the bounds (``bounds``), whether the goal looks reachable (``reachable``) and a one-line
    ``message`` for the user, and ``bound``, the chosen ranks' guarantee. A goal more than :data:`CLIP_SLACK_DB`
    over the ceiling of every Tucker within that core size (:func:`_allocation_ceiling`), which no such fit
    could reach, gives ``{"impossible": True, "ceiling", "message", "settings"}`` instead: a file
    goal is refused before minutes of fitting (``finr3d fit --target-psnr``); an early-stop goal
    (``finr3d.fit(target_metric=...)``) takes ``settings``, the largest core, which comes closest.
    """
    from finr3d.presets import PRESETS

    preset = PRESETS["volume"]
    if getattr(target, "preset", None) is not preset or len(target.shape) != 3:
        return None
    base = int(preset.field["rank"])
    ladder = sorted({base, *(int(r) for r in ranks)})
    every_sample = max_samples is None and target.hosvd_on_every_sample
    if every_sample:
        tails, n = _tails_from_grams(target.mode_grams()), math.prod(target.shape) * target.channels
    else:
        tails, n = _mode_tails(target.dense(max_samples=max_samples or SPECTRUM_SAMPLES)[1])
    bounds = {r: _tails_psnr(tails, n, r) for r in ladder}
    need = float(psnr_goal) + margin
    if bounds[base] >= need:
        return None
    higher = [r for r in ladder if r > base]
    if not higher:
        return None
    top = higher[-1]
    sizes = [len(t) - 1 for t in tails]  # the lattice the spectrum saw: no mode's rank can pass it
    cap = math.prod(min(top, m) for m in sizes)  # core values of a uniform rank-`top` Tucker: the compute limit
    ceiling = _allocation_ceiling(tails, n, cap)
    if psnr_goal > ceiling + CLIP_SLACK_DB:
        at_cap = _allocate_ranks(tails, 0.0, cap)
        # ``settings``: the closest a fit can come (what an early-stop goal of finr3d.fit takes; the CLI refuses)
        return {"impossible": True, "ceiling": round(ceiling, 3), "settings": _goal_settings(at_cap, every_sample),
                "message": f"no Tucker of at most {top}^3 core values can reach {psnr_goal:g} dB on this volume: "
                           f"its spectrum caps every such field at {ceiling:.1f} dB (Eckart-Young on each mode); "
                           f"ask for less with --target-psnr (ranks {list(at_cap)} guarantee "
                           f"{_tails_psnr_at(tails, n, at_cap):.1f} dB), or give --rank yourself"}
    pick = _allocate_ranks(tails, n / 10 ** (need / 10), cap)
    pick_bound = _tails_psnr_at(tails, n, pick)
    reachable = pick_bound >= need
    bound = "exact: full rank" if math.isinf(pick_bound) else f"bound {pick_bound:.1f} dB"
    message = (f"at rank {base} an HOSVD guarantees only {bounds[base]:.1f} dB on this volume (its error bound); "
               f"fitting ranks {list(pick)} with a cosine basis per sample ({bound})")
    if not reachable:
        message += (f": below {psnr_goal:g} dB + {margin:g} dB head room, so the goal will likely be missed; "
                    "this volume is not low-rank (a lower --target-psnr, or --rank to go higher)")
    return {"settings": _goal_settings(pick, every_sample),
            # JSON has no infinity: an exact (full-rank) bound is written as null
            "bounds": {str(k): (None if math.isinf(v) else round(v, 3)) for k, v in bounds.items()},
            "bound": None if math.isinf(pick_bound) else round(pick_bound, 3),
            "reachable": reachable, "message": message}


def _goal_settings(ranks: Sequence[int], exact: bool) -> dict:
    # no nested ranks: the rank is the goal's, so the file keeps it whole, and nested steps cost the full rank
    # quality (the CT-like phantom at rank 128: validation 39.3 dB with them, 40.8 dB without, in 2000 steps)
    settings = {"decomposition": "tucker", "rank": tuple(int(r) for r in ranks), "basis": "grid",
                "nested_ranks": False}
    if exact:
        settings["steps"] = GOAL_STEPS_AFTER_EXACT_START
    return settings


def goal_overrides(settings: dict, given) -> dict:
    """The goal ``settings`` (:func:`goal_rank`) that what the caller set (the keys in ``given``) leaves: anything
    set wins, one key at a time, and a budget in seconds also keeps the goal from setting the steps (the two are
    one budget)."""
    given = set(given)
    return {k: v for k, v in settings.items() if k not in given and not (k == "steps" and "seconds" in given)}


def _tails_psnr_at(tails: list[torch.Tensor], n: int, ranks: Sequence[int], combine=sum) -> float:
    """PSNR of the per-mode tails at per-mode ``ranks``, summed (the HOSVD guarantee) or their largest."""
    return _tail_psnr(float(combine(t[min(int(r), len(t) - 1)] for t, r in zip(tails, ranks))), n)


def _allocate_ranks(tails: list[torch.Tensor], sse: float, cap: int) -> tuple[int, ...]:
    """Per-mode Tucker ranks for a squared-error goal ``sse`` (of the summed per-mode tails, the HOSVD bound):
    from rank 1 in every mode, one mode at a time grows by one, the mode whose tail falls most per value the
    core and its factor add, until the bound holds or no mode can grow without passing ``cap`` core values.

    Modes differ: on the CT-like phantom (z, y, x = 128, 160, 192) a 41-dB bound takes ranks (54, 106, 143),
    0.87M values, where one rank for every mode needs (128, 129, 129), 2.2M.
    """
    ev = [t.double().tolist() for t in tails]
    sizes = [len(t) - 1 for t in ev]
    ranks = [1] * len(ev)
    err = sum(t[1] for t in ev)
    while err > sse:
        best, best_gain = None, -1.0
        core = math.prod(ranks)
        for m, t in enumerate(ev):
            if ranks[m] >= sizes[m] or core // ranks[m] * (ranks[m] + 1) > cap:
                continue
            gain = (t[ranks[m]] - t[ranks[m] + 1]) / (core // ranks[m] + sizes[m])  # per core slab + factor column
            if gain > best_gain:
                best, best_gain = m, gain
        if best is None:
            break
        err -= ev[best][ranks[best]] - ev[best][ranks[best] + 1]
        ranks[best] += 1
    return tuple(ranks)


def _allocation_ceiling(tails: list[torch.Tensor], n: int, cap: int) -> float:
    """The most any Tucker (plus a constant) of at most ``cap`` core values can reach, as PSNR: each unfolding
    of a rank-(r_0, r_1, ...) field around its mean has rank r_m + 1, so its error is at least the largest
    per-mode tail at r_m + 1 (Eckart-Young); minimised over every allocation within ``cap``."""
    ev = [t.double() for t in tails]

    def need(t: torch.Tensor, tau: float) -> int:  # the least r with tail(r + 1) <= tau
        ok = torch.nonzero(t <= tau).flatten()
        return max(1, int(ok[0]) - 1) if len(ok) else len(t)

    best = math.inf
    for tau in sorted({float(v) for t in ev for v in t}):
        if math.prod(need(t, tau) for t in ev) <= cap:
            best = tau
            break
    return _tail_psnr(best, n) if math.isfinite(best) else -math.inf


def _psnr_from_mse(mse: float, data_range: float) -> float:
    return float("inf") if mse <= 0 else 10.0 * math.log10(data_range**2 / mse)


def _min_max(arr: np.ndarray, chunk: int = 1 << 24) -> tuple[float, float]:
    """Min and max of a (possibly memory-mapped) array, a chunk at a time (no full float copy)."""
    flat = arr.reshape(-1) if arr.flags.c_contiguous or arr.flags.f_contiguous else None
    if flat is None:
        return float(arr.min()), float(arr.max())
    lo, hi = math.inf, -math.inf
    for s in range(0, flat.size, chunk):
        part = flat[s:s + chunk]
        lo, hi = min(lo, float(part.min())), max(hi, float(part.max()))
    return lo, hi


# ---------------------------------------------------------------------------
# One frame of a time-varying field
# ---------------------------------------------------------------------------

class frame_field:  # noqa: N801 - used like a function: frame_field(field, t)
    """The 3-D field of one instant of a time-varying volume field (for meshing and slicing).

    ``frame_field(field, t).grid(coords)`` evaluates ``field`` at time ``t``
    (a stored frame index, fractional values interpolate in the field's own
    continuous time) on spatial ``(z, y, x)`` coordinates; ``target_info``
    describes the 3-D volume, so :func:`finr3d.meshing.extract_mesh` works on it.
    """

    def __init__(self, field, t: float):
        info = dict(field.target_info or {})
        shape = [int(s) for s in info.get("shape") or []]
        if field.ndim != 4 or len(shape) != 4:
            raise InputError(f"frame_field needs a time-varying (t, z, y, x) field, got a {field.ndim}-D one")
        n_t = shape[0]
        if not 0 <= float(t) <= n_t - 1:
            raise InputError(f"frame {t} is outside the field's frames 0..{n_t - 1}")
        self.field, self.t = field, float(t)
        self.tc = torch.tensor([-1.0 + 2.0 * self.t / (n_t - 1)], dtype=torch.float32)
        self.ndim, self.channels = 3, field.channels
        self.kind = "volume"
        info["shape"] = shape[1:]
        info["axis_names"] = ["z", "y", "x"]
        self.target_info = info

    def grid(self, coords, rank=None, *, squeeze: bool = True, **kwargs) -> np.ndarray:
        if isinstance(coords, (int, np.integer)):
            coords = [int(coords)] * 3
        if all(isinstance(c, (int, np.integer)) for c in coords):
            coords = [lattice(int(n)) for n in coords]
        out = self.field.grid([self.tc] + list(coords), rank=rank, squeeze=False, **kwargs)[0]
        return out[..., 0] if squeeze and self.channels == 1 else out


def iso_level(field, level: Optional[float] = None, fraction: Optional[float] = None) -> float:
    """An iso-value in the source's units: ``level`` itself, or ``lo + fraction (hi - lo)`` of the value range."""
    if level is not None and fraction is not None:
        raise InputError("give level or fraction, not both")
    if level is not None:
        return float(level)
    info = field.target_info or {}
    lo, scale = float(info.get("value_offset", 0.0)), float(info.get("value_scale", 1.0))
    f = 0.5 if fraction is None else float(fraction)
    if not 0.0 <= f <= 1.0:
        raise InputError(f"the level fraction must be in [0, 1] of the value range, got {fraction}")
    return lo + f * scale


def volume_mesh(field, *, resolution=None, level: Optional[float] = None, fraction: Optional[float] = None,
                frame: Optional[float] = None, rank=None):
    """The iso-surface of a volume field (at frame ``frame`` of a time-varying one) as a mesh in voxel units.

    Parameters
    ----------
    field : FactorizedField of kind ``"volume"``, 3-D ``(z, y, x)`` or 4-D ``(t, z, y, x)``
    resolution : int, optional
        Marching-cubes samples per axis (default: the stored samples of each axis).
    level, fraction : float, optional
        Iso-value in the source's units, or as a fraction of its value range (default: half way).
    frame : float, optional
        Frame of a time-varying field (stored frame index; fractions interpolate). Required for 4-D fields.
    rank : optional rank prefix.

    Returns
    -------
    trimesh.Trimesh
        Vertices in voxel indices, x first (``world_from_normalized``), faces wound so normals point
        toward lower values (out of the dense region). Raises ``RuntimeError`` when no surface is there.
    """
    from finr3d.meshing import extract_mesh

    if getattr(field, "kind", None) != "volume":
        raise InputError(f"volume_mesh needs a volume field, got a {getattr(field, 'kind', None)} field")
    value = iso_level(field, level, fraction)
    if field.ndim == 4:
        if frame is None:
            raise InputError("a time-varying volume field needs a frame to mesh")
        field = frame_field(field, frame)
    elif frame not in (None, 0):
        raise InputError("frame applies to time-varying volume fields; this one is 3-D")
    shape = [int(s) for s in (field.target_info or {}).get("shape", [64] * 3)][-3:]
    res = shape if resolution is None else int(resolution)
    mesh = extract_mesh(field, res, rank=rank, level=value)
    mesh.invert()  # extract_mesh winds normals toward higher values (out of an SDF); a density's outside is lower
    return mesh
