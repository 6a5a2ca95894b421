"""Video: read clips (video files or folders of frames), fit them, write decoded clips.

A clip is a ``(T, H, W, C)`` array with axes ``(t, y, x)`` and values in
``[0, 1]``. :class:`VideoTarget` keeps the decoded frames at their stored
integer type (uint8 for ordinary video, 4x smaller than float32) and converts
only the sub-grids a fit asks for, so a long clip costs its decoded size once.

Files are read with PyAV when it is installed (``pip install 'finr3d[video]'``)
and otherwise through the ffmpeg binary bundled with imageio-ffmpeg; both read
mp4, webm, avi, mov, mkv and gif. A folder of frames (png, jpg, ...) is read in
natural order (``frame2`` before ``frame10``).

:func:`write_video` writes a clip as H.264 mp4, VP9 webm, MPEG-4 avi, gif or
PNG frames; it is what ``finr3d decode clip.finr -o clip.mp4`` calls.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import re
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch

from finr3d.errors import InputError
from finr3d.files import atomic_folder, atomic_write
from finr3d.presets import VIDEO_MAX_RANK, VIDEO_MIN_RATIO, default_video_rank  # noqa: F401 (public here too)
from finr3d.targets import (DEVICE_GRID_BYTES, IMAGE_SUFFIXES, PIXEL_LEVELS, VIDEO_SUFFIXES, GridTarget, Target,
                            check_finite, even_indices, lattice, psnr, read_image, ssim, to_pixels, write_png)

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

#: Most decoded values a clip may hold (2 GiB at uint8); beyond it the user is
#: asked to read a frame range, a stride or a smaller size.
MAX_VIDEO_VALUES = 1 << 31

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
    for axis, plan in enumerate(plans):
        if plan is None:
            continue
        lo_idx, hi_idx, w = plan
        shape = [1] * out.dim()
        shape[axis] = -1
        out = torch.lerp(out.index_select(axis, lo_idx), out.index_select(axis, hi_idx), w.view(shape))
    return out


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------

class _FrameWindow:
    """Which source frames to keep: ``range(start, stop, stride)``, at most ``max_frames``."""

    def __init__(self, frames, stride, max_frames):
        if frames is None:
            start, stop = 0, None
        else:
            try:
                start, stop = frames
                start = int(start)
                stop = None if stop is None else int(stop)
            except (TypeError, ValueError):
                raise InputError(f"frames must be (start, stop) frame indices, got {frames!r}") from None
            if start < 0 or (stop is not None and stop <= start):
                raise InputError(f"frames=({start}, {stop}) is empty or negative; use 0 <= start < stop")
        if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
            raise InputError(f"stride must be a positive integer, got {stride!r}")
        if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer))
                                       or max_frames < 1):
            raise InputError(f"max_frames must be a positive integer, got {max_frames!r}")
        self.start, self.stop, self.stride = start, stop, int(stride)
        self.max_frames = None if max_frames is None else int(max_frames)

    def wants(self, i: int) -> bool:
        return i >= self.start and (i - self.start) % self.stride == 0

    def finished(self, i: int, kept: int) -> bool:
        """True once frame ``i`` and every later frame would be skipped."""
        return (self.stop is not None and i >= self.stop) or (self.max_frames is not None and kept >= self.max_frames)

    def describe(self) -> str:
        return f"frames=({self.start}, {self.stop}), stride={self.stride}"


def _resize_spec(resize, h: int, w: int) -> Optional[tuple[int, int]]:
    """``resize`` as (H, W): a pair of sizes, or a scale factor applied to the source size."""
    if resize is None:
        return None
    if isinstance(resize, (int, float, np.integer, np.floating)) and not isinstance(resize, bool):
        scale = float(resize)
        if not 0 < scale <= 8:
            raise InputError(f"resize scale must be in (0, 8], got {resize!r}")
        size = (max(1, int(round(h * scale))), max(1, int(round(w * scale))))
    else:
        try:
            size = tuple(int(s) for s in resize)
        except (TypeError, ValueError):
            raise InputError(f"resize must be (height, width) or a scale factor, got {resize!r}") from None
        if len(size) != 2:
            raise InputError(f"resize must be (height, width) or a scale factor, got {resize!r}")
    if min(size) < 2 or max(size) > 16384:
        raise InputError(f"resize gives {size[0]}x{size[1]} frames; each side must be between 2 and 16384")
    return None if size == (h, w) else size


def _resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an (H, W, C) frame, antialiased when shrinking; keeps the dtype."""
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].to(torch.float32)
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)[0].permute(1, 2, 0)
    if frame.dtype.kind in "ui":
        y = y.round().clamp(0, float(np.iinfo(frame.dtype).max))
    return y.numpy().astype(frame.dtype)


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _iter_pyav(path: Path) -> Iterator:
    """Yield the frame rate, then one loader per decoded frame returning (H, W, 3) uint8."""
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise InputError(f"{path.name}: cannot open the video ({exc}); is it a valid {path.suffix} file?") from exc
    with container:
        if not container.streams.video:
            raise InputError(f"{path.name}: the file holds no video stream (zero frames)")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        yield float(rate) if rate else None
        for frame in container.decode(stream):
            # converting to RGB is deferred: frames outside the window are never converted
            yield lambda f=frame: f.to_ndarray(format="rgb24")


