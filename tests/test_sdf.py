"""Tests of finr3d.sdf: mesh loading, signs, the narrow-band SDF grid, SDFTarget and its cache."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from finr3d.errors import InputError
from finr3d.sdf import MeshQuery, SDFTarget, load_mesh, sdf_grid, winding_number

ROOT = Path(__file__).resolve().parents[1]
MESHES = Path(os.environ.get("FINR3D_SHARED", ROOT / ".." / "shared")) / "assets" / "meshes"


def shared_mesh(name: str) -> Path:
    path = MESHES / name
    if not path.is_file():
        pytest.skip(f"shared test asset {path} is absent (set FINR3D_SHARED)")
    return path


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FINR3D_CACHE", str(tmp_path / "cache"))


class GridField:
    """Stand-in for FactorizedField: samples a target's own ground truth."""

    kind = "sdf"
    channels = 1

    def __init__(self, target):
        self.target = target
        self.target_info = target.describe()

    def grid(self, coords, rank=None, *, squeeze=True):
        coords = [torch.as_tensor(np.asarray(c), dtype=torch.float32) for c in coords]
        out = self.target.sample(coords).numpy()
        return out[..., 0] if squeeze else out


def lattice_points(target):
    x = np.linspace(-1, 1, target.resolution)
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    return np.stack([X, Y, Z], -1) * target.scale + target.center


def brute_force_winding(mesh, points):
    """Exact generalized winding number, sum of triangle solid angles (numpy, small inputs)."""
    tri = np.asarray(mesh.vertices)[np.asarray(mesh.faces)]
    out = np.zeros(len(points))
    for i, q in enumerate(points):
        a, b, c = (tri[:, k] - q for k in range(3))
        la, lb, lc = (np.linalg.norm(v, axis=1) for v in (a, b, c))
        det = np.einsum("ij,ij->i", a, np.cross(b, c))
        den = la * lb * lc + (a * b).sum(1) * lc + (a * c).sum(1) * lb + (b * c).sum(1) * la
        out[i] = np.arctan2(det, den).sum() / (2 * np.pi)
    return out


def holed_sphere():
    m = trimesh.creation.icosphere(subdivisions=3)
    keep = m.triangles_center[:, 2] < 0.85
    return trimesh.Trimesh(m.vertices, m.faces[keep], process=True)


# --------------------------------------------------------------------------- accuracy


def test_sphere_matches_analytic_distance():
    target = SDFTarget(trimesh.creation.icosphere(subdivisions=5, radius=1.0), resolution=32, truncation=0.3)
    p = lattice_points(target)
    assert target.clip == 2 * 0.3  # the tanh profile's ground truth is exact out to twice the truncation
    analytic = np.clip((np.linalg.norm(p, axis=-1) - 1.0) / target.scale, -target.clip, target.clip)
    assert np.abs(target.sdf - analytic).max() < 2e-3
    assert target.report["sign_method"] == "raycast"
    assert target.sdf.shape == (32, 32, 32) and target.sdf.dtype == np.float32


def test_torus_matches_analytic_distance():
    mesh = trimesh.creation.torus(major_radius=1.0, minor_radius=0.4, major_sections=128, minor_sections=64)
    mesh.apply_translation([0.5, -2.0, 3.0])
    target = SDFTarget(mesh, resolution=40, truncation=0.2)
    p = lattice_points(target) - [0.5, -2.0, 3.0]
    analytic = np.sqrt((np.hypot(p[..., 0], p[..., 1]) - 1.0) ** 2 + p[..., 2] ** 2) - 0.4
    analytic = np.clip(analytic / target.scale, -target.clip, target.clip)
    assert np.abs(target.sdf - analytic).max() < 3e-3
    assert target.report["watertight"] and target.report["parts"] == 1


def test_narrow_band_equals_exact_grid():
    mesh = trimesh.creation.torus(major_radius=0.6, minor_radius=0.25)
    query = MeshQuery(mesh.vertices, mesh.faces, sign="winding")
    banded, info = sdf_grid(query, 48, truncation=0.1)
    exact, _ = sdf_grid(query, 48, truncation=None)
    assert len(info["levels"]) > 1 and info["band_fraction"] < 0.5
    np.testing.assert_array_equal(banded, np.clip(exact, -0.1, 0.1))


