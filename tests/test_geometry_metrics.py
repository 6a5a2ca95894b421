"""Tests of finr3d.geometry_metrics on cases with known answers."""

from __future__ import annotations

import math

import pytest
import trimesh

from finr3d.geometry_metrics import chamfer, mesh_metrics, volumetric_iou

DIAG = 2 * math.sqrt(3)  # bounding-box diagonal of the unit-radius reference sphere


def sphere(radius=1.0, subdivisions=5):
    return trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)


@pytest.fixture(scope="module")
def unit_sphere():
    return sphere()


def test_identical_meshes_score_perfectly(unit_sphere):
    m = chamfer(unit_sphere, unit_sphere.copy(), n_samples=20_000)
    assert m["chamfer_l1"] < 1e-6
    assert m["chamfer_l2"] < 1e-12
    assert m["hausdorff95"] < 1e-6
    assert m["fscore_0.5"] == 1.0 and m["fscore_1"] == 1.0
    assert m["normal_consistency"] > 0.999
    assert volumetric_iou(unit_sphere, unit_sphere.copy(), 20_000) == 1.0


def test_world_offset_does_not_hurt_precision(unit_sphere):
    far = unit_sphere.copy().apply_translation([1000.0, -2000.0, 500.0])
    assert chamfer(far, far.copy(), n_samples=10_000)["chamfer_l1"] < 1e-6


def test_concentric_spheres_analytic(unit_sphere):
    bigger = sphere(1.1)
    m = chamfer(bigger, unit_sphere, n_samples=20_000)
    # every point is 0.1 from the other sphere (up to facetting, ~1e-3)
    assert m["chamfer_l1"] == pytest.approx(0.1 / DIAG, rel=0.02)
    assert m["chamfer_l2"] == pytest.approx((0.1 / DIAG) ** 2, rel=0.04)
    assert m["hausdorff95"] == pytest.approx(0.1 / DIAG, rel=0.02)
    assert m["fscore_0.5"] == 0.0 and m["fscore_1"] == 0.0  # 0.1 > 1% of 3.46
    assert m["normal_consistency"] > 0.99
    iou = volumetric_iou(bigger, unit_sphere, 100_000)
    assert iou == pytest.approx(1 / 1.1**3, abs=0.015)


@pytest.mark.parametrize("radius, f05, f1", [(1.01, 1.0, 1.0), (1.025, 0.0, 1.0)])
def test_fscore_thresholds(unit_sphere, radius, f05, f1):
    # offsets 0.01 and 0.025 are 0.29% and 0.72% of the diagonal
    m = chamfer(sphere(radius), unit_sphere, n_samples=10_000)
    assert m["fscore_0.5"] == pytest.approx(f05, abs=0.01)
    assert m["fscore_1"] == pytest.approx(f1, abs=0.01)


def test_open_mesh_volume_uses_winding(unit_sphere):
    m = sphere(subdivisions=4)
    holed = trimesh.Trimesh(m.vertices, m.faces[m.triangles_center[:, 2] < 0.9])
    assert not holed.is_watertight
    assert volumetric_iou(holed, unit_sphere, 20_000) > 0.97
    assert volumetric_iou(holed, unit_sphere, 20_000, near_surface=True) > 0.9


def test_mesh_metrics_keys_and_shift(unit_sphere):
    shifted = unit_sphere.copy().apply_translation([0.2, 0, 0])
    m = mesh_metrics(shifted, unit_sphere, n_samples=5_000, n_volume=20_000)
    for key in ("iou", "iou_near", "chamfer_l1", "chamfer_l2", "hausdorff95", "normal_consistency",
                "fscore_0.5", "fscore_1", "accuracy", "completeness", "faces", "vertices"):
        assert key in m
    assert 0.5 < m["iou"] < 0.95
    assert m["iou_near"] < m["iou"]  # near-surface points are the discriminating ones
    assert 0 < m["chamfer_l1"] < 0.2 / DIAG


def test_bad_input(unit_sphere):
    empty = trimesh.Trimesh()
    with pytest.raises(ValueError, match="no faces"):
        chamfer(empty, unit_sphere)
    with pytest.raises(ValueError):
        chamfer(unit_sphere, unit_sphere, n_samples=0)