def _iter_ffmpeg(path: Path) -> Iterator:
    """Yield the frame rate, then one loader per frame returning (H, W, 3) uint8, via imageio-ffmpeg's ffmpeg."""
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        try:
            meta = next(gen)
        except (OSError, RuntimeError, StopIteration) as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{path.name}: cannot open the video ({detail}); is it a valid {path.suffix} file "
                             "with a video stream?") from exc
        w, h = meta["size"]
        yield meta.get("fps")
        for buf in gen:
            yield lambda b=buf: np.frombuffer(b, np.uint8).reshape(h, w, 3)
    finally:
        gen.close()  # stops the ffmpeg process when reading ends early


_VIDEO_READERS = {"pyav": _iter_pyav, "ffmpeg": _iter_ffmpeg}


def _pick_backend(backend: str) -> str:
    if backend == "auto":
        return "pyav" if importlib.util.find_spec("av") is not None else "ffmpeg"
    if backend not in _VIDEO_READERS:
        raise InputError(f"unknown video backend {backend!r}; use auto, pyav or ffmpeg")
    if backend == "pyav" and importlib.util.find_spec("av") is None:
        raise InputError("backend='pyav' needs PyAV: pip install 'finr3d[video]' (or use backend='ffmpeg')")
    return backend


def _iter_folder(folder: Path) -> Iterator:
    """Yield None (folders carry no frame rate), then (file name, loader) per frame file."""
    files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                   key=_natural_key)
    if not files:
        raise InputError(f"{folder}: the folder holds no frames (zero frames); put numbered "
                         f"{'/'.join(sorted(s[1:] for s in IMAGE_SUFFIXES))} images in it")
    yield None
    for p in files:
        yield p.name, (lambda p=p: _read_frame_file(p))


def _read_frame_file(p: Path) -> np.ndarray:
    try:
        return read_image(p)
    except Exception as exc:  # the image readers raise many types for broken files
        raise InputError(f"{p.name}: cannot read the frame ({exc}); is it a valid {p.suffix} file?") from exc


def _iter_file(reader, path: Path) -> Iterator:
    """Pass the frame rate through, then (None, loader) per decoded frame."""
    gen = reader(path)
    try:
        yield next(gen)
        for load in gen:
            yield None, load
    except StopIteration:
        return
    finally:
        gen.close()