# --------------------------------------------------------------------------- signs


def test_winding_number_values():
    sphere = trimesh.creation.icosphere(subdivisions=3)
    pts = np.array([[0, 0, 0], [0.5, 0.1, -0.2], [2, 0, 0], [0, -3, 1]], float)
    np.testing.assert_allclose(winding_number(sphere, pts), [1, 1, 0, 0], atol=1e-9)
    np.testing.assert_allclose(winding_number(sphere, pts, exact=True), [1, 1, 0, 0], atol=0.02)
    flipped = trimesh.Trimesh(sphere.vertices, sphere.faces[:, ::-1])
    np.testing.assert_allclose(winding_number(flipped, pts), [-1, -1, 0, 0], atol=1e-9)
    # two overlapping spheres: 2 where they overlap, still inside
    both = trimesh.util.concatenate([sphere, sphere.copy().apply_translation([0.5, 0, 0])])
    assert winding_number(both, [[0.25, 0, 0]])[0] == pytest.approx(2.0)
    assert MeshQuery.from_mesh(both, sign="winding").inside([[0.25, 0, 0]])[0]


def test_open_sphere_signs_by_winding():
    mesh = holed_sphere()
    target = SDFTarget(mesh, resolution=24, truncation=0.5)
    assert not target.report["watertight"]
    assert target.report["boundary_edges"] > 0
    assert target.report["sign_method"] == "winding"
    centre = (np.array([0.0, 0.0, 0.0]) - target.center) / target.scale
    value = target.sample([torch.tensor([c], dtype=torch.float32) for c in centre])
    assert float(value) < 0
    assert float(target.sdf[0, 0, 0]) > 0
    inside = target.sdf < 0
    assert 0.25 < inside.mean() < 0.45  # about the sphere's share of the cube (0.38 closed)


@pytest.mark.parametrize("name", ["teapot.obj", "suzanne.obj", pytest.param("ogre.obj", marks=pytest.mark.slow)])
def test_open_mesh_signs_match_exact_winding(name):
    mesh, _ = load_mesh(shared_mesh(name))
    target = SDFTarget(mesh, resolution=32)
    assert target.report["sign_method"] == "winding"
    h = 2 / 31
    idx = np.argwhere(np.abs(target.sdf) > 1.5 * h)  # clear of the surface
    rng = np.random.default_rng(0)
    idx = idx[rng.choice(len(idx), size=min(150, len(idx)), replace=False)]
    pts = lattice_points(target)[tuple(idx.T)]
    w = brute_force_winding(mesh, pts)
    clear = np.abs(np.abs(w) - 0.5) > 0.1
    negative = target.sdf[tuple(idx.T)] < 0
    assert clear.sum() > 100
    np.testing.assert_array_equal(negative[clear], (np.abs(w) > 0.5)[clear])


def test_raycast_and_winding_agree_on_closed_mesh():
    mesh = trimesh.creation.torus(major_radius=0.6, minor_radius=0.25)
    a, _ = sdf_grid(MeshQuery.from_mesh(mesh, sign="raycast"), 32, truncation=0.2)
    b, _ = sdf_grid(MeshQuery.from_mesh(mesh, sign="winding"), 32, truncation=0.2)
    np.testing.assert_array_equal(np.sign(a), np.sign(b))


# --------------------------------------------------------------------------- reports and transforms


def test_reports():
    sphere = trimesh.creation.icosphere(subdivisions=2)
    target = SDFTarget(sphere, resolution=16)
    rep = target.describe()["mesh_report"]
    assert rep["watertight"] is True and rep["parts"] == 1 and rep["boundary_edges"] == 0
    assert rep["faces"] == len(sphere.faces) and rep["vertices"] == len(sphere.vertices)
    assert rep["sign_method"] == "raycast"
    assert rep["removed_faces"] == {"nonfinite": 0, "degenerate": 0}
    json.dumps(target.describe())
    two = trimesh.util.concatenate([sphere, sphere.copy().apply_translation([3, 0, 0])])
    assert SDFTarget(two, resolution=16).report["parts"] == 2
    assert SDFTarget(two, resolution=16).report["sign_method"] == "winding"


