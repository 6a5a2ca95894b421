"""The SDF value profile (finr3d.profiles): tanh by default, the clamp for older files, both round-tripping
through the target, the compact file's FIELD flag, decoding to distances and iso levels in world units."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

import finr3d
from finr3d import codec, compact, profiles
from finr3d.decoding import decode_array
from finr3d.errors import FormatError
from finr3d.sdf import SDFTarget


def test_profile_maps_invert_within_the_exact_band():
    d = np.linspace(-0.2, 0.2, 401)
    for name in profiles.PROFILES:
        band = np.abs(d) <= profiles.reach(name) * 0.1 * (1 - 1e-9)
        v = profiles.to_field(d, 0.1, name)
        assert np.abs(v).max() <= profiles.saturation(name) + 1e-12
        np.testing.assert_allclose(profiles.to_distance(v, 0.1, name)[band], d[band], atol=1e-9)
    # the tanh profile has the clamp's slope at the surface and is smooth: no kink at |d| = t
    v = profiles.to_field(d, 0.1, "tanh")
    slope = np.gradient(v, d)
    assert slope[200] == pytest.approx(10.0, rel=1e-3)
    assert np.abs(np.diff(slope)).max() < 0.2  # the clamp jumps by 10 at |d| = 0.1
    assert profiles.saturation("tanh") == pytest.approx(math.tanh(2.0))
    assert profiles.to_distance(np.array([1.0, -1.0]), 0.1, "tanh") == pytest.approx([0.2, -0.2])  # finite
    with pytest.raises(ValueError, match="profile must be one of"):
        profiles.reach("cubic")
    with pytest.raises(ValueError, match="profile must be one of"):
        SDFTarget(trimesh.creation.icosphere(subdivisions=2), resolution=16, profile="cubic", cache=False)


def test_target_profiles_share_the_distance_grid_and_differ_in_field_values():
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.8)
    tanh = SDFTarget(mesh, resolution=24, cache=False)
    clamp = SDFTarget(mesh, resolution=24, cache=False, profile="clamp")
    assert tanh.profile == "tanh" and clamp.profile == "clamp"
    assert tanh.clip == pytest.approx(0.2) and clamp.clip == pytest.approx(0.1)
    np.testing.assert_allclose(np.clip(tanh.sdf, -0.1, 0.1), clamp.sdf, atol=1e-6)
    np.testing.assert_allclose(tanh.data.numpy()[..., 0], np.tanh(tanh.sdf / 0.1), atol=1e-6)
    np.testing.assert_allclose(clamp.data.numpy()[..., 0], clamp.sdf / 0.1, atol=1e-6)
    assert tanh.describe()["profile"] == "tanh" and clamp.describe()["profile"] == "clamp"
    # the band MAE is a distance for both profiles: a field off by 0.004 normalized units near the surface
    for t in (tanh, clamp):
        d = t.sdf[..., None]
        shifted = torch.from_numpy(profiles.to_field(d + 0.004, 0.1, t.profile).astype(np.float32))
        moved = np.abs(d) < 0.9 * t.clip - 0.004  # inside the exact band, clear of its edge
        band = np.abs(t.data.numpy()) < t.saturation * (1 - 1e-6)
        expected = 0.004 * (moved & band).sum() / band.sum()
        mae = t.metric(torch.where(torch.from_numpy(moved), shifted, t.data), t.data)["sdf_mae"]
        assert mae == pytest.approx(expected, rel=0.02), t.profile


@pytest.fixture(scope="module")
def sphere_fit():
    """A sphere of radius 0.6 fitted with each profile (short fits: the surface, not the accuracy, is tested)."""
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=0.6)
    out = {}
    for name in profiles.PROFILES:
        target = SDFTarget(mesh, resolution=32, cache=False, profile=name)
        out[name] = (target, finr3d.fit(target, rank=8, width=32, steps=60, seed=0))
    return mesh, out


def test_compact_file_carries_the_profile_and_decodes_distances(sphere_fit, tmp_path):
    mesh, fits = sphere_fit
    for name, (target, field) in fits.items():
        for metadata in (True, False):  # the FIELD flag alone decides: the META report is optional
            path = tmp_path / f"{name}-{metadata}.finr"
            field.save(path, metadata=metadata)
            ff = codec.read_field(path)
            assert bool(ff.spec.flags & compact.FLAG_TANH) == (name == "tanh")
            loaded = finr3d.load(path)
            assert loaded.target_info["profile"] == name
            # decode writes world distances: near the surface they match the exact sphere distance
            values = decode_array(loaded, resolution=32)[..., 0]
            x = np.linspace(-1, 1, 32)
            p = np.stack(np.meshgrid(x, x, x, indexing="ij"), -1) * target.scale + target.center
            exact = np.linalg.norm(p, axis=-1) - 0.6
            # a shell where tanh is far from linear (10-33 % below d / t) but the distances are exact
            shell = (np.abs(exact) > 0.3 * target.clip * target.scale) & (np.abs(exact) < 0.65 * target.clip * target.scale)
            assert np.abs(values - exact)[shell].mean() < 0.15 * target.truncation * target.scale, name  # 0.27 without the atanh
    editable = tmp_path / "editable.finr"
    fits["tanh"][1].save(editable, editable=True)
    assert finr3d.load(editable).target_info["profile"] == "tanh"
    assert codec.read_field(editable).spec.flags & compact.FLAG_TANH


def test_iso_level_is_a_world_distance_for_either_profile(sphere_fit):
    from finr3d.meshing import extract_mesh

    _, fits = sphere_fit
    for name, (target, field) in fits.items():
        level = 0.5 * target.truncation * target.scale  # half way into the band: tanh is non-linear there
        radius = np.linalg.norm(extract_mesh(field, 48, level=level).vertices - target.center, axis=1).mean()
        assert radius == pytest.approx(0.6 + level, abs=0.01), name


@pytest.mark.parametrize("flag, message", [(compact.FLAG_TANH, "tanh profile flag"),
                                           (compact.FLAG_TRIM, "trim flag")])
def test_sdf_only_flags_on_a_volume_are_refused(flag, message):
    spec = compact.FieldSpec("volume", "tucker", 3, 1, [(0,), (1,), (2,)], [4] * 3, [2] * 3,
                             np.array([[-1.0, 1.0]] * 3), 0.0, 1.0, np.zeros(1, np.float32), step=1e-3,
                             flags=compact.FLAG_COMPACT | flag)
    with pytest.raises(FormatError, match=message):
        compact.unpack_field(compact.pack_field(spec))
    sdf = compact.FieldSpec(**{**spec.__dict__, "kind": "sdf"})
    assert compact.unpack_field(compact.pack_field(sdf)).flags & flag


def test_cli_profile_flag_and_its_default(tmp_path, capsys):
    from finr3d.cli import main

    trimesh.creation.icosphere(subdivisions=2, radius=0.7).export(tmp_path / "ball.obj")
    common = ["--resolution", "16", "--steps", "5", "--rank", "4", "--width", "8", "--progress", "none"]
    for extra, flagged in (([], True), (["--profile", "clamp"], False), (["--profile", "tanh"], True)):
        out = tmp_path / f"ball{len(extra)}{flagged}.finr"
        assert main(["fit", str(tmp_path / "ball.obj"), "-o", str(out), *extra, *common]) == 0
        assert bool(codec.read_field(out).spec.flags & compact.FLAG_TANH) == flagged
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # argparse: a user's mistake, exit 2
        main(["fit", str(tmp_path / "ball.obj"), "-o", str(tmp_path / "x.finr"), "--profile", "cubic", *common])
    assert exc.value.code == 2 and "--profile" in capsys.readouterr().err
