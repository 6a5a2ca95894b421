"""The finr3d CLI: exit codes, one-line errors, fit -> info -> decode round trip."""

import json
import subprocess
import sys

import numpy as np
import pytest

from finr3d.cli import main
from finr3d.targets import write_png


@pytest.fixture
def tiny_png(tmp_path):
    y, x = np.meshgrid(np.linspace(0, 1, 20), np.linspace(0, 1, 24), indexing="ij")
    img = np.stack([x, y, 0.5 * (x + y)], -1)
    path = tmp_path / "tiny.png"
    write_png(path, np.round(img * 255).astype(np.uint8))
    return path


def run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "finr3d", *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_fit_info_decode_round_trip(tiny_png, tmp_path, capsys):
    model = tmp_path / "tiny.finr"
    assert main(["fit", str(tiny_png), "-o", str(model), "--steps", "150", "--rank", "8", "--width", "32",
                 "--progress", "json"]) == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
    assert lines[-1]["done"] is True and lines[-1]["output"] == str(model)
    steps = [l for l in lines if "step" in l and l.get("phase") == "fit"]
    assert steps and all({"loss", "elapsed", "eta"} <= set(l) for l in steps)
    assert lines[-1]["psnr"] > 30
    assert main(["info", str(model), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "image" and info["decomposition"] == "cp"
    out = tmp_path / "back.png"
    assert main(["decode", str(model), "-o", str(out)]) == 0
    from finr3d.targets import read_image

    back = read_image(out)
    ref = read_image(tiny_png)
    assert back.shape == ref.shape
    assert np.abs(back.astype(float) - ref).mean() < 4
    # refuses to overwrite without --force
    assert main(["decode", str(model), "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["decode", str(model), "-o", str(out), "--force"]) == 0


@pytest.mark.parametrize("args,needle", [
    (["fit", "missing.png", "-o", "{tmp}/a.finr"], "no such file"),
    (["fit", "{png}", "-o", "{tmp}/a.txt"], "unsupported output"),
    (["fit", "{png}", "-o", "{tmp}/a.finr", "--rank", "0"], "rank"),
    (["fit", "{png}", "-o", "{tmp}/a.finr", "--rank", "abc"], "rank"),
    (["fit", "{png}", "-o", "{tmp}/a.finr", "--basis", "all"], "basis"),
    (["fit", "{png}", "-o", "{tmp}/a.finr", "--basis", "-3"], "basis"),
    (["fit", "{png}", "-o", "{tmp}/nodir/a.finr"], "does not exist"),
    (["info", "{tmp}/missing.finr"], "no such file"),
    (["info", "{png}"], "magic"),
    (["decode", "{png}", "-o", "{tmp}/x.png"], "magic"),
])
def test_bad_input_exits_2_with_one_line(tiny_png, tmp_path, args, needle):
    args = [a.format(tmp=tmp_path, png=tiny_png) for a in args]
    code, out, err = run_cli(*args)
    assert code == 2, (code, err)
    assert needle.lower() in err.lower(), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_help_teaches():
    code, out, _ = run_cli("--help")
    assert code == 0 and "examples:" in out and "exit codes" in out
    code, out, _ = run_cli("fit", "--help")
    assert code == 0 and "--decomposition" in out and "--progress" in out


def test_demo_writes_its_outputs_and_metrics(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "40", "--resolution", "48", "--progress", "none"]) == 0
    text = capsys.readouterr().out
    for name in ("gizmo_input.ply", "gizmo.finr", "gizmo_fitted.ply"):
        assert (out / name).stat().st_size > 0 and name in text
    assert "chamfer_l1" in text and "iou" in text
    # a second run keeps the user's earlier results unless asked
    assert main(["demo", "--out", str(out), "--steps", "5", "--resolution", "32", "--progress", "none"]) == 2
