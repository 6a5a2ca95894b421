"""Targets: the signals a field is fitted to.

A target knows its signal's sample shape, channels and the transform between
normalized coordinates in ``[-1, 1]^d`` and world coordinates. It gives ground
truth on any axis-aligned sub-grid: an outer product of per-axis coordinate
vectors, which may fall between the stored samples (separable multilinear
interpolation), so that fits are not tied to one lattice.

Axis order is array order. An image is ``(H, W, C)`` with axes ``(y, x)``; a
volume is ``(Z, Y, X)`` (C order, x fastest) with axes ``(z, y, x)``; an SDF
grid is ``(X, Y, Z)`` with axes ``(x, y, z)``; a video is ``(T, H, W, C)``.
Normalized coordinate ``-1`` is the first sample and ``+1`` the last
(``align_corners=True``).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from finr3d.coords import lattice
from finr3d.errors import InputError
from finr3d.files import IMAGE_SUFFIXES, MESH_SUFFIXES, VIDEO_SUFFIXES, VOLUME_SUFFIXES, existing_file  # noqa: F401
from finr3d.presets import GENERIC_PRESET, PRESETS, Preset, preset_for

__all__ = [
    "Target",
    "GridTarget",
    "ImageTarget",
    "lattice",
    "interpolate_subgrid",
    "psnr",
    "ssim",
    "check_finite",
]


#: Largest number of samples a target accepts (a 2048^3 volume); beyond it the
#: user is told to downsample rather than the machine being driven out of memory.
MAX_SAMPLES = 2048**3


#: Most bytes of a stored grid that :meth:`GridTarget.sampler` copies to a device for sampling there.
DEVICE_GRID_BYTES = 4 << 30


def lerp_axes(values: torch.Tensor, plans) -> torch.Tensor:
    """Linear interpolation of ``values`` along each axis with a plan ``(lo_idx, hi_idx, w)`` (None: the axis is
    on stored samples already): the last step of every sub-grid sampler of a stored grid."""
    for axis, plan in enumerate(plans):
        if plan is None:
            continue
        lo_idx, hi_idx, w = plan
        shape = [1] * values.dim()
        shape[axis] = -1
        values = torch.lerp(values.index_select(axis, lo_idx), values.index_select(axis, hi_idx), w.view(shape))
    return values


def even_indices(shape, max_samples: int) -> list[torch.Tensor]:
    """Per-axis integer indices of an evenly spaced sub-lattice of ``shape`` with at most ``max_samples`` points
    (every index when the whole lattice fits): exact stored samples, no interpolation."""
    total = math.prod(shape)
    if total <= max_samples:
        return [torch.arange(n) for n in shape]
    f = (max_samples / total) ** (1.0 / len(shape))
    return [torch.from_numpy(np.unique(np.round(np.linspace(0, n - 1, max(2, int(n * f)))).astype(np.int64)))
            for n in shape]


def check_finite(array: np.ndarray, what: str) -> None:
    """Raise :class:`InputError` when ``array`` holds NaN or Inf."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise InputError(
            f"{what} holds {bad} NaN/Inf value(s); replace them (e.g. np.nan_to_num) before fitting"
        )


def interpolate_subgrid(data: torch.Tensor, coords: Sequence[torch.Tensor]) -> torch.Tensor:
    """Multilinear interpolation of a stored grid on an outer-product sub-grid.

    Parameters
    ----------
    data : (N_0, ..., N_{d-1}, C) tensor
        Samples at ``lattice(N_i)`` along each axis.
    coords : d tensors, (n_i,) float, normalized in [-1, 1]
        Coordinates along each axis. Values outside are clamped.

    Returns
    -------
    (n_0, ..., n_{d-1}, C) tensor
        Exact at lattice points. Separable, so the cost is linear in the output.
    """
    out = data
    for axis, c in enumerate(coords):
        n = data.shape[axis]
        if n == 1:
            out = out.index_select(axis, torch.zeros(len(c), dtype=torch.long, device=data.device))
            continue
        pos = (c.to(data.device, torch.float32).clamp(-1, 1) + 1) * 0.5 * (n - 1)
        snapped = pos.round()
        pos = torch.where((pos - snapped).abs() < 1e-4, snapped, pos)  # exact at stored samples
        i0 = pos.floor().long().clamp_(0, n - 2)
        w = (pos - i0).clamp_(0, 1).to(data.dtype)
        shape = [1] * out.dim()
        shape[axis] = -1
        w = w.view(shape)
        lo = out.index_select(axis, i0)
        hi = out.index_select(axis, i0 + 1)
        out = torch.lerp(lo, hi, w)
    return out


