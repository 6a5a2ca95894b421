"""Layered SDFs (finr3d.layers): interpenetrating parts keep their hidden surfaces, open meshes lose their caps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

import finr3d
from finr3d import codec, compact
from finr3d.geometry_metrics import chamfer
from finr3d.layers import assign_layers
from finr3d.meshing import extract_mesh
from finr3d.sdf import SDFTarget


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FINR3D_CACHE", str(tmp_path / "cache"))


def _box(extents, center, open_face: bool = False):
    box = trimesh.creation.box(extents=extents)
    box.apply_translation(center)
    if open_face:  # drop the two triangles of the +z face: an open box
        top = np.flatnonzero(box.triangles_center[:, 2] > center[2] + extents[2] / 2 - 1e-9)
        box = trimesh.Trimesh(box.vertices, np.delete(box.faces, top, axis=0), process=False)
    return box


def _body_and_knob(open_knob: bool = False):
    """A box with a smaller box half sunk into its +x face: the knob's inner half, and the body's face inside
    the knob, are surfaces the union of the two solids hides."""
    body = _box((1.0, 0.8, 0.8), (0.0, 0.0, 0.0))
    knob = _box((0.4, 0.4, 0.4), (0.5, 0.0, 0.0), open_face=open_knob)
    return trimesh.util.concatenate([body, knob])


class ExactField:
    """Stand-in for a fitted field: samples a target's own ground truth (every layer)."""

    kind = "sdf"

    def __init__(self, target):
        self.target = target
        self.channels = target.channels
        self.target_info = target.describe()

    def grid(self, coords, rank=None, *, squeeze=True):
        coords = [torch.as_tensor(np.asarray(c), dtype=torch.float32) for c in coords]
        out = self.target.sample(coords).numpy()
        return out[..., 0] if squeeze and out.shape[-1] == 1 else out


def test_assign_layers_separates_only_interpenetrating_parts():
    mesh = _body_and_knob()
    labels, info = assign_layers(mesh.vertices, mesh.faces)
    assert info["layers"] == 2 and info["parts"] == 2 and info["overlaps"] == 1
    body = np.arange(len(mesh.faces)) < 12  # concatenate keeps the body's 12 faces first
    assert (labels[body] == 0).all() and (labels[~body] == 1).all()  # the larger part is layer 0
    apart = trimesh.util.concatenate([_box((0.5,) * 3, (-0.6, 0, 0)), _box((0.5,) * 3, (0.6, 0, 0))])
    labels, info = assign_layers(apart.vertices, apart.faces)
    assert info["layers"] == 1 and info["parts"] == 2 and (labels == 0).all()  # side by side: one solid
    labels, info = assign_layers(mesh.vertices, mesh.faces, max_layers=1)
    assert info["layers"] == 1 and (labels == 0).all()
    # three mutually interpenetrating boxes need three layers; capped at two, one part shares a layer
    three = trimesh.util.concatenate([_box((1.0, 0.8, 0.8), (0, 0, 0)), _box((0.6,) * 3, (0.4, 0, 0)),
                                      _box((0.5,) * 3, (0.3, 0.2, 0))])
    assert assign_layers(three.vertices, three.faces)[1]["layers"] == 3
    labels, info = assign_layers(three.vertices, three.faces, max_layers=2)
    assert info["layers"] == 2 and info["merged"] == 1
    # a part with under 1 % of the area is not worth a channel: it joins the body's layer
    speck = trimesh.util.concatenate([_box((1.0, 0.8, 0.8), (0, 0, 0)), _box((0.06,) * 3, (0.5, 0, 0))])
    labels, info = assign_layers(speck.vertices, speck.faces)
    assert info["layers"] == 1 and info["merged"] == 1 and (labels == 0).all()
    assert assign_layers(speck.vertices, speck.faces, min_share=0.0)[1]["layers"] == 2
    with pytest.raises(ValueError, match="max_layers"):
        assign_layers(mesh.vertices, mesh.faces, max_layers=0)


