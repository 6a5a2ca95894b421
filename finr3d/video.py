"""Video fields: :class:`VideoTarget` fits clips (video files or folders of frames).

A clip is a ``(T, H, W, C)`` array with axes ``(t, y, x)`` and values in
``[0, 1]``. :class:`VideoTarget` keeps the decoded frames at their stored
integer type (uint8 for ordinary video, 4x smaller than float32) and converts
only the sub-grids a fit asks for, so a long clip costs its decoded size once.

Reading and writing clips (:func:`read_video`, :func:`write_video`) live in
:mod:`finr3d.video_io` and are re-exported here.
"""

from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import numpy as np
import torch

from finr3d.errors import InputError
from finr3d.presets import VIDEO_MAX_RANK, VIDEO_MIN_RATIO, default_video_rank  # noqa: F401 (public here too)
from finr3d.targets import (DEVICE_GRID_BYTES, PIXEL_LEVELS, GridTarget, Target, check_finite, even_indices, lattice,
                            lerp_axes, psnr, ssim, to_pixels)
from finr3d.video_io import (MAX_VIDEO_VALUES, _FrameWindow, _resize_frame, _resize_spec, read_video,  # noqa: F401
                             write_video)

__all__ = [
    "VideoTarget",
    "read_video",
    "write_video",
    "sample_stored_grid",
    "MODE_LAYOUTS",
    "default_video_rank",
]

#: Axis groupings a video field can use; axes are (t, y, x) = (0, 1, 2).
#: ``xy+t``: one network over the image plane and one over time; ``x+y+t``: one
#: network per axis. x+y+t is the default: its CP field reads a cosine basis as
#: long as each axis (``basis='grid'``), so CP-ALS of the clip moves into the
#: networks without loss and the fit is CP-ALS sweeps read out as they go
#: (benchmarks/RESULTS.md, "Video"). xy+t has no such start, because a network over the
#: image plane cannot take hundreds of factor images from a readout.
MODE_LAYOUTS: dict[str, list[tuple[int, ...]]] = {
    "xy+t": [(1, 2), (0,)],
    "x+y+t": [(0,), (1,), (2,)],
}


#: Values per chunk when a field is decoded frame by frame for scoring.
EVAL_CHUNK_VALUES = 1 << 24



# ---------------------------------------------------------------------------
# Sub-grids of a stored integer grid
# ---------------------------------------------------------------------------

def sample_stored_grid(data: torch.Tensor, coords: Sequence[torch.Tensor], levels: float = 1.0) -> torch.Tensor:
    """Multilinear interpolation of a stored (possibly integer) grid, divided by ``levels``.

    The same values as :func:`finr3d.targets.interpolate_subgrid` on
    ``data / levels``, but only the samples the sub-grid touches are converted
    to float: at most ``Π min(2 n_i, N_i) C`` values, and exactly ``Π n_i C``
    when every coordinate falls on a stored sample (the usual training step).

    Parameters
    ----------
    data : (N_0, ..., N_{d-1}, C) tensor, any real dtype
        Samples at ``lattice(N_i)`` along each axis.
    coords : d tensors, (n_i,) float, normalized in [-1, 1]
        Coordinates along each axis; values outside are clamped.
    levels : float
        Divisor mapping stored values to the signal (255 for uint8, 65535 for uint16).

    Returns
    -------
    (n_0, ..., n_{d-1}, C) float32 tensor
    """
    plans = []
    sub = data
    for axis, c in enumerate(coords):
        n = data.shape[axis]
        c = torch.as_tensor(c).to(data.device, torch.float32).reshape(-1)
        if n == 1:
            sub = sub.index_select(axis, torch.zeros(len(c), dtype=torch.long, device=data.device))
            plans.append(None)
            continue
        pos = (c.clamp(-1, 1) + 1) * 0.5 * (n - 1)
        snapped = pos.round()
        on_lattice = (pos - snapped).abs() < 1e-4
        if bool(on_lattice.all()):
            sub = sub.index_select(axis, snapped.long())
            plans.append(None)
            continue
        pos = torch.where(on_lattice, snapped, pos)
        i0 = pos.floor().long().clamp_(0, n - 2)
        w = (pos - i0).clamp_(0, 1)
        # gather the union of both neighbours once, then interpolate in float
        need, inverse = torch.unique(torch.cat([i0, i0 + 1]), sorted=True, return_inverse=True)
        sub = sub.index_select(axis, need)
        plans.append((inverse[: len(i0)], inverse[len(i0):], w))
    out = sub.to(torch.float32)
    if levels != 1.0:
        out = out / float(levels)
    return lerp_axes(out, plans)


# ---------------------------------------------------------------------------
# The target
# ---------------------------------------------------------------------------

