"""load_target: the right :class:`~finr3d.targets.Target` for a file, an array or a Target.

It sits above every kind of target (images and volumes in :mod:`finr3d.targets`,
meshes in :mod:`finr3d.sdf`, video in :mod:`finr3d.video`), so that those
modules import the base classes and never this dispatcher: the import graph
runs one way.
"""

from __future__ import annotations

import os
from pathlib import Path

from finr3d.errors import InputError
from finr3d.targets import ImageTarget, Target, detect_kind
from finr3d.volume import VolumeTarget

__all__ = ["load_target"]


def load_target(source, kind: str = "auto", **options) -> Target:
    """Build the right target for ``source`` (a path, an array or a Target)."""
    if isinstance(source, Target):
        return source
    if kind not in ("auto", "sdf", "volume", "image", "video"):
        raise InputError(f"unknown kind {kind!r}; use auto, sdf, volume, image or video")
    if kind == "auto":
        if not isinstance(source, (str, os.PathLike)):
            raise InputError("kind='auto' needs a file path; for arrays pass kind='image' or kind='volume'")
        if not Path(source).exists():
            raise FileNotFoundError(f"{source}: no such file; check the path")
        kind = detect_kind(source)
    if kind == "image":
        return ImageTarget(source, **options)
    if kind == "volume":
        return VolumeTarget(source, **options)
    if kind == "sdf":
        from finr3d.sdf import SDFTarget  # imported when needed: trimesh and open3d are slow to load

        return SDFTarget(source, **options)
    from finr3d.video import VideoTarget

    return VideoTarget(source, **options)