def test_spot_is_watertight_after_merging_seams():
    target = SDFTarget(shared_mesh("spot.obj"), resolution=16)
    assert target.report["watertight"]
    assert target.report["sign_method"] == "raycast"


def test_world_transform_round_trip():
    from finr3d.meshing import extract_mesh

    mesh = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    mesh.apply_scale([3.0, 1.5, 2.0])
    mesh.apply_translation([10.0, -5.0, 2.0])
    target = SDFTarget(mesh, resolution=48, margin=0.1)
    info = target.describe()
    m = np.asarray(info["world_from_normalized"])
    np.testing.assert_allclose(m[:3, 3], mesh.bounds.mean(0))
    np.testing.assert_allclose(np.diag(m)[:3], [3.0 / 0.9] * 3)
    out = extract_mesh(GridField(target), 48)
    voxel = 2 * target.scale / 47
    np.testing.assert_allclose(out.bounds, mesh.bounds, atol=voxel)
    assert out.volume == pytest.approx(mesh.volume, rel=0.03)


def test_scene_is_flattened_with_transforms(tmp_path):
    scene = trimesh.Scene()
    scene.add_geometry(trimesh.creation.box(), transform=trimesh.transformations.translation_matrix([5, 0, 0]))
    scene.add_geometry(trimesh.creation.box(), transform=trimesh.transformations.translation_matrix([-5, 0, 0]))
    path = tmp_path / "scene.glb"
    scene.export(path)
    target = SDFTarget(path, resolution=16)
    np.testing.assert_allclose(target.mesh.bounds, [[-5.5, -0.5, -0.5], [5.5, 0.5, 0.5]], atol=1e-6)
    assert target.report["parts"] == 2


# --------------------------------------------------------------------------- training interface


def test_sample_loss_and_metric():
    target = SDFTarget(trimesh.creation.icosphere(subdivisions=3), resolution=16)
    coords = [target.axis_coords(i) for i in range(3)]
    truth = target.sample(coords)
    assert truth.shape == (16, 16, 16, 1)
    torch.testing.assert_close(truth, target.data)
    # field units: tanh(sdf / truncation) of distances clamped at twice the truncation
    assert float(truth.abs().max()) == pytest.approx(math.tanh(2.0), rel=1e-6) == pytest.approx(target.saturation)
    mid = (coords[0][3] + coords[0][4]) / 2
    between = target.sample([mid[None], coords[1][5:6], coords[2][7:8]])
    torch.testing.assert_close(between[0, 0, 0], (target.data[3, 5, 7] + target.data[4, 5, 7]) / 2)
    assert float(target.loss(truth, truth)) == 0.0
    # beyond the truncation on the right side costs nothing; the wrong side does and has a gradient
    far = truth.clone()
    far[truth >= target.saturation * (1 - 1e-6)] = 3.0
    assert float(target.loss(far, truth)) == 0.0
    pred = torch.where(truth >= target.saturation * (1 - 1e-6), -2.0 * torch.ones_like(truth), truth).requires_grad_(True)
    loss = target.loss(pred, truth)
    assert float(loss.detach()) > 0
    loss.backward()
    assert pred.grad.abs().sum() > 0
    m = target.metric(truth, truth)
    assert m["iou"] == 1.0 and m["sdf_mae"] == 0.0
    assert target.metric(-truth, truth)["iou"] == 0.0
    coords_d, values = target.dense(8**3)
    assert values.shape == (8, 8, 8, 1) and len(coords_d) == 3


def test_evaluate_on_own_ground_truth():
    target = SDFTarget(trimesh.creation.icosphere(subdivisions=4), resolution=32)
    scores = target.evaluate(GridField(target), resolution=48)
    assert scores["iou"] > 0.97
    assert scores["chamfer_l1"] < 0.005
    assert scores["grid_iou"] == 1.0


# --------------------------------------------------------------------------- bad input


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="no such file"):
        SDFTarget("/nonexistent/mesh.obj")


