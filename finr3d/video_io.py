"""Reading and writing clips: video files and folders of frames in, H.264/VP9/MPEG-4/gif/PNG frames out.

A clip is a ``(T, H, W, C)`` array with values in ``[0, 1]`` (:func:`read_video` returns the stored integer
frames). Files are read with PyAV when it is installed (``pip install 'finr3d[video]'``) and otherwise through
the ffmpeg binary bundled with imageio-ffmpeg; both read mp4, webm, avi, mov, mkv and gif. A folder of frames
(png, jpg, ...) is read in natural order (``frame2`` before ``frame10``). :func:`write_video` writes a clip as
H.264 mp4, VP9 webm, MPEG-4 avi, gif or PNG frames; it is what ``finr3d decode clip.finr -o clip.mp4`` calls.
:class:`finr3d.video.VideoTarget` fits what this module reads.
"""


from __future__ import annotations

import contextlib
import importlib.util
import os
import re
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import torch

from finr3d.errors import InputError
from finr3d.files import atomic_folder, atomic_write
from finr3d.targets import IMAGE_SUFFIXES, PIXEL_LEVELS, VIDEO_SUFFIXES, check_finite, read_image, to_pixels, write_png

__all__ = ["read_video", "write_video", "MAX_VIDEO_VALUES"]

#: Most decoded values a clip may hold (2 GiB at uint8); beyond it the user is
#: asked to read a frame range, a stride or a smaller size.
MAX_VIDEO_VALUES = 1 << 31


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