def test_assign_layers_tests_only_the_largest_parts(monkeypatch):
    import finr3d.layers as layers_module

    # a chain of boxes, each sunk into the next, largest first: without a cap they alternate between two layers
    boxes = [_box((0.4 - 0.02 * i,) * 3, (-0.8 + 0.3 * i, 0.0, 0.0)) for i in range(6)]
    chain = trimesh.util.concatenate(boxes)
    labels, info = assign_layers(chain.vertices, chain.faces)
    assert info["layers"] == 2 and info["tested_parts"] == 6
    monkeypatch.setattr(layers_module, "MAX_PARTS", 3)  # the three largest are tested, the rest stay in the union
    labels, info = assign_layers(chain.vertices, chain.faces)
    assert info["tested_parts"] == 3 and info["layers"] == 2
    per_box = labels.reshape(6, 12)[:, 0]  # concatenate keeps each box's 12 faces together, in order
    assert list(per_box) == [0, 1, 0, 0, 0, 0]


def test_layered_target_keeps_the_hidden_surfaces():
    mesh = _body_and_knob()
    layered = SDFTarget(mesh, resolution=40)
    union = SDFTarget(mesh, resolution=40, layers=1)
    assert layered.layers == 2 and layered.channels == 2 and layered.data.shape == (40, 40, 40, 2)
    assert union.layers == 1 and union.channels == 1 and union.sdf_layers is None
    assert layered.describe()["layers"] == 2 and layered.report["layers"]["layers"] == 2
    np.testing.assert_allclose(layered.sdf, layered.sdf_layers.min(axis=3))  # the solid is the union
    assert np.mean((layered.sdf < 0) == (union.sdf < 0)) > 0.999
    assert not layered.trim  # closed parts: no caps to trim
    scores = {name: chamfer(extract_mesh(ExactField(t), 64), mesh, 20000)
              for name, t in (("layered", layered), ("union", union))}
    # the union misses the hidden faces (completeness); the layers find them without adding false surface
    assert scores["layered"]["completeness"] < 0.3 * scores["union"]["completeness"]
    assert scores["layered"]["accuracy"] < 2 * scores["union"]["accuracy"] + 1e-3
    again = SDFTarget(mesh, resolution=40)  # the cache keeps every layer
    assert again.report["cache"] == "hit" and again.layers == 2
    np.testing.assert_array_equal(again.data.numpy(), layered.data.numpy())
    import finr3d.sdf as sdf_module

    with pytest.MonkeyPatch.context() as mp:  # layers are full grids: a memory bound keeps fine grids to one
        mp.setattr(sdf_module, "_LAYER_VALUES", 40**3)
        assert SDFTarget(mesh, resolution=40, cache=False).layers == 1
    with pytest.raises(ValueError, match="layers must be"):
        SDFTarget(mesh, resolution=16, layers=5, cache=False)
    with pytest.raises(ValueError, match="layers must be"):
        SDFTarget(mesh, resolution=16, layers="many", cache=False)


class JumpField:
    """A tanh-profile SDF of the plane z = 0 that, for |x| < 0.5, jumps sign across it without a surface (as the
    winding number does over a hole): a genuine surface for |x| >= 0.5 only."""

    kind = "sdf"
    channels = 1

    def __init__(self, trim: bool):
        self.target_info = {"kind": "sdf", "profile": "tanh", "truncation": 0.1, "value_scale": 0.1,
                            "value_offset": 0.0, "trim": trim}

    def grid(self, coords, rank=None, *, squeeze=True):
        x, _, z = np.meshgrid(*[np.asarray(c, np.float64) for c in coords], indexing="ij")
        jump = np.sign(z) * 0.15 + 0.05 * z  # |d| >= 0.15 on both sides: no zero distance at the crossing
        d = np.where(np.abs(x) < 0.5, jump, z)
        out = np.tanh(d / 0.1).astype(np.float32)[..., None]
        return out[..., 0] if squeeze else out