def test_unsupported_format(tmp_path):
    path = tmp_path / "mesh.xyz"
    path.write_text("0 0 0\n")
    with pytest.raises(InputError, match="unsupported mesh type"):
        SDFTarget(path)


def test_point_cloud(tmp_path):
    path = tmp_path / "cloud.ply"
    trimesh.PointCloud(np.random.default_rng(0).normal(size=(50, 3))).export(path)
    with pytest.raises(InputError, match="point cloud"):
        SDFTarget(path)


@pytest.mark.parametrize("content, suffix", [("solid x\nendsolid x\n", ".stl"), ("# nothing\n", ".obj"),
                                             ("v 0 0 0\nv 1 0 0\n", ".obj")])
def test_empty_mesh(tmp_path, content, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_text(content)
    with pytest.raises(InputError):
        SDFTarget(path)


def test_empty_file(tmp_path):
    path = tmp_path / "zero.obj"
    path.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        SDFTarget(path)


def test_nan_vertices_dropped_with_warning():
    sphere = trimesh.creation.icosphere(subdivisions=2)
    v = sphere.vertices.copy()
    v[0] = np.nan
    mesh = trimesh.Trimesh(v, sphere.faces, process=False)
    with pytest.warns(UserWarning, match="NaN/Inf"):
        target = SDFTarget(mesh, resolution=16)
    n_bad = int((sphere.faces == 0).any(1).sum())
    assert target.report["removed_faces"]["nonfinite"] == n_bad
    assert np.isfinite(target.sdf).all()
    all_bad = trimesh.Trimesh(np.full((3, 3), np.inf), [[0, 1, 2]], process=False)
    with pytest.raises(InputError, match="NaN/Inf"):
        SDFTarget(all_bad)


def test_zero_area_faces_removed_with_warning():
    sphere = trimesh.creation.icosphere(subdivisions=2)
    n = len(sphere.vertices)
    v = np.vstack([sphere.vertices, [[0, 0, 0], [0.1, 0, 0], [0.2, 0, 0]]])
    f = np.vstack([sphere.faces, [[n, n + 1, n + 2], [0, 0, 1]]])
    with pytest.warns(UserWarning, match="zero-area"):
        target = SDFTarget(trimesh.Trimesh(v, f, process=False), resolution=16)
    assert target.report["removed_faces"]["degenerate"] == 2
    assert target.report["watertight"]
    flat = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [2, 0, 0]], [[0, 1, 2]], process=False)
    with pytest.raises(InputError, match="zero area"):
        SDFTarget(flat)


@pytest.mark.parametrize("kw", [dict(resolution=0), dict(resolution=100000), dict(resolution=16.5),
                                dict(sign="magic"), dict(margin=0.7), dict(truncation=-1.0)])
def test_bad_options(kw):
    with pytest.raises(ValueError):
        SDFTarget(trimesh.creation.box(), **kw)


# --------------------------------------------------------------------------- cache


def test_cache_hit_and_corruption(tmp_path):
    mesh = trimesh.creation.torus(major_radius=0.6, minor_radius=0.25)
    first = SDFTarget(mesh, resolution=20)
    assert first.report["cache"] == "miss"
    files = list((tmp_path / "cache").glob("sdf-*.npz"))
    assert len(files) == 1
    second = SDFTarget(mesh, resolution=20)
    assert second.report["cache"] == "hit"
    np.testing.assert_array_equal(first.sdf, second.sdf)
    assert SDFTarget(mesh, resolution=24).report["cache"] == "miss"  # other settings, other key
    files[0].write_bytes(b"not a zip file at all")
    with pytest.warns(UserWarning, match="cache"):
        third = SDFTarget(mesh, resolution=20)
    assert third.report["cache"] == "miss"
    np.testing.assert_array_equal(first.sdf, third.sdf)
    assert SDFTarget(mesh, resolution=20).report["cache"] == "hit"  # rewritten
    assert SDFTarget(mesh, resolution=20, cache=False).report["cache"] == "off"


