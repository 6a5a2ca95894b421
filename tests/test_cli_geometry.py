"""End-to-end tests of ``finr3d mesh`` and ``finr3d eval`` on a tiny fitted SDF."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh

import finr3d.cli
from finr3d.cli import build_parser, main


@pytest.fixture(autouse=True)
def _commands_registered(monkeypatch):
    """Run through the real ``finr3d`` entry point even before mesh/eval join COMMANDS."""
    missing = tuple(c for c in ("mesh", "eval") if c not in finr3d.cli.COMMANDS)
    if missing:
        monkeypatch.setattr(finr3d.cli, "COMMANDS", finr3d.cli.COMMANDS + missing)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    import finr3d

    folder = tmp_path_factory.mktemp("cli_geometry")
    source = folder / "ball.ply"
    ball = trimesh.creation.icosphere(subdivisions=3, radius=2.0)
    ball.apply_translation([5.0, -1.0, 3.0])
    ball.export(source)
    field = finr3d.fit(source, kind="sdf", steps=80, rank=4, width=16, device="cpu", seed=0,
                       target_options={"resolution": 24, "cache": False})
    model = folder / "ball.finr"
    field.save(model)
    return source, model, ball


def test_mesh_writes_world_units(fitted, tmp_path, capsys):
    source, model, ball = fitted
    out = tmp_path / "ball.ply"
    assert main(["mesh", str(model), "-o", str(out), "--resolution", "32"]) == 0
    assert "wrote" in capsys.readouterr().out
    mesh = trimesh.load(out)
    voxel = 2 * 2.0 / 0.9 / 31
    np.testing.assert_allclose(mesh.bounds, ball.bounds, atol=3 * voxel)


def test_mesh_refuses_overwrite_and_bad_values(fitted, tmp_path, capsys):
    _, model, _ = fitted
    out = tmp_path / "ball.stl"
    out.write_bytes(b"keep me")
    assert main(["mesh", str(model), "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    assert main(["mesh", str(model), "-o", str(out), "--resolution", "16", "--force"]) == 0
    assert len(trimesh.load(out).faces) > 0
    assert main(["mesh", str(model), "-o", str(tmp_path / "x.xyz")]) == 2
    assert "xyz" in capsys.readouterr().err
    assert main(["mesh", str(model), "-o", str(tmp_path / "y.ply"), "--resolution", "100000"]) == 2
    assert "resolution must be between 2 and 4096, got 100000" in capsys.readouterr().err
    assert main(["mesh", str(tmp_path / "missing.finr"), "-o", str(tmp_path / "z.ply")]) == 2


def test_eval_json(fitted, capsys):
    source, model, _ = fitted
    assert main(["eval", str(model), "--reference", str(source), "--json", "--resolution", "32"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("iou", "iou_near", "chamfer_l1", "chamfer_l2", "hausdorff95", "fscore_0.5", "fscore_1",
                "normal_consistency"):
        assert key in report
    assert report["iou"] > 0.8
    assert report["chamfer_l1"] < 0.05


def test_eval_table_and_errors(fitted, tmp_path, capsys):
    source, model, _ = fitted
    assert main(["eval", str(model), "--reference", str(source), "--resolution", "24", "--rank", "2"]) == 0
    out = capsys.readouterr().out
    assert "chamfer_l1" in out and "diagonal" in out
    assert main(["eval", str(model), "--reference", str(tmp_path / "nope.obj")]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize("command, words", [("mesh", ["world units", "--resolution", "example"]),
                                            ("eval", ["diagonal", "--reference", "example"])])
def test_help_teaches(command, words, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = capsys.readouterr().out
    for word in words:
        assert word in text