def psnr(pred: np.ndarray, ref: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(range^2 / MSE)``."""
    mse = float(np.mean((np.asarray(pred, np.float64) - np.asarray(ref, np.float64)) ** 2))
    if mse == 0:
        return float("inf")
    return 10.0 * math.log10(data_range**2 / mse)


def ssim(pred: np.ndarray, ref: np.ndarray, *, channel_axis: int | None = -1, data_range: float = 1.0) -> float:
    """Structural similarity (scikit-image), averaged over channels."""
    from skimage.metrics import structural_similarity

    pred = np.asarray(pred, np.float32)
    ref = np.asarray(ref, np.float32)
    if channel_axis is not None and ref.shape[channel_axis] == 1:
        pred, ref, channel_axis = pred.squeeze(channel_axis), ref.squeeze(channel_axis), None
    win = min(7, *[s for i, s in enumerate(ref.shape) if channel_axis is None or i != ref.ndim + channel_axis])
    win = win if win % 2 == 1 else win - 1
    if win < 3:
        return float("nan")
    return float(structural_similarity(pred, ref, channel_axis=channel_axis, data_range=data_range, win_size=win))


class Target:
    """A signal to fit: shape, channels, transform, ground truth, loss and scores.

    Subclasses set the attributes in ``__init__`` and implement :meth:`sample`.

    Attributes
    ----------
    kind : str
        ``"image"``, ``"volume"``, ``"sdf"`` or ``"video"``.
    shape : tuple of int
        Stored samples per axis (array order).
    channels : int
        Values per sample (1 for SDF/volume/gray, 3 RGB, 4 RGBA).
    axis_names : tuple of str
    bounds : (d, 2) float array
        World coordinates of normalized -1 and +1 along each axis.
    default_modes : list of tuple of int
        Recommended grouping of axes into modes.
    value_offset, value_scale : float
        The field predicts ``(value - value_offset) / value_scale``.
    """

    kind: str = "signal"
    shape: tuple[int, ...]
    channels: int = 1
    axis_names: tuple[str, ...]
    bounds: np.ndarray
    value_offset: float = 0.0
    value_scale: float = 1.0
    source: str = ""
    #: name of the metric (higher is better) used for best-state tracking and early stop
    main_metric: str = "psnr"
    #: a video's axis grouping (x+y+t or xy+t); it picks the video preset
    layout: str | None = None
    #: share of the budget a field that reads out exactly (CP with basis='grid') spends sweeping CP-ALS
    sweep_fraction: float = 1.0
    #: peak-to-peak range of the signal in the field's units: the PSNR peak (images, video and volumes are
    #: normalized to [0, 1], so 1; a volume's range in its own units is ``value_scale``)
    data_range: float = 1.0
    #: the signal's bounds in the field's units; predictions are clipped to them before scoring
    value_bounds: tuple = (0.0, 1.0)

    @property
    def preset(self) -> Preset:
        """The recommended settings of this kind of signal (:mod:`finr3d.presets`)."""
        return preset_for(self.kind, self.layout) if self.kind in PRESETS else GENERIC_PRESET

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def default_modes(self) -> list[tuple[int, ...]]:
        return [(i,) for i in range(self.ndim)]

    def axis_coords(self, axis: int, device=None) -> torch.Tensor:
        """Normalized coordinates of the stored samples along ``axis``."""
        return lattice(self.shape[axis], device=device)

    def sample(self, coords: Sequence[torch.Tensor]) -> torch.Tensor:
        """Ground truth on the outer product of per-axis normalized coordinates.

        Returns a ``(n_0, ..., n_{d-1}, C)`` float32 tensor in the field's value
        space (already offset and scaled).
        """
        raise NotImplementedError

    def sampler(self, device):
        """``coords -> ground truth on device``, for the training loop: :meth:`sample`, then a copy to ``device``.

        Targets that store their signal override it to sample on the device (the
        stored grid copied there once), so no sub-grid crosses the bus each step.
        """
        device = torch.device(device)
        return lambda coords: self.sample(coords).to(device)

    def dense(self, max_samples: int = 256**3) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Coordinates and values of a dense grid, at most ``max_samples`` samples.

        Used for full-grid steps and the closed-form start. Subsampled evenly
        per axis when the stored grid is larger.
        """
        shape = list(self.shape)
        total = math.prod(shape)
        if total > max_samples:
            f = (max_samples / total) ** (1.0 / len(shape))
            shape = [max(2, int(s * f)) for s in shape]
        coords = [lattice(n) for n in shape]
        return coords, self.sample(coords)

    def loss(self, pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        """Training loss of a prediction on a sub-grid (mean squared error)."""
        return torch.mean((pred - truth) ** 2)

    def metric(self, pred: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
        """Cheap metric of a sub-grid prediction, used for early stop and reports."""
        mse = float(torch.mean((pred.float() - truth.float()) ** 2))
        return {"psnr": 10 * math.log10(self.data_range**2 / max(mse, 1e-20))}

    def evaluate(self, field, rank=None) -> dict[str, float]:
        """Full-quality scores of ``field`` against this target."""
        raise NotImplementedError

    def to_values(self, pred: np.ndarray) -> np.ndarray:
        """Map field outputs back to the signal's value space."""
        if self.kind == "sdf" and getattr(self, "profile", "clamp") == "tanh":  # finr3d.profiles
            from finr3d.profiles import to_distance

            pred = to_distance(pred, 1.0, "tanh")
        return pred * self.value_scale + self.value_offset

    def describe(self) -> dict:
        """JSON-ready description stored with a fitted field."""
        return {
            "kind": self.kind,
            "shape": list(self.shape),
            "channels": self.channels,
            "axis_names": list(self.axis_names),
            "bounds": np.asarray(self.bounds, float).tolist(),
            "value_offset": float(self.value_offset),
            "value_scale": float(self.value_scale),
            "source": os.path.basename(self.source) if self.source else "",
        }


class GridTarget(Target):
    """A target stored as a dense array ``(N_0, ..., N_{d-1}, C)`` in memory."""

    def __init__(self, data: np.ndarray, *, kind: str, axis_names: Sequence[str], bounds=None,
                 value_offset: float = 0.0, value_scale: float = 1.0, source: str = ""):
        data = np.asarray(data)
        if data.ndim != len(axis_names) + 1:
            raise InputError(f"expected a {len(axis_names)}-D grid with a channel axis, got shape {data.shape}")
        if data.size == 0 or min(data.shape) == 0:
            raise InputError(f"the {kind} is empty (shape {data.shape}); give a non-empty array")
        if data.size > MAX_SAMPLES:
            raise InputError(
                f"the {kind} has {data.size} samples (shape {data.shape}), more than {MAX_SAMPLES}; "
                "downsample or crop it first"
            )
        if min(data.shape[:-1]) < 2:
            raise InputError(f"every axis needs at least 2 samples, got shape {data.shape[:-1]}")
        check_finite(data, f"the {kind}")
        self.kind = kind
        self.axis_names = tuple(axis_names)
        self.shape = tuple(int(s) for s in data.shape[:-1])
        self.channels = int(data.shape[-1])
        self.value_offset = float(value_offset)
        self.value_scale = float(value_scale)
        self.bounds = np.asarray(bounds if bounds is not None else [[-1.0, 1.0]] * len(self.shape), float)
        self.source = str(source)
        values = (data.astype(np.float32) - np.float32(value_offset)) / np.float32(value_scale)
        self.data = torch.from_numpy(np.ascontiguousarray(values))

    def sample(self, coords):
        return interpolate_subgrid(self.data, coords)

    def sampler(self, device):
        """:meth:`sample` on a copy of :attr:`data` on ``device`` when it fits :data:`DEVICE_GRID_BYTES` (and
        ``sample`` is this class's interpolation); else the base class's sample-then-copy."""
        device = torch.device(device)
        nbytes = self.data.element_size() * self.data.nelement()
        if device == self.data.device or type(self).sample is not GridTarget.sample or nbytes > DEVICE_GRID_BYTES:
            return super().sampler(device)
        data = self.data.to(device)
        return lambda coords: interpolate_subgrid(data, coords)

    def sample_indices(self, indices: Sequence[torch.Tensor]) -> torch.Tensor:
        """Ground truth at integer lattice indices (outer product): exact, no interpolation."""
        out = self.data
        for axis, idx in enumerate(indices):
            out = out.index_select(axis, idx.to(out.device))
        return out

    def dense(self, max_samples: int = 256**3):
        if math.prod(self.shape) <= max_samples:
            return [self.axis_coords(i) for i in range(self.ndim)], self.data
        return super().dense(max_samples)

    def evaluate(self, field, rank=None) -> dict[str, float]:
        pred = field.grid([self.axis_coords(i) for i in range(self.ndim)], rank=rank, squeeze=False)
        pred = np.clip(np.asarray(pred, np.float32), *self.value_bounds)
        ref = self.data.numpy()
        out = {"psnr": psnr(pred, ref, data_range=self.data_range)}
        if self.ndim == 2:
            out["ssim"] = ssim(pred, ref, channel_axis=-1, data_range=self.data_range)
        return out


class ImageTarget(GridTarget):
    """An 8/16-bit gray, RGB or RGBA image, read with imageio.

    Values are mapped to [0, 1]. Axes are ``(y, x)``; world bounds are pixel
    indices, so the world transform maps normalized coordinates to pixels.
    """

    def __init__(self, source, *, max_pixels: int = 64_000_000):
        if isinstance(source, (str, os.PathLike)):
            path = existing_file(source)
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise InputError(
                    f"{path.name}: unsupported image type {path.suffix!r}; use one of {sorted(IMAGE_SUFFIXES)}"
                )
            try:
                arr = read_image(path, max_pixels=max_pixels)
            except InputError:
                raise
            except Exception as exc:  # the readers raise many types for broken files
                raise InputError(f"{path.name}: cannot read the image ({exc}); is it a valid {path.suffix} file?") from exc
            name = str(path)
        else:
            arr, name = np.asarray(source), "<array>"
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
            raise InputError(f"{name}: expected an H x W [x 1|3|4] image, got shape {arr.shape}")
        if arr.shape[0] * arr.shape[1] > max_pixels:
            raise InputError(f"{name}: {arr.shape[0]}x{arr.shape[1]} pixels is more than {max_pixels}; resize it first")
        if arr.dtype in PIXEL_LEVELS:
            scale = PIXEL_LEVELS[arr.dtype]
        elif arr.dtype.kind == "f":
            check_finite(arr, name)
            scale = 1.0
        else:
            raise InputError(f"{name}: unsupported pixel type {arr.dtype}; use 8/16-bit or float images")
        h, w = arr.shape[:2]
        super().__init__(arr.astype(np.float32) / scale, kind="image", axis_names=("y", "x"),
                         bounds=[[0, h - 1], [0, w - 1]], source=name)
        self.bit_depth = 16 if arr.dtype == np.uint16 else 8

    def describe(self) -> dict:
        return {**super().describe(), "bit_depth": self.bit_depth}

    def to_array(self, pred: np.ndarray) -> np.ndarray:
        """Field output (H, W, C) to an image array of the source's bit depth."""
        return to_pixels(self.to_values(pred), self.bit_depth)


def image_size(path) -> tuple[int, int]:
    """(height, width) of an image file from its header alone, without decoding the pixels."""
    path = Path(path)
    if path.suffix.lower() == ".png":
        import png

        reader = png.Reader(filename=str(path))
        reader.preamble()
        return int(reader.height), int(reader.width)
    import PIL.Image

    with PIL.Image.open(path) as img:  # lazy: reads the header only
        width, height = img.size
    return int(height), int(width)


def read_image(path, *, max_pixels: int | None = None) -> np.ndarray:
    """Read an image as (H, W[, C]); PNGs through pypng so 16-bit colour survives (Pillow drops it).

    ``max_pixels`` is checked against the size in the file's header before any
    pixel is decoded, so a small file that decodes to gigabytes (a
    decompression bomb) is refused in bounded memory.
    """
    path = Path(path)
    if max_pixels is not None:
        height, width = image_size(path)
        if height * width > max_pixels:
            raise InputError(f"{path.name}: {height}x{width} pixels is more than {max_pixels}; "
                             "resize it first")
    if path.suffix.lower() == ".png":
        import png

        width, height, rows, info = png.Reader(filename=str(path)).asDirect()
        dtype = np.uint16 if info["bitdepth"] > 8 else np.uint8
        arr = np.empty((height, width * info["planes"]), dtype)
        for i, row in enumerate(rows):  # into one array: a list of rows, then vstack, would double the peak
            arr[i] = row
        return arr.reshape(height, width, info["planes"])
    import imageio.v3 as iio

    return iio.imread(path)


#: Stored integer pixel values per unit of the signal.
PIXEL_LEVELS = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def to_pixels(values: np.ndarray, bit_depth: int, *, inplace: bool = False) -> np.ndarray:
    """Signal values in [0, 1] (clipped) to ``bit_depth`` (8 or 16) integer pixels, rounded to nearest.

    ``inplace``: clip, scale and round in ``values`` itself (a float array), so the only new array is the
    integer result.
    """
    dtype = np.uint16 if int(bit_depth) == 16 else np.uint8
    if not inplace:
        return np.round(np.clip(values, 0, 1) * PIXEL_LEVELS[np.dtype(dtype)]).astype(dtype)
    np.clip(values, 0, 1, out=values)
    values *= PIXEL_LEVELS[np.dtype(dtype)]
    return np.rint(values, out=values).astype(dtype)


def write_png(path, img: np.ndarray) -> None:
    """Write (H, W[, C]) uint8/uint16 as PNG through pypng (keeps 16-bit colour)."""
    import png

    img = np.asarray(img)
    if img.ndim == 2:
        img = img[..., None]
    h, w, c = img.shape
    writer = png.Writer(w, h, greyscale=c in (1, 2), alpha=c in (2, 4), bitdepth=16 if img.dtype == np.uint16 else 8)
    with open(path, "wb") as fh:
        writer.write(fh, img.reshape(h, w * c))


def _check_npy_header(handle, size: int, name: str) -> None:
    """Refuse a .npy whose header declares more data than the file holds, before anything is allocated."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(handle)
        reader = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
        if reader is None:
            raise ValueError(f"format version {version[0]}.{version[1]} is not supported; save it with np.save")
        shape, _, dtype = reader(handle)
    except (ValueError, SyntaxError, OSError) as exc:
        raise InputError(f"{name}: not a valid .npy header ({exc})") from None
    if dtype.hasobject:
        raise InputError(f"{name}: holds Python objects; object/pickled arrays are refused")
    count = math.prod(shape)
    needed = count * dtype.itemsize
    held = size - handle.tell()
    if needed > held:
        raise InputError(f"{name}: the header declares a {'x'.join(map(str, shape)) or 'scalar'} {dtype} array "
                         f"({needed:,} bytes) but the file holds {max(held, 0):,} bytes of data; "
                         "the file is truncated or corrupt")
    if count > MAX_SAMPLES:
        raise InputError(f"{name}: {count:,} samples (shape {shape}) is more than {MAX_SAMPLES:,}; "
                         "downsample or crop it first")


#: Files a folder of per-frame volumes holds (a time-varying volume, :func:`finr3d.volume.frame_files`).
FRAME_SUFFIXES = (".npy", ".raw", ".nii", ".nii.gz")


def _is_frame_file(p: Path) -> bool:
    n = p.name.lower()
    return p.is_file() and any(n.endswith(s) for s in FRAME_SUFFIXES) and not n.startswith(".")


def is_volume_folder(path) -> bool:
    """Whether ``path`` is a folder of per-frame volume files."""
    p = Path(path)
    return p.is_dir() and any(_is_frame_file(q) for q in p.iterdir())


def detect_kind(path) -> str:
    """Guess the target kind from a file name: image, volume, sdf or video."""
    p = Path(path)
    name = p.name.lower()
    if p.is_dir():
        return "volume" if is_volume_folder(p) else "video"
    suffix = p.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VOLUME_SUFFIXES or name.endswith(".nii.gz"):
        return "volume"
    if suffix in MESH_SUFFIXES:
        return "sdf"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    raise InputError(
        f"{p.name}: cannot tell what {suffix or 'this'} is; pass --kind sdf|volume|image|video "
        "(meshes: obj ply stl off glb gltf; images: png jpg; volumes: npy npz raw nii; video: mp4 webm avi)"
    )
