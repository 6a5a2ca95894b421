"""Where a field sits in the world: moving a fitted field by a 4x4 transform.

A field's ``target_info`` holds ``world_from_normalized`` (normalized
coordinates in ``[-1, 1]^d`` to world units) and, for an SDF, ``value_scale``
(the world length of one unit of the field's output). Moving the field by an
affine map ``M`` composes ``M @ world_from_normalized`` and scales
``value_scale`` by ``|det M[:3, :3]|^(1/3)``, the map's mean length scale (exact
for a similarity; for a non-uniform scale the zero level set, which is what a
mesh is extracted from, still moves exactly).

Needs numpy alone (the Blender add-on's process calls it).
"""

from __future__ import annotations

import copy

import numpy as np

__all__ = ["move_info", "placement_delta", "voxel_frame"]

#: Entries of a 4x4 transform closer than this to the identity count as no move.
IDENTITY_TOLERANCE = 1e-9


def _matrix(m, what: str) -> np.ndarray:
    arr = np.asarray(m, np.float64)
    if arr.size != 16 or not np.isfinite(arr).all():
        raise ValueError(f"{what} must be a finite 4x4 matrix, got shape {arr.shape}")
    arr = arr.reshape(4, 4)
    if abs(np.linalg.det(arr[:3, :3])) < 1e-12:
        raise ValueError(f"{what} is singular (a zero scale); give an invertible transform")
    return arr


def placement_delta(now, before) -> np.ndarray:
    """The move ``now @ before^-1`` that takes a field placed by ``before`` to ``now`` (4x4 each)."""
    return _matrix(now, "the new placement") @ np.linalg.inv(_matrix(before, "the old placement"))


def linear_scale(matrix) -> float:
    """``|det A|^(1/3)`` of a placement's linear part: world units per normalized unit (an SDF's distances scale
    by it, :func:`move_info`)."""
    return float(abs(np.linalg.det(np.asarray(matrix, np.float64)[:3, :3])) ** (1.0 / 3.0))


def move_info(info: dict, delta) -> dict:
    """A copy of ``target_info`` moved by the 4x4 transform ``delta`` (world units to world units).

    ``world_from_normalized`` becomes ``delta @ world_from_normalized`` and an
    SDF's ``value_scale`` is multiplied by ``|det delta[:3, :3]|^(1/3)``. A
    ``delta`` within :data:`IDENTITY_TOLERANCE` of the identity returns an
    unchanged copy.
    """
    out = copy.deepcopy(info)
    d = _matrix(delta, "the move")
    if np.allclose(d, np.eye(4), atol=IDENTITY_TOLERANCE):
        return out
    world = np.asarray(out.get("world_from_normalized", np.eye(4)), np.float64)
    out["world_from_normalized"] = (d @ world).tolist()
    scale = linear_scale(d)
    if "value_scale" in out:
        out["value_scale"] = float(out["value_scale"]) * scale
    return out


def voxel_frame(shape) -> np.ndarray:
    """4x4 map from a volume's normalized spatial coordinates ``(z, y, x)`` to voxel indices ``(x, y, z)``.

    ``shape`` ends with ``(nz, ny, nx)`` (a leading time axis is ignored). Meshes extracted from a volume
    field come out in voxel units, x first.
    """
    nz, ny, nx = (int(n) for n in list(shape)[-3:])
    m = np.zeros((4, 4))
    m[0, 2], m[1, 1], m[2, 0] = (nx - 1) / 2, (ny - 1) / 2, (nz - 1) / 2
    m[:3, 3] = [(nx - 1) / 2, (ny - 1) / 2, (nz - 1) / 2]
    m[3, 3] = 1.0
    return m