def test_trim_drops_sign_jumps_and_keeps_surfaces():
    full = extract_mesh(JumpField(trim=False), 41)
    trimmed = extract_mesh(JumpField(trim=True), 41)
    x_full = full.triangles_center[:, 0]
    x_trim = trimmed.triangles_center[:, 0]
    assert (np.abs(x_full) < 0.4).any()  # untrimmed, the jump meshes as a surface
    assert (np.abs(x_trim) > 0.45).all()  # trimmed, only the genuine plane is left
    assert np.isclose(trimmed.area, 2 * 2.0 * 0.5, rtol=0.1)  # 2 x 2 plane minus the 1 x 2 jump strip


def test_layered_open_field_round_trips_its_layers_and_trim_flag(tmp_path):
    mesh = _body_and_knob(open_knob=True)
    target = SDFTarget(mesh, resolution=24, cache=False)
    assert target.layers == 2 and target.trim  # an open part: its cap is trimmed
    field = finr3d.fit(target, rank=8, width=32, steps=40, seed=0)
    assert field.channels == 2 and field.target_info["trim"]
    axis = [np.linspace(-1, 1, 20)] * 3
    for metadata in (True, False):  # the FIELD flags and channels alone carry it: the META is optional
        path = tmp_path / f"layered-{metadata}.finr"
        field.save(path, metadata=metadata)
        assert codec.read_field(path).spec.flags & compact.FLAG_TRIM
        loaded = finr3d.load(path)
        assert loaded.channels == 2 and loaded.target_info["trim"] is True
        via_torch = np.asarray(loaded.grid([torch.as_tensor(a, dtype=torch.float32) for a in axis], squeeze=False))
        via_numpy = codec.decode_grid(path, resolution=20)  # numpy only, every layer
        assert via_numpy.shape == (20, 20, 20, 2)
        np.testing.assert_allclose(via_numpy, via_torch, atol=1e-5)
        trimmed = extract_mesh(loaded, 32)
        loaded.target_info["trim"] = False
        assert len(extract_mesh(loaded, 32).faces) > len(trimmed.faces) > 0  # the open knob's cap is dropped
    editable = tmp_path / "editable.finr"
    field.save(editable, editable=True)
    assert finr3d.load(editable).target_info["trim"] is True


def test_cli_layers_flag(tmp_path, capsys):
    from finr3d.cli import main

    _body_and_knob().export(tmp_path / "knob.obj")
    common = ["--resolution", "16", "--steps", "5", "--rank", "4", "--width", "8", "--progress", "none"]
    for extra, channels in (([], 2), (["--layers", "1"], 1), (["--layers", "auto"], 2)):
        out = tmp_path / f"knob{len(extra)}{channels}.finr"
        assert main(["fit", str(tmp_path / "knob.obj"), "-o", str(out), *extra, *common]) == 0
        assert codec.read_field(out).spec.channels == channels
    capsys.readouterr()
    assert main(["info", str(tmp_path / "knob02.finr")]) == 0
    assert "SDF layers" in capsys.readouterr().out
    np.save(tmp_path / "vol.npy", np.random.default_rng(0).random((8, 8, 8)).astype(np.float32))
    code = main(["fit", str(tmp_path / "vol.npy"), "-o", str(tmp_path / "v.finr"), "--layers", "1", "--steps", "2",
                 "--progress", "none"])
    assert code == 2 and "--layers" in capsys.readouterr().err  # a mesh option on a volume: the user's mistake
    with pytest.raises(SystemExit) as exc:
        main(["fit", str(tmp_path / "knob.obj"), "-o", str(tmp_path / "x.finr"), "--layers", "3", *common])
    assert exc.value.code == 2 and "--layers" in capsys.readouterr().err