def read_video(source, *, frames: Optional[tuple] = None, stride: int = 1, max_frames: Optional[int] = None,
               resize=None, fps: Optional[float] = None, backend: str = "auto",
               max_values: int = MAX_VIDEO_VALUES) -> tuple[np.ndarray, float]:
    """Decode a clip from a video file or a folder of frames.

    Parameters
    ----------
    source : path
        A video file (mp4 webm avi mov mkv gif) or a folder of frame images.
    frames : (start, stop), optional
        Source frame range, ``stop`` exclusive (None: to the end).
    stride : int
        Keep every ``stride``-th frame of the range.
    max_frames : int, optional
        Keep at most this many frames.
    resize : (H, W) or float, optional
        Output frame size, or a scale factor of the source size (bilinear, antialiased).
    fps : float, optional
        Frame rate of the source (default: from the file; 25 for frame folders).
    backend : auto | pyav | ffmpeg
        Video file decoder (auto: PyAV when installed).
    max_values : int
        Refuse clips with more decoded values than this.

    Returns
    -------
    frames : (T, H, W, C) uint8 or uint16 array
    fps : float
        Frame rate of the returned clip (source rate / stride).
    """
    window = _FrameWindow(frames, stride, max_frames)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder; check the path")
    if path.is_dir():
        items, name = _iter_folder(path), str(path)
    else:
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise InputError(f"{path.name}: unsupported video type {path.suffix!r}; use one of "
                             f"{sorted(VIDEO_SUFFIXES)} or a folder of frames")
        if path.stat().st_size == 0:
            raise InputError(f"{path.name}: the file is empty (0 bytes)")
        items, name = _iter_file(_VIDEO_READERS[_pick_backend(backend)], path), path.name
    out: list[np.ndarray] = []
    seen = 0
    size = first = None
    with contextlib.closing(items) as it:
        try:
            source_fps = next(it, None)
            for i, (label, load) in enumerate(it):
                seen = i + 1
                if window.finished(i, len(out)):
                    break
                if not window.wants(i):
                    continue  # skipped frame files are never decoded
                frame = _prepare_frame(load(), label or name)
                label = label or f"frame {i}"
                if first is None:
                    first = (label, frame.shape, frame.dtype)
                    size = _resize_spec(resize, *frame.shape[:2])
                elif (frame.shape, frame.dtype) != first[1:]:
                    raise InputError(f"{label}: frame is {_fmt(frame.shape, frame.dtype)} but {first[0]} is "
                                     f"{_fmt(*first[1:])}; all frames must have the same size and channels")
                out.append(frame if size is None else _resize_frame(frame, size))
                if len(out) * out[-1].size > max_values:
                    raise InputError(
                        f"{name}: the clip is larger than {max_values:,} values after {len(out)} frames; "
                        "read less with frames=(start, stop), stride=, max_frames= or resize="
                    )
        except InputError:
            raise
        except Exception as exc:  # decoders raise many types for damaged streams
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{name}: cannot decode frame {seen} ({detail}); the file may be damaged") from exc
    if not out:
        if seen == 0:
            raise InputError(f"{name}: the video holds no frames (zero frames)")
        raise InputError(f"{name}: {window.describe()} selects no frames; the clip has {seen} frames")
    rate = float(fps) if fps is not None else (float(source_fps) if source_fps else 25.0)
    if not (0 < rate < 1e4):
        raise InputError(f"fps must be positive, got {rate}")
    return np.stack(out), rate / window.stride


def _prepare_frame(frame: np.ndarray, name: str) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = frame[..., None]
    if frame.ndim != 3 or frame.shape[-1] not in (1, 2, 3, 4):
        raise InputError(f"{name}: expected an H x W [x 1|3|4] frame, got shape {frame.shape}")
    if frame.dtype not in PIXEL_LEVELS:
        raise InputError(f"{name}: unsupported pixel type {frame.dtype}; use 8- or 16-bit frames")
    return frame


def _fmt(shape, dtype) -> str:
    h, w, c = shape
    return f"{w}x{h} with {c} channel(s) ({dtype})"


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


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------