def test_cache_with_wrong_contents(tmp_path):
    mesh = trimesh.creation.icosphere(subdivisions=2)
    SDFTarget(mesh, resolution=16)
    (path,) = (tmp_path / "cache").glob("sdf-*.npz")
    np.savez(path, grid=np.full((16, 16, 16), np.nan, np.float32), meta=np.frombuffer(b"{}", np.uint8))
    with pytest.warns(UserWarning, match="cache"):
        target = SDFTarget(mesh, resolution=16)
    assert np.isfinite(target.sdf).all()


# --------------------------------------------------------------------------- timing (reported, not asserted)


@pytest.mark.slow
@pytest.mark.parametrize("resolution", [128, 256])
def test_bunny_ground_truth_time(resolution):
    target = SDFTarget(shared_mesh("bunny.obj"), resolution=resolution, cache=False)
    print(f"bunny {resolution}^3: {target.report['gt_seconds']} s, band {target.report['band_fraction']:.3f}")
    assert target.report["sign_method"] == "raycast"
    assert (target.sdf < 0).any() and (target.sdf > 0).any()


def _open_box():
    box = trimesh.creation.box(extents=(1.6, 1.6, 1.6))
    return trimesh.Trimesh(box.vertices, box.faces[~(box.face_normals[:, 2] > 0.9)], process=False)


@pytest.mark.parametrize("islands,truncation", [(False, 0.1), (True, 0.1), (True, 0.2)])
def test_open_box_ground_truth_has_no_floating_components(islands, truncation):
    """The winding estimate leaves sign islands above the hole of an open box (4 blobs at 40^3, up to 0.7
    normalized units from the mesh); flip_sign_islands removes them: every component touches the mesh."""
    from skimage.measure import marching_cubes

    mesh = _open_box()
    query = MeshQuery.from_mesh(mesh, sign="winding")
    grid, info = sdf_grid(query, 40, truncation=truncation, islands=islands)  # 0.2: the tanh profile's reach
    verts, faces, _, _ = marching_cubes(grid, 0.0, spacing=(2 / 39,) * 3)
    parts = trimesh.Trimesh(verts - 1, faces).split(only_watertight=False)
    gaps = [float(query.distance(p.vertices).min()) for p in parts]
    voxel_diagonal = 2 / 39 * np.sqrt(3)
    if islands:
        assert info["islands"] > 0 or truncation > 0.1  # at 0.2 the coarser levels already get the signs right
        assert max(gaps) <= voxel_diagonal
    else:
        assert max(gaps) > 5 * voxel_diagonal  # the failure the flip fixes is present without it


def test_flip_sign_islands_keeps_genuine_parts_and_the_exterior():
    from finr3d.sdf import flip_sign_islands

    ax = np.linspace(-1, 1, 33)
    X, Y, Z = np.meshgrid(ax, ax, ax, indexing="ij")
    two = np.minimum(np.sqrt((X - 0.5) ** 2 + Y**2 + Z**2) - 0.3, np.sqrt((X + 0.5) ** 2 + Y**2 + Z**2) - 0.05)
    grid = np.clip(two, -0.2, 0.2).astype(np.float32)
    bogus = grid.copy()
    bogus[16, 28, 16] = -0.2  # an inside voxel far from both spheres
    bogus[24, 16, 16] = 0.2   # an outside voxel deep inside the large sphere
    assert flip_sign_islands(bogus, 2 / 32) == 2
    np.testing.assert_array_equal(bogus, grid)
    assert flip_sign_islands(grid, 2 / 32) == 0  # the small sphere (a few voxels) stays


