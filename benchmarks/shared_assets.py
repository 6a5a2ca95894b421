"""Where the benchmarks find the shared test assets (``$FINR3D_SHARED``, default ``../shared``)."""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent


def shared_assets() -> Path:
    return Path(os.environ.get("FINR3D_SHARED", HERE.parent.parent / "shared")) / "assets"


def mesh_path(name: str) -> Path:
    """A shared mesh by name (``bunny``, ``kitten``, ...), whatever its suffix."""
    root = shared_assets() / "meshes"
    for suffix in (".obj", ".ply"):
        if (root / f"{name}{suffix}").exists():
            return root / f"{name}{suffix}"
    raise FileNotFoundError(f"{name} not found in {root}; set FINR3D_SHARED")