# codec and ffmpeg output options per container
_FFMPEG_FORMATS = {
    ".mp4": ("libx264", ["-crf", "17", "-preset", "medium", "-movflags", "+faststart"]),
    ".webm": ("libvpx-vp9", ["-crf", "24", "-b:v", "0"]),
    ".avi": ("mpeg4", ["-qscale:v", "2"]),
}


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:
        return (arr // 257).astype(np.uint8)
    return to_pixels(arr, 8)


def _rgb_even(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, C) uint8 to RGB with even H and W (yuv420p), padding by edge replication."""
    c = frames.shape[-1]
    if c in (1, 2):
        frames = np.repeat(frames[..., :1], 3, axis=-1)
    elif c == 4:
        frames = frames[..., :3]
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, [(0, 0), (0, pad_h), (0, pad_w), (0, 0)], mode="edge")
    return np.ascontiguousarray(frames)


def _write_ffmpeg(frames: np.ndarray, path: str, fps: float, suffix: str) -> None:
    import imageio_ffmpeg

    codec, params = _FFMPEG_FORMATS[suffix]
    frames = _rgb_even(frames)
    h, w = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(path, (w, h), fps=fps, codec=codec, pix_fmt_in="rgb24",
                                         pix_fmt_out="yuv420p", quality=None, macro_block_size=1,
                                         ffmpeg_log_level="error", output_params=params)
    writer.send(None)
    try:
        for f in frames:
            writer.send(f)
    finally:
        writer.close()


def _write_gif(frames: np.ndarray, path: str, fps: float) -> None:
    import imageio.v3 as iio

    c = frames.shape[-1]
    if c in (1, 2):  # gray, or gray + alpha, which a GIF cannot hold
        frames = frames[..., 0]
    iio.imwrite(path, frames, extension=".gif", duration=1000.0 / fps, loop=0)


def _frame_names(out: Path, count: int) -> tuple[Path, list[str]]:
    """Folder and file names of PNG frames for ``out`` (a folder, ``name.png`` or a ``%d`` pattern)."""
    digits = max(5, len(str(count - 1)))
    if "%" in out.name:
        try:
            names = [out.name % i for i in range(count)]
        except (TypeError, ValueError):
            raise InputError(f"{out.name}: a frame pattern needs one integer field such as %05d") from None
        if len(set(names)) != count:
            raise InputError(f"{out.name}: the pattern gives the same name to several frames; use e.g. %05d")
        return out.parent, names
    folder = out.with_suffix("") if out.suffix.lower() == ".png" else out
    return folder, [f"frame_{i:0{digits}d}.png" for i in range(count)]


def _write_png_frames(frames: np.ndarray, out: Path) -> Path:
    folder, names = _frame_names(out, len(frames))
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} exists and is not a folder; choose another output name")
    if "%" in out.name or folder.exists():
        # into an existing folder: one atomic write per frame
        folder.mkdir(exist_ok=True)
        for f, n in zip(frames, names):
            atomic_write(folder / n, lambda tmp, f=f: write_png(tmp, f))
        if "%" not in out.name:
            # stale frames of an earlier, longer clip would be read back as part of this one
            keep = set(names)
            for p in folder.glob("frame_*.png"):
                if p.name not in keep and re.fullmatch(r"frame_\d+\.png", p.name):
                    p.unlink()
        return out if "%" in out.name else folder
    # a new folder appears whole or not at all
    def fill(tmp: Path) -> None:
        for f, n in zip(frames, names):
            write_png(tmp / n, f)

    return atomic_folder(folder, fill)


def write_video(arr: np.ndarray, out: Union[str, os.PathLike], fps: float = 25.0) -> Path:
    """Write a clip as a video file or a folder of PNG frames.

    Parameters
    ----------
    arr : (T, H, W[, C]) array
        Float values in [0, 1] (clipped), or uint8/uint16 frames.
    out : path
        ``.mp4`` (H.264, yuv420p), ``.webm`` (VP9), ``.avi`` (MPEG-4) or
        ``.gif``; a path with no suffix or ending in ``.png`` writes PNG frames
        into a folder (``clip.png`` -> ``clip/frame_00000.png`` ...), and a
        ``%d`` pattern such as ``frames/clip_%04d.png`` names each frame.
        yuv420p needs even sizes: odd heights/widths are padded by one
        replicated row/column. Alpha is dropped for video files.
    fps : float
        Frames per second.

    Returns
    -------
    Path
        The file or folder written. Files are written to a temporary name and
        moved into place, so an interrupted write leaves no partial output.
    """

    arr = np.asarray(arr)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 2, 3, 4) or min(arr.shape[:3]) < 1:
        raise InputError(f"write_video expects a (T, H, W[, 1|3|4]) clip, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        check_finite(arr, "the clip")
    elif arr.dtype not in PIXEL_LEVELS:
        raise InputError(f"write_video expects float, uint8 or uint16 frames, got {arr.dtype}")
    try:
        fps = float(fps)
    except (TypeError, ValueError):
        raise InputError(f"fps must be a number, got {fps!r}") from None
    if not (0 < fps <= 1000):
        raise InputError(f"fps must be in (0, 1000], got {fps}")
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.exists():
        raise FileNotFoundError(f"{parent}: the output folder does not exist; create it first")
    suffix = out.suffix.lower()
    if suffix in ("", ".png"):
        frames = arr if arr.dtype == np.uint16 else _to_uint8(arr)
        return _write_png_frames(frames, out)
    frames = _to_uint8(arr)
    if suffix in _FFMPEG_FORMATS:
        atomic_write(out, lambda tmp: _write_ffmpeg(frames, tmp, fps, suffix))
    elif suffix == ".gif":
        atomic_write(out, lambda tmp: _write_gif(frames, tmp, fps))
    else:
        raise InputError(f"{out.name}: cannot write video as {suffix!r}; use .mp4, .webm, .avi, .gif, "
                         "or .png / no suffix for a folder of PNG frames")
    return out
