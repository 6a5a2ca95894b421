"""Where the benchmarks find the shared test assets (``$FINR3D_SHARED``, default ``../shared``)."""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent


def shared_assets() -> Path:
    return Path(os.environ.get("FINR3D_SHARED", HERE.parent.parent / "shared")) / "assets"


def mesh_path(name: str) -> Path:
    """A shared mesh by name (``bunny``, ``kitten``, ...), whatever its suffix; ``shape:NAME`` is a procedural
    shape of :mod:`finr3d.shapes` (e.g. ``shape:fins``, thin parts), meshed at 256^3 into ``$TMPDIR`` once."""
    if name.startswith("shape:"):
        import tempfile

        from finr3d.shapes import shape_mesh

        path = Path(tempfile.gettempdir()) / f"finr3d-shape-{name[6:]}-256.ply"
        if not path.exists():
            shape_mesh(name[6:], 256).export(path)
        return path
    root = shared_assets() / "meshes"
    for suffix in (".obj", ".ply"):
        if (root / f"{name}{suffix}").exists():
            return root / f"{name}{suffix}"
    raise FileNotFoundError(f"{name} not found in {root}; set FINR3D_SHARED")