def test_local_detail_is_opt_in_and_brings_the_field_to_the_fine_ground_truth(tmp_path, capsys):
    """The default fit stores the global field alone (a compact file); ``--detail`` adds the sparse residual
    on the 2x finer band lattice, and the decoded file then matches that finer truth near the surface."""
    from finr3d import codec
    from finr3d.cli import main

    mesh = trimesh.creation.capsule(height=0.8, radius=0.45)
    mesh.export(tmp_path / "capsule.obj")
    plain, detailed = tmp_path / "plain.finr", tmp_path / "detail.finr"
    common = ["--resolution", "16", "--steps", "30", "--rank", "6", "--width", "16", "--progress", "none"]
    assert main(["fit", str(tmp_path / "capsule.obj"), "-o", str(plain), *common]) == 0
    assert main(["fit", str(tmp_path / "capsule.obj"), "-o", str(detailed), "--detail", *common]) == 0
    assert codec.SECTION_DETAIL not in codec.read_field(plain).sections
    assert codec.SECTION_DETAIL in codec.read_field(detailed).sections
    fine = SDFTarget(tmp_path / "capsule.obj", resolution=16, detail_resolution="auto")
    truth = np.tanh(fine.sdf_fine / np.float32(fine.truncation))  # field units (tanh profile) on the 31^3 lattice
    band = np.abs(fine.sdf_fine) < fine.detail_band
    errors = {}
    for name, path in (("plain", plain), ("detail", detailed)):
        values = codec.decode_grid(path, resolution=fine.detail_resolution)
        errors[name] = float(np.abs(values - truth)[band].mean())
    # the detail is quantized with 0.1 fine voxel: its error is about a quarter step, far below the global fit's
    assert errors["detail"] < 0.5 * errors["plain"], errors
    capsys.readouterr()
    assert main(["fit", str(tmp_path / "plain.finr"), "-o", str(tmp_path / "x.finr"), "--kind", "image",
                 "--detail"]) == 2
    assert "--detail apply to meshes only" in capsys.readouterr().err


def test_auto_resolution_takes_the_finer_grid_only_where_the_coarse_misplaces_the_surface(monkeypatch):
    import finr3d.sdf as sdf_module

    plate = trimesh.creation.box(extents=(1.0, 0.05, 0.8))  # thin: 0.05 of 1.0
    plate.apply_transform(trimesh.transformations.rotation_matrix(0.6, [0.3, 0.2, 1.0]))
    coarse = SDFTarget(plate, resolution=16, cache=False)
    fine = SDFTarget(plate, resolution=48, cache=False)
    assert coarse.surface_error() > 0.06 > 0.02 > fine.surface_error()  # a 16^3 grid misplaces a thin plate
    monkeypatch.setattr(sdf_module, "AUTO_RESOLUTIONS", (16, 24))
    monkeypatch.setattr(sdf_module, "AUTO_SURFACE_FRACTION", 0.05)
    auto = SDFTarget(plate, resolution="auto", cache=False)
    assert auto.resolution == 24 and auto.shape == (24, 24, 24)
    probe = auto.report["resolution_probe"]
    assert probe["resolution"] == 16 and probe["chosen"] == 24 and probe["off_quarter_voxel"] > 0.05
    assert auto.describe()["resolution"] == 24
    detailed = SDFTarget(plate, resolution="auto", cache=False, detail_resolution="auto")
    assert detailed.resolution == 16 and detailed.sdf_fine is not None  # the asked-for detail is kept
    assert detailed.report["resolution_probe"]["skipped"] == "detail_resolution"
    ball = SDFTarget(trimesh.creation.icosphere(subdivisions=3, radius=0.8), resolution="auto", cache=False)
    assert ball.resolution == 16 and ball.report["resolution_probe"]["chosen"] == 16  # smooth: the coarse grid
    with pytest.raises(ValueError, match="integer or 'auto'"):
        SDFTarget(plate, resolution="fine", cache=False)


def test_open_box_target_default_profile_meshes_without_floating_parts():
    """The default target (tanh profile, distances to twice the truncation) of an open box: every component of
    its level set touches the input mesh."""
    from skimage.measure import marching_cubes

    mesh = _open_box()
    target = SDFTarget(mesh, resolution=40, cache=False)
    assert target.profile == "tanh" and target.report["sign_method"] == "winding"
    verts, faces, _, _ = marching_cubes(target.data.numpy()[..., 0], 0.0, spacing=(2 / 39,) * 3)
    parts = trimesh.Trimesh(verts - 1, faces).split(only_watertight=False)
    query = MeshQuery((np.asarray(mesh.vertices) - target.center) / target.scale, mesh.faces, sign="winding")
    gaps = [float(query.distance(p.vertices).min()) for p in parts]
    assert max(gaps) <= 2 / 39 * np.sqrt(3)