class VideoTarget(GridTarget):
    """A video clip ``(T, H, W, C)`` with axes ``(t, y, x)`` and values in [0, 1].

    Frames are kept at their stored type (uint8/uint16; float32 for float
    arrays) and sub-grids are converted on demand by :meth:`sample`, so no
    float copy of the whole clip is made. World bounds are source frame
    indices along t and pixels along y and x.

    Parameters
    ----------
    source : path or array
        A video file, a folder of frames, or a (T, H, W[, C]) array
        (uint8, uint16, or float in [0, 1]).
    frames : (start, stop), optional
        Source frame range, stop exclusive.
    stride : int
        Keep every ``stride``-th frame.
    max_frames : int, optional
        Keep at most this many frames.
    resize : (H, W) or float, optional
        Frame size, or a scale factor of the source size.
    layout : x+y+t | xy+t
        Axis grouping of a field fitted to this clip: one network per axis
        (default), or one over the image plane and one over time.
    fps : float, optional
        Source frame rate (default: from the file, 25 for folders and arrays).
    backend : auto | pyav | ffmpeg
        Video file decoder.
    """


    def __init__(self, source, *, frames: Optional[tuple] = None, stride: int = 1, max_frames: Optional[int] = None,
                 resize=None, layout: str = "x+y+t", fps: Optional[float] = None, backend: str = "auto",
                 max_values: int = MAX_VIDEO_VALUES):
        if layout not in MODE_LAYOUTS:
            raise InputError(f"unknown video layout {layout!r}; use one of {sorted(MODE_LAYOUTS)}")
        window = _FrameWindow(frames, stride, max_frames)
        if isinstance(source, (str, os.PathLike)):
            arr, rate = read_video(source, frames=frames, stride=stride, max_frames=max_frames, resize=resize,
                                   fps=fps, backend=backend, max_values=max_values)
            name = str(source)
        else:
            arr, name = _array_clip(np.asarray(source), window, resize), "<array>"
            rate = (float(fps) if fps is not None else 25.0) / window.stride
        if arr.ndim != 4 or min(arr.shape[:3]) < 2:
            raise InputError(f"{name}: a video needs at least 2 frames of at least 2x2 pixels, got shape "
                             f"{arr.shape} (T, H, W, C); fit a single frame as an image")
        if arr.size > max_values:
            raise InputError(f"{name}: {arr.size:,} values is more than {max_values:,}; crop, stride or resize it")
        t, h, w = arr.shape[:3]
        self.kind = "video"
        self.axis_names = ("t", "y", "x")
        self.shape = (int(t), int(h), int(w))
        self.channels = int(arr.shape[-1])
        self.value_offset, self.value_scale = 0.0, 1.0
        first, step = window.start, window.stride
        self.bounds = np.asarray([[first, first + step * (t - 1)], [0, h - 1], [0, w - 1]], float)
        self.source = name
        self.fps = float(rate)
        self.layout = layout
        # share of the budget a CP field with an exact readout spends sweeping CP-ALS: all of it, or half when
        # the sweeps see a sub-lattice of this clip, leaving half to refine on sub-grids of every stored sample
        self.sweep_fraction = 1.0 if math.prod(self.shape) <= self.preset.closed_form_samples else 0.5
        self.frame_start, self.frame_stride = first, step
        self.levels = PIXEL_LEVELS.get(arr.dtype, 1.0)
        self.bit_depth = 16 if arr.dtype == np.uint16 else 8
        self.frames = torch.from_numpy(np.ascontiguousarray(arr))

    @classmethod
    def for_field(cls, source, info: dict, **options) -> "VideoTarget":
        """The clip a field was fitted to, re-read from ``source`` with the fit's frame window,
        stride and frame size (from ``field.target_info``), e.g. to score a loaded ``.finr``."""
        try:
            t, h, w = (int(v) for v in info["shape"])
            start, stride = int(info.get("frame_start", 0)), int(info.get("frame_stride", 1))
        except (KeyError, TypeError, ValueError):
            raise InputError("the field does not describe a video fit (target_info has no 3-axis shape)") from None
        options.setdefault("layout", info.get("layout", "xy+t"))
        return cls(source, frames=(start, start + stride * (t - 1) + 1), stride=stride, resize=(h, w), **options)

    # --- the Target interface ------------------------------------------------
    @property
    def default_modes(self) -> list[tuple[int, ...]]:
        return list(MODE_LAYOUTS[self.layout])

    @property
    def data(self) -> torch.Tensor:
        """The whole clip as float32 (T, H, W, C); allocates 4 bytes a value, prefer :meth:`sample`."""
        return self.frames.to(torch.float32) / float(self.levels)

    def sample(self, coords):
        return sample_stored_grid(self.frames, coords, self.levels)

    def sampler(self, device):
        """:meth:`sample` on a copy of the stored frames on ``device`` (kept at their stored type)."""
        device = torch.device(device)
        nbytes = self.frames.element_size() * self.frames.nelement()
        if device == self.frames.device or nbytes > DEVICE_GRID_BYTES:
            return Target.sampler(self, device)  # not GridTarget's: it would read the float copy `data`
        frames = self.frames.to(device)
        return lambda coords: sample_stored_grid(frames, coords, self.levels)

    def sample_indices(self, indices):
        out = self.frames
        for axis, idx in enumerate(indices):
            out = out.index_select(axis, torch.as_tensor(idx, dtype=torch.long).cpu())
        return out.to(torch.float32) / float(self.levels)

    def dense(self, max_samples: int = 256**3):
        """Stored samples on an evenly spaced index sub-lattice of at most ``max_samples`` samples.

        Unlike the base class, a subsampled grid keeps exact stored frames and
        pixels (no interpolation), so validation PSNR is measured on real data.
        """
        idx = even_indices(self.shape, max_samples)
        coords = [lattice(n)[i] for n, i in zip(self.shape, idx)]
        return coords, self.sample_indices(idx)

    def evaluate(self, field, rank=None) -> dict:
        """PSNR and SSIM per frame (values clipped to [0, 1]) and their means.

        The field is decoded a chunk of frames at a time, so memory stays
        bounded by :data:`EVAL_CHUNK_VALUES` whatever the clip's length.

        Returns
        -------
        dict
            ``psnr`` and ``ssim`` (means over frames, dB and unitless),
            ``psnr_per_frame`` and ``ssim_per_frame`` (lists of T floats).
        """
        t, h, w = self.shape
        fitted = (getattr(field, "target_info", None) or {}).get("shape")
        if fitted is not None and tuple(int(v) for v in fitted) != self.shape:
            raise InputError(
                f"the field was fitted to {'x'.join(map(str, fitted))} (T x H x W) frames but this clip is "
                f"{t}x{h}x{w}; read the same frames, stride and size (VideoTarget.for_field(path, field.target_info))"
            )
        per_frame = h * w * self.channels
        chunk = max(4, EVAL_CHUNK_VALUES // per_frame)
        ys, xs, ts = lattice(h), lattice(w), lattice(t)
        psnrs, ssims = [], []
        for start in range(0, t, chunk):
            stop = min(t, start + chunk)
            pred = field.grid([ts[start:stop], ys, xs], rank=rank, squeeze=False)
            pred = np.clip(self.to_values(np.asarray(pred, np.float32)), 0.0, 1.0)
            ref = self.sample_indices([torch.arange(start, stop), torch.arange(h), torch.arange(w)]).numpy()
            for p, r in zip(pred, ref):
                psnrs.append(psnr(p, r))
                ssims.append(ssim(p, r, channel_axis=-1))
        return {
            "psnr": float(np.mean(psnrs)),
            "ssim": float(np.mean(ssims)),
            "psnr_per_frame": [float(v) for v in psnrs],
            "ssim_per_frame": [float(v) for v in ssims],
        }

    def describe(self) -> dict:
        return {**super().describe(), "fps": self.fps, "bit_depth": self.bit_depth, "layout": self.layout,
                "frame_start": self.frame_start, "frame_stride": self.frame_stride}

    def to_array(self, pred: np.ndarray) -> np.ndarray:
        """Field output (T, H, W, C) to frames of the source's bit depth."""
        return to_pixels(self.to_values(pred), self.bit_depth)


def _array_clip(arr: np.ndarray, window: _FrameWindow, resize) -> np.ndarray:
    """Validate a (T, H, W[, C]) array and apply the frame window and resize."""
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 2, 3, 4):
        raise InputError(f"expected a (T, H, W[, 1|3|4]) clip, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        check_finite(arr, "the clip")
        if arr.size and (arr.min() < 0 or arr.max() > 1):
            raise InputError(f"float clip values must lie in [0, 1], got [{arr.min():.4g}, {arr.max():.4g}]; "
                             "rescale it or pass uint8")
        arr = arr.astype(np.float32, copy=False)
    elif arr.dtype not in PIXEL_LEVELS:
        raise InputError(f"unsupported clip type {arr.dtype}; use uint8, uint16 or float in [0, 1]")
    stop = window.stop if window.stop is not None else arr.shape[0]
    arr = arr[window.start:stop:window.stride]
    if window.max_frames is not None:
        arr = arr[:window.max_frames]
    if arr.shape[0] == 0:
        raise InputError(f"{window.describe()} selects no frames of a {arr.shape[0]}-frame clip")
    size = _resize_spec(resize, arr.shape[1], arr.shape[2])
    if size is not None:
        arr = np.stack([_resize_frame(f, size) for f in arr])
    return arr
