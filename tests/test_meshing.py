"""Tests of finr3d.meshing: slab-wise marching cubes, transforms, validation, export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import trimesh

from finr3d.errors import InputError
from finr3d.meshing import extract_mesh, save_mesh

ROOT = Path(__file__).resolve().parents[1]


class AnalyticField:
    """Stand-in for FactorizedField: an analytic SDF evaluated on outer-product grids."""

    kind = "sdf"
    channels = 1

    def __init__(self, fn, target_info=None):
        self.fn = fn
        self.target_info = target_info or {"kind": "sdf"}
        self.ranks = []

    def grid(self, coords, rank=None, *, squeeze=True):
        self.ranks.append(rank)
        if isinstance(coords, int):
            coords = [np.linspace(-1, 1, coords)] * 3
        x, y, z = (np.asarray(c, np.float32) for c in coords)
        v = self.fn(x[:, None, None], y[None, :, None], z[None, None, :]).astype(np.float32)[..., None]
        return v[..., 0] if squeeze else v


def assert_same_points(a, b, atol=1e-5):
    """The two point sets match one to one within ``atol``."""
    from scipy.spatial import cKDTree

    assert len(a) == len(b)
    dist, idx = cKDTree(b).query(a)
    assert dist.max() < atol
    assert len(np.unique(idx)) == len(a)


def sphere(r=0.5, c=(0.0, 0.0, 0.0)):
    return lambda x, y, z: np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) - r


def torus_and_ball(x, y, z):
    torus = np.sqrt((np.sqrt(x * x + y * y) - 0.5) ** 2 + z * z) - 0.2
    ball = np.sqrt((x - 0.3) ** 2 + y * y + z * z) - 0.35
    return np.minimum(torus, ball)


def test_sphere_is_closed_outward_and_accurate():
    mesh = extract_mesh(AnalyticField(sphere(0.5)), 64)
    assert mesh.is_watertight
    assert mesh.volume > 0  # outward winding
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * 0.125, rel=0.01)
    radius = np.linalg.norm(mesh.vertices, axis=1)
    assert np.abs(radius - 0.5).max() < 2 / 63  # within a voxel


@pytest.mark.parametrize("slab", [2, 5, 17])
def test_chunked_equals_one_shot(slab):
    field = AnalyticField(torus_and_ball)
    one = extract_mesh(field, 48, slab=48)
    chunked = extract_mesh(field, 48, slab=slab)
    assert len(chunked.faces) == len(one.faces)
    assert len(chunked.vertices) == len(one.vertices)
    assert chunked.is_watertight and one.is_watertight
    assert_same_points(one.vertices, chunked.vertices)  # up to float32 rounding of marching cubes
    assert chunked.volume == pytest.approx(one.volume, rel=1e-6)
    assert chunked.euler_number == one.euler_number


def test_blocked_equals_plain_marching_cubes():
    from skimage.measure import marching_cubes

    field = AnalyticField(torus_and_ball)
    n = 75  # several 32-cell blocks per axis, some empty
    values = field.grid(n)
    v, f, _, _ = marching_cubes(values, 0.0)
    ours = extract_mesh(field, n, slab=9)
    ref = v.astype(np.float64) * 2 / (n - 1) - 1
    assert len(ours.faces) == len(f)
    assert len(ours.vertices) == len(ref)
    assert_same_points(ref, ours.vertices)
    assert ours.is_watertight


@pytest.mark.parametrize("fn", [sphere(0.5), lambda x, y, z: np.maximum(np.maximum(abs(x), abs(y)), abs(z)) - 0.5])
def test_samples_exactly_at_level(fn):
    # at 65 samples the lattice holds +-0.5: the field is exactly 0 on lattice points
    one = extract_mesh(AnalyticField(fn), 65)
    chunked = extract_mesh(AnalyticField(fn), 65, slab=6)
    assert one.is_watertight and chunked.is_watertight
    assert len(one.faces) == len(chunked.faces)
    assert_same_points(one.vertices, chunked.vertices)


def test_world_transform_and_value_scale():
    m = np.eye(4)
    m[:3, :3] *= 3.0
    m[:3, 3] = [10.0, -5.0, 2.0]
    info = {"kind": "sdf", "world_from_normalized": m.tolist(), "value_scale": 0.5, "value_offset": 0.0}
    field = AnalyticField(sphere(0.5), info)
    mesh = extract_mesh(field, 64)
    np.testing.assert_allclose(mesh.bounds.mean(0), [10, -5, 2], atol=1e-3)
    np.testing.assert_allclose(np.ptp(mesh.bounds, axis=0), [3, 3, 3], atol=0.05)
    # level is in value units: 0.05 value units = 0.1 field units -> radius 0.6 normalized
    grown = extract_mesh(field, 64, level=0.05)
    np.testing.assert_allclose(np.ptp(grown.bounds, axis=0), [3.6, 3.6, 3.6], atol=0.05)


def test_bounds_rank_and_resolution_tuple():
    field = AnalyticField(sphere(0.5))
    half = extract_mesh(field, (17, 33, 33), bounds=[[0, 1], [-1, 1], [-1, 1]], rank=3)
    assert half.vertices[:, 0].min() >= -1e-9
    assert half.vertices[:, 0].max() == pytest.approx(0.5, abs=0.02)
    assert set(field.ranks) == {3}
    same = extract_mesh(field, 33, bounds=[[0, -1, -1], [1, 1, 1]])  # (2, 3) form
    assert same.vertices[:, 0].min() >= -1e-9


@pytest.mark.parametrize("bad", [0, 1, 100000, 2.5, (8, 8)])
def test_resolution_validation(bad):
    with pytest.raises(ValueError, match="resolution"):
        extract_mesh(AnalyticField(sphere()), bad)


def test_resolution_message_names_value():
    with pytest.raises(ValueError, match="resolution must be between 2 and 4096, got 100000"):
        extract_mesh(AnalyticField(sphere()), 100000)


def test_bad_bounds_and_slab():
    with pytest.raises(ValueError, match="bounds"):
        extract_mesh(AnalyticField(sphere()), 8, bounds=[[1, -1], [-1, 1], [-1, 1]])
    with pytest.raises(ValueError, match="slab"):
        extract_mesh(AnalyticField(sphere()), 8, slab=1)


@pytest.mark.parametrize("r, word", [(-0.5, "positive"), (5.0, "negative")])
def test_no_surface(r, word):
    with pytest.raises(RuntimeError, match=f"No surface found at level 0.0: the field is everywhere .*{word}"):
        extract_mesh(AnalyticField(lambda x, y, z: x * 0 + y * 0 + z * 0 + (1 if r < 0 else -1)), 16)


def test_partial_slabs_are_skipped():
    calls = []
    field = AnalyticField(sphere(0.2, c=(0.7, 0, 0)))
    real = field.grid

    def grid(coords, rank=None, *, squeeze=True):
        out = real(coords, rank, squeeze=squeeze)
        calls.append(out.shape[0])
        return out

    field.grid = grid
    mesh = extract_mesh(field, 40, slab=4)
    assert mesh.is_watertight
    assert sum(calls) == 40  # every plane evaluated exactly once (shared planes reused)


@pytest.mark.parametrize("suffix", [".ply", ".obj", ".glb", ".stl"])
def test_save_mesh_round_trip(tmp_path, suffix):
    mesh = extract_mesh(AnalyticField(sphere(0.5)), 24)
    path = save_mesh(mesh, tmp_path / f"out{suffix}")
    back = trimesh.load(path, force="mesh")
    back.merge_vertices()
    assert len(back.faces) == len(mesh.faces)
    assert sorted(os.listdir(tmp_path)) == [f"out{suffix}"]  # no temp files left


def test_save_mesh_errors(tmp_path):
    mesh = trimesh.creation.box()
    with pytest.raises(InputError, match="ply"):
        save_mesh(mesh, tmp_path / "out.xyz")
    path = save_mesh(mesh, tmp_path / "out.ply")
    with pytest.raises(FileExistsError, match="--force"):
        save_mesh(mesh, path)
    save_mesh(trimesh.creation.icosphere(), path, overwrite=True)
    assert len(trimesh.load(path).faces) == len(trimesh.creation.icosphere().faces)
    with pytest.raises(FileNotFoundError):
        save_mesh(mesh, tmp_path / "missing" / "out.ply")


_RSS_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    import numpy as np
    sys.path.insert(0, {root!r})
    from finr3d.meshing import extract_mesh

    class Field:
        target_info = {{"kind": "sdf"}}
        def grid(self, coords, rank=None, *, squeeze=True):
            x, y, z = (np.asarray(c, np.float32) for c in coords)
            t = np.sqrt(x[:, None, None] ** 2 + y[None, :, None] ** 2) - np.float32(0.5)
            v = np.sqrt(t * t + z[None, None, :] ** 2) - np.float32(0.2)
            return v[..., None]

    extract_mesh(Field(), 16)  # imports (torch, scikit-image) are not part of the timing
    out = {{}}
    for res in {resolutions}:
        t0 = time.perf_counter()
        mesh = extract_mesh(Field(), res)
        out[res] = {{"seconds": time.perf_counter() - t0, "faces": len(mesh.faces)}}
        del mesh
    out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_1024_extraction_memory_bounded():
    script = _RSS_SCRIPT.format(root=str(ROOT), resolutions=[512, 1024])
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(result)
    assert result["max_rss_mb"] < 3000
    assert result["1024"]["faces"] > 1_000_000
