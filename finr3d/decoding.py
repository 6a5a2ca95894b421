"""Decode a field back to the signal it represents: image, volume, video or array."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from finr3d.errors import InputError

__all__ = ["decode_array", "decode_field", "atomic_write"]


def decode_array(field, *, rank=None, resolution=None, max_memory=None) -> np.ndarray:
    """The field on its target's lattice (or ``resolution`` per axis), in the signal's units.

    The memory this needs is estimated from the field's header first and
    refused above :func:`finr3d.header_schema.memory_limit` (``max_memory``,
    else ``$FINR3D_MAX_MEMORY``, else 2 GiB), before anything is allocated.

    Returns (n_0, ..., n_{d-1}, C) float32.
    """
    from finr3d.header_schema import check_memory, decode_memory_bytes

    info = field.target_info or {}
    shape = info.get("shape")
    if resolution is not None:
        if not 1 <= int(resolution) <= 65536:
            raise InputError(f"resolution must be between 1 and 65536, got {resolution}")
        shape = [int(resolution)] * field.ndim
    if shape is None:
        raise InputError("the field does not record its sample shape; pass --resolution")
    shape = [int(s) for s in shape]
    meta = {"channels": field.channels, "ndim": field.ndim, "modes": [list(m) for m in field.modes],
            "backbone_configs": [net.config() for net in field.nets]}
    check_memory(decode_memory_bytes(meta, shape), f"decoding a {'x'.join(map(str, shape))} grid "
                 f"of {field.channels} channel(s)", limit=max_memory)
    values = field.grid(shape, rank=rank, squeeze=False)
    scale, offset = float(info.get("value_scale", 1.0)), float(info.get("value_offset", 0.0))
    values *= np.float32(scale)  # in place: a second grid-sized array would double the peak
    values += np.float32(offset)
    return values


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


def decode_field(field, out, *, rank=None, resolution=None, max_memory=None) -> Path:
    """Write the decoded field to ``out`` (.npy, .png for images, .mp4/.webm/.avi/.gif for video)."""
    out = Path(out)
    suffix = out.suffix.lower()
    kind = field.kind
    arr = decode_array(field, rank=rank, resolution=resolution, max_memory=max_memory)
    if suffix == ".npy":
        atomic_write(out, lambda tmp: np.save(tmp, arr, allow_pickle=False))
        return out
    if suffix == ".png" and kind == "image":
        from finr3d.targets import write_png

        bits = int((field.target_info or {}).get("bit_depth", 8))
        np.clip(arr, 0, 1, out=arr)
        arr *= 65535 if bits == 16 else 255
        img = np.rint(arr, out=arr).astype(np.uint16 if bits == 16 else np.uint8)
        atomic_write(out, lambda tmp: write_png(tmp, img))
        return out
    if kind == "video" and suffix in (".mp4", ".webm", ".avi", ".gif", ".png"):
        from finr3d.video import write_video

        return write_video(np.clip(arr, 0, 1), out, fps=float((field.target_info or {}).get("fps", 25.0)))
    raise InputError(f"cannot decode a {kind} field to {suffix}; use .npy"
                     + (" or .png" if kind == "image" else "") + (" or .mp4" if kind == "video" else ""))
