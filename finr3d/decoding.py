"""Decode a field back to the signal it represents: image, volume, video or array."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from finr3d.errors import InputError
from finr3d.files import atomic_write

__all__ = ["decode_array", "decode_field", "decode_shape", "decode_slabs", "stream_npy", "write_frame_folder",
           "check_decode_memory", "check_decode_output", "check_decode_disk", "atomic_write"]


#: Values per slab of a streamed decode (64 MiB of float32).
SLAB_VALUES = 1 << 24
#: Bytes kept free beside a streamed decode: it is refused when it would leave less disk than this.
HEADROOM_BYTES = 256 << 20


def decode_shape(field, resolution=None) -> list[int]:
    """Samples per axis a decode produces: the target's stored shape, or ``resolution`` per axis.

    A time-varying volume keeps its stored frames; ``resolution`` then applies to its space axes.
    """
    info = field.target_info or {}
    shape = info.get("shape")
    if resolution is not None:
        if not 1 <= int(resolution) <= 65536:
            raise InputError(f"resolution must be between 1 and 65536, got {resolution}")
        if field.kind == "volume" and field.ndim == 4 and shape is not None:
            return [int(shape[0])] + [int(resolution)] * 3
        return [int(resolution)] * field.ndim
    if shape is None:
        raise InputError("the field does not record its sample shape; pass --resolution")
    return [int(s) for s in shape]


def _human(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _meta(field) -> dict:
    return {"channels": field.channels, "ndim": field.ndim, "modes": [list(m) for m in field.modes],
            "backbone_configs": [net.config() for net in field.nets]}


def check_decode_memory(field, shape, *, max_memory=None, copies: int = 2, what: str | None = None) -> None:
    """Refuse up front a decode of ``shape`` whose memory (:func:`finr3d.header_schema.decode_memory_bytes`)
    exceeds the limit (``max_memory``, else ``$FINR3D_MAX_MEMORY``, else 2 GiB), saying what it needs."""
    from finr3d.header_schema import check_memory, decode_memory_bytes

    check_memory(decode_memory_bytes(_meta(field), shape, copies=copies),
                 what or f"decoding a {'x'.join(map(str, shape))} grid of {field.channels} channel(s)",
                 limit=max_memory)


#: Largest output a streamed decode writes unless asked for more (``--max-memory`` / ``$FINR3D_MAX_MEMORY``):
#: a 512^3 float32 volume (512 MiB) passes; a header that makes a 3-KB file ask for 1.2 GB does not.
DEFAULT_OUTPUT_LIMIT = "1G"


def check_decode_output(nbytes: int, what: str, *, max_memory=None) -> None:
    """Refuse up front a streamed decode whose output exceeds the output limit (``max_memory``, else
    ``$FINR3D_MAX_MEMORY``, else :data:`DEFAULT_OUTPUT_LIMIT`): a header cannot make a small file write
    gigabytes unasked, and a user who wants a larger output says so with the same flag."""
    from finr3d.header_schema import MEMORY_ENV, check_memory

    limit = max_memory if max_memory is not None else (os.environ.get(MEMORY_ENV) or DEFAULT_OUTPUT_LIMIT)
    check_memory(nbytes, f"{what} (the output)", limit=limit, resource="disk and time for it")


def check_decode_disk(nbytes: int, folder, what: str) -> None:
    """Refuse up front a streamed decode whose output would not fit on the disk of ``folder``."""
    import shutil

    free = shutil.disk_usage(folder).free
    if nbytes + HEADROOM_BYTES > free:
        raise InputError(f"{what} needs {_human(nbytes)} of disk but {_human(free)} is free in {folder}; "
                         "decode at a lower --resolution or elsewhere")


def decode_slabs(field, shape, *, rank=None):
    """Yield ``(start, stop, values)``: the field on its grid, slab by slab along axis 0, in the signal's units
    (a volume's clipped to its source's value range).

    ``values`` is ``(stop - start, n_1, ..., n_{d-1}, C)`` float32; each slab
    holds at most :data:`SLAB_VALUES` values (one plane when a plane is larger).
    """
    from finr3d.coords import lattice

    from finr3d.profiles import is_tanh, to_distance

    info = field.target_info or {}
    scale, offset = np.float32(info.get("value_scale", 1.0)), np.float32(info.get("value_offset", 0.0))
    squashed = is_tanh(info)
    # a volume's field is in [0, 1] on its source's value range (VolumeTarget.value_bounds): what lies outside
    # is error, so the decode clips there, as evaluate() does (a lattice residual's step is chosen for that)
    clipped = info.get("kind") == "volume"
    coords = [lattice(int(n)) for n in shape]
    plane = math.prod(shape[1:]) * field.channels
    step = max(1, SLAB_VALUES // max(1, plane))
    for start in range(0, shape[0], step):
        stop = min(shape[0], start + step)
        values = field.grid([coords[0][start:stop]] + coords[1:], rank=rank, squeeze=False)
        if squashed:  # a tanh SDF profile back to distance at the surface's slope
            values = to_distance(values, np.float32(1.0), "tanh").astype(np.float32, copy=False)
        if clipped:
            np.clip(values, 0.0, 1.0, out=values)
        values *= scale
        values += offset
        yield start, stop, values


def decode_array(field, *, rank=None, resolution=None, max_memory=None) -> np.ndarray:
    """The field on its target's lattice (or ``resolution`` per axis), in the signal's units.

    The memory this needs is estimated from the field's header first and
    refused above :func:`finr3d.header_schema.memory_limit` (``max_memory``,
    else ``$FINR3D_MAX_MEMORY``, else 2 GiB), before anything is allocated.

    Returns (n_0, ..., n_{d-1}, C) float32.
    """
    shape = decode_shape(field, resolution)
    check_decode_memory(field, shape, max_memory=max_memory)
    out = np.empty([*shape, field.channels], np.float32)
    for start, stop, values in decode_slabs(field, shape, rank=rank):
        out[start:stop] = values
    return out


def _slab_shape(field, shape) -> list[int]:
    plane = math.prod(shape[1:]) * field.channels
    return [min(shape[0], max(1, SLAB_VALUES // max(1, plane)))] + list(shape[1:])


def _source_layout(field, shape):
    """(letters of the written array, permutation from the decoded axes to them, drop the channel axis).

    Volume fields are written back in their source's axis order (``target_info['source_axes']``);
    other fields in their own axis order with channels last.
    """
    info = field.target_info or {}
    letters = info.get("source_axes") if field.kind == "volume" else None
    if not letters:
        return None, list(range(len(shape) + 1)), False
    canon = [a for a in "tzyxc" if a in letters]
    drop = "c" not in letters
    if drop:
        canon.append("c")
    perm = [canon.index(a) for a in letters]
    return letters, perm, drop


def _release(mm) -> None:
    """Flush a memory-mapped output and drop its pages from the resident set (they are on disk now).

    Without this, a streamed decode's written pages stay mapped and count as the process's memory: a 4 GB
    ``.npy`` grew the RSS by 3.9 GB although each slab is small.
    """
    import mmap

    mm.flush()
    raw = getattr(mm, "_mmap", None)
    if raw is not None and hasattr(raw, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        raw.madvise(mmap.MADV_DONTNEED)


def stream_npy(field, out: Path, *, rank=None, resolution=None, max_memory=None) -> Path:
    """Decode into a ``.npy`` file slab by slab (memory stays at one slab), atomically.

    Volume fields are written in their source's axis order; a single-channel
    volume without a ``c`` axis is written without one.
    """
    from numpy.lib.format import open_memmap

    shape = decode_shape(field, resolution)
    letters, perm, drop = _source_layout(field, shape)
    full = [*shape, field.channels]
    stored = [full[i] for i in perm] if letters else full
    nbytes = math.prod(full) * 4
    folder = out.parent if str(out.parent) else Path(".")
    check_decode_memory(field, _slab_shape(field, shape), max_memory=max_memory, copies=1,
                        what=f"a slab of a {'x'.join(map(str, shape))} decode")
    check_decode_output(nbytes, f"a {'x'.join(map(str, shape))} decode", max_memory=max_memory)
    check_decode_disk(nbytes, folder, f"a {'x'.join(map(str, shape))} decode")

    def write(tmp):
        mm = open_memmap(tmp, mode="w+", dtype=np.float32, shape=tuple(stored))
        view = mm.transpose(np.argsort(perm)) if letters else mm
        if drop:
            view = view[..., None]
        for start, stop, values in decode_slabs(field, shape, rank=rank):
            view[start:stop] = values
            _release(mm)  # written pages to disk and out of this process's resident set
        mm.flush()
        del mm, view

    atomic_write(out, write)
    return out


def write_frame_folder(field, folder: Path, *, rank=None, resolution=None, force: bool = False,
                       max_memory=None) -> Path:
    """Decode a time-varying volume field into a folder of per-frame ``.npy`` volumes (``frame_00000.npy`` ...).

    Each frame is in the source's per-frame axis order. A new folder appears
    whole or not at all; into an existing one (``force``), one atomic write per frame.
    """
    import shutil
    import tempfile

    if field.ndim != 4 or field.kind != "volume":
        raise InputError("a frame folder is written for time-varying volume fields; decode this field to .npy")
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} exists and is not a folder; choose another output name")
    if folder.exists() and any(folder.iterdir()) and not force:
        raise FileExistsError(f"{folder}/ holds files; pass --force to write frames into it")
    shape = decode_shape(field, resolution)
    letters, perm, drop = _source_layout(field, shape)
    frame_letters = letters.replace("t", "") if letters else "zyxc"
    canon = [a for a in "zyxc" if a in frame_letters] + ([] if "c" in frame_letters else ["c"])
    fperm = [canon.index(a) for a in frame_letters] + ([] if "c" in frame_letters else [len(canon) - 1])
    nbytes = math.prod(shape) * field.channels * 4
    parent = folder.parent if str(folder.parent) else Path(".")
    check_decode_memory(field, [1, *shape[1:]], max_memory=max_memory, what=f"a frame of a {'x'.join(map(str, shape))} decode")
    check_decode_output(nbytes, f"a {'x'.join(map(str, shape))} decode", max_memory=max_memory)
    check_decode_disk(nbytes, parent, f"a {'x'.join(map(str, shape))} decode")
    digits = max(5, len(str(shape[0] - 1)))
    names = [f"frame_{i:0{digits}d}.npy" for i in range(shape[0])]
    frame_shape = shape[1:]

    def frames():
        from finr3d.volume import frame_field

        for t in range(shape[0]):
            one = frame_field(field, t)
            arr = np.empty([*frame_shape, field.channels], np.float32)
            for start, stop, values in decode_slabs(_Shaped(one, field), frame_shape, rank=rank):
                arr[start:stop] = values
            arr = arr.transpose(fperm)
            yield names[t], (arr[..., 0] if "c" not in frame_letters else arr)

    if folder.exists():
        for name, arr in frames():
            atomic_write(folder / name, lambda tmp, a=arr: np.save(tmp, a, allow_pickle=False))
        return folder
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=parent))
    try:
        for name, arr in frames():
            np.save(tmp / name, arr, allow_pickle=False)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


class _Shaped:
    """A frame of a 4-D field seen through :func:`decode_slabs` (grid, channels, target_info)."""

    def __init__(self, frame, field):
        self.frame, self.channels, self.target_info = frame, field.channels, field.target_info

    def grid(self, coords, rank=None, squeeze=False):
        return self.frame.grid(coords, rank=rank, squeeze=squeeze)


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then move the result over ``path`` in one step."""
    from finr3d.atomic_files import create_temp

    path = Path(path)
    tmp = create_temp(path)  # hidden, marked finr3d-tmp, same suffix (np.save appends .npy otherwise)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def decode_field(field, out, *, rank=None, resolution=None, force: bool = False, max_memory=None) -> Path:
    """Write the decoded field to ``out``.

    ``.npy`` for any field (streamed slab by slab; volumes in their source's
    axis order), ``.png`` for images, ``.mp4``/``.webm``/``.avi``/``.gif`` for
    video, and for a time-varying volume a path without a suffix: a folder of
    per-frame ``.npy`` volumes.
    """
    out = Path(out)
    suffix = out.suffix.lower()
    kind = field.kind
    if suffix == ".npy":
        return stream_npy(field, out, rank=rank, resolution=resolution, max_memory=max_memory)
    if suffix == "" and kind == "volume":
        return write_frame_folder(field, out, rank=rank, resolution=resolution, force=force, max_memory=max_memory)
    arr = decode_array(field, rank=rank, resolution=resolution, max_memory=max_memory)
    if suffix == ".png" and kind == "image":
        from finr3d.targets import to_pixels, write_png

        img = to_pixels(arr, int((field.target_info or {}).get("bit_depth", 8)), inplace=True)
        atomic_write(out, lambda tmp: write_png(tmp, img))
        return out
    if kind == "video" and suffix in (".mp4", ".webm", ".avi", ".gif", ".png"):
        from finr3d.video_io import write_video

        return write_video(np.clip(arr, 0, 1), out, fps=float((field.target_info or {}).get("fps", 25.0)))
    raise InputError(f"cannot decode a {kind} field to {suffix or 'a folder'}; use .npy"
                     + (" or .png" if kind == "image" else "") + (" or .mp4" if kind == "video" else "")
                     + (" or a folder name (one .npy per frame)" if kind == "volume" and field.ndim == 4 else ""))
