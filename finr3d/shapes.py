"""Procedural shapes the project generates itself (the demo's built-in default).

Each shape is an analytic signed distance function (negative inside) and a
mesh made from it by marching cubes. Nothing here is a scan.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SHAPES", "shape_sdf", "shape_mesh"]


def _sd_round_box(p, half, radius):
    q = np.abs(p) - (np.asarray(half) - radius)
    outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
    inside = np.minimum(np.max(q, axis=-1), 0.0)
    return outside + inside - radius


def _sd_torus(p, major, minor):
    q = np.stack([np.linalg.norm(p[..., [0, 2]], axis=-1) - major, p[..., 1]], axis=-1)
    return np.linalg.norm(q, axis=-1) - minor


def _smooth_union(a, b, k):
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def _sd_gizmo(p):
    """A rounded block with a bored hole, fused to a torus handle: genus 2, sharp-ish and smooth parts."""
    block = _sd_round_box(p - np.array([0.0, -0.15, 0.0]), (0.55, 0.3, 0.4), 0.08)
    hole = np.linalg.norm(p[..., [0, 1]] - np.array([0.0, -0.15]), axis=-1) - 0.14
    block = np.maximum(block, -hole)
    ring = _sd_torus((p - np.array([0.0, 0.35, 0.0]))[..., [0, 2, 1]], 0.32, 0.09)
    return _smooth_union(block, ring, 0.08)


def _sd_capsule(p, a, b, radius):
    pa, ba = p - np.asarray(a), np.asarray(b) - np.asarray(a)
    h = np.clip((pa @ ba) / (ba @ ba), 0.0, 1.0)
    return np.linalg.norm(pa - h[..., None] * ba, axis=-1) - radius


def _turn(p, yaw, pitch):
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    r = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]]) @ np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp],
                                                                             [0.0, sp, cp]])
    return p @ r  # row vectors: p R = R^T p, the inverse turn of the part


def _sd_fins(p):
    """Thin parts: a slab carrying five fins 0.024 thick (1.5 voxels of a 128^3 grid over [-1, 1]) turned off
    the grid axes, and slanted rods of radius 0.014: the detail a 128^3 ground truth misplaces (a thin-featured
    test shape, watertight)."""
    d = _sd_round_box(p - np.array([0.0, -0.55, 0.0]), (0.75, 0.08, 0.5), 0.02)
    for i, x in enumerate(np.linspace(-0.45, 0.45, 5)):
        q = _turn(p - np.array([x, -0.15, 0.0]), 0.5 + 0.15 * i, 0.2)
        d = np.minimum(d, _sd_round_box(q, (0.012, 0.35, 0.3), 0.006))
    for z in (-0.35, 0.05, 0.4):
        d = np.minimum(d, _sd_capsule(p, (-0.7, 0.35 + 0.3 * z, z), (0.7, 0.55, -0.6 * z), 0.014))
    return d


SHAPES = {"gizmo": _sd_gizmo, "fins": _sd_fins}


def shape_sdf(name: str, points: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) of shape ``name`` at ``points`` (n, 3)."""
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; choose one of {sorted(SHAPES)}")
    return SHAPES[name](np.asarray(points, np.float64))


def shape_mesh(name: str = "gizmo", resolution: int = 128):
    """Watertight trimesh of a procedural shape, from marching cubes over its SDF."""
    import trimesh
    from skimage.measure import marching_cubes

    axis = np.linspace(-1.0, 1.0, resolution)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)
    values = shape_sdf(name, grid.reshape(-1, 3)).reshape(resolution, resolution, resolution)
    verts, faces, _, _ = marching_cubes(values, level=0.0, spacing=(axis[1] - axis[0],) * 3)
    verts -= 1.0
    mesh = trimesh.Trimesh(verts, faces, process=True)
    if mesh.volume < 0:  # keep normals outward whatever skimage's winding convention
        mesh.invert()
    mesh.merge_vertices()
    return mesh
