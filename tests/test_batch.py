"""finr3d batch: inputs, engines (local pool, local Ray), the manifest, faults, resume, cancel."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import finr3d
from finr3d import codec
from finr3d.batch import MANIFEST_NAME, BatchInterrupted, _Manifest, collect_inputs, read_manifest
from finr3d.cli import main
from finr3d.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
#: tiny, steps-limited fits: the tests check the plumbing, not the quality
FIT = {"steps": 15, "rank": 4, "width": 16, "resolution": 24}
FIT_FLAGS = ["--steps", "15", "--rank", "4", "--width", "16", "--resolution", "24"]
FIELDS = {"input", "sha256", "kind", "status", "bytes", "parameters", "metric", "fit_seconds", "worker",
          "finr3d_version", "settings", "output", "error"}


def _image(path: Path, seed: int, size: int = 12) -> Path:
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    iio.imwrite(path, (rng.random((size, size, 3)) * 255).astype(np.uint8))
    return path


@pytest.fixture
def library(tmp_path) -> Path:
    """Two images (same stem in two folders), a mesh, a volume, a broken mesh and files that are not assets."""
    from finr3d.shapes import shape_mesh

    root = tmp_path / "library"
    _image(root / "a.png", 0)
    _image(root / "sub" / "a.png", 1)
    shape_mesh("gizmo", 24).export(root / "gizmo.obj")
    np.save(root / "vol.npy", np.random.default_rng(2).random((10, 10, 10)).astype(np.float32))
    (root / "broken.obj").write_text("this is not a mesh\n")
    (root / "README.md").write_text("not an asset")
    _image(root / ".hidden" / "skip.png", 3)
    return root


def _check_rows(rows, library: Path, out: Path, engine: str):
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == {"broken", "gizmo", "vol"} | {n for n in by_name if n.startswith("a-")}
    assert len(rows) == 5
    assert by_name["broken"]["status"] == "error" and by_name["broken"]["error"]
    assert by_name["broken"]["output"] is None and "\n" not in by_name["broken"]["error"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 4 and {r["kind"] for r in ok} == {"image", "sdf", "volume"}
    for r in ok:
        assert FIELDS <= set(r) and r["engine"] == engine and r["finr3d_version"] == finr3d.__version__
        assert Path(r["output"]).parent == out and Path(r["output"]).stat().st_size == r["bytes"]
        header = codec.describe_file(r["output"])  # whole file, checksum verified
        assert header["parameters"] == r["parameters"] and r["metric"]["name"] in r["metrics"]
        # the kind's preset plus the flags given: mesh-only flags reach meshes only
        assert ("resolution" in r["settings"]) == (r["kind"] == "sdf") and r["settings"]["steps"] == 15
    # the manifest has one whole JSON line per asset, matching the rows returned
    lines = (out / MANIFEST_NAME).read_text().splitlines()
    assert len(lines) == 5 and sorted(json.loads(l)["input"] for l in lines) == sorted(r["input"] for r in rows)
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".finr3d-batch.lock"]


def test_collect_inputs_folders_globs_lists_and_stable_names(library, tmp_path):
    out = library / "out"  # an output folder inside the library is never searched
    out.mkdir()
    _image(out / "old.png", 9)
    found = collect_inputs([library])
    names = sorted(str(p.relative_to(library)) for p in found)
    assert names == ["a.png", "broken.obj", "gizmo.obj", "out/old.png", "sub/a.png", "vol.npy"]
    assert "out/old.png" not in sorted(str(p.relative_to(library)) for p in collect_inputs([library], exclude=[out]))
    # globs (recursive), a list file with relative paths and comments, duplicates kept once
    lst = tmp_path / "list.txt"
    lst.write_text("# assets\nlibrary/gizmo.obj\n\nlibrary/sub\nlibrary/missing.obj\n")
    paths = collect_inputs([str(library / "**" / "*.png"), lst, library / "gizmo.obj"], exclude=[out])
    rel = [str(p.relative_to(tmp_path)) for p in paths]
    assert rel == ["library/a.png", "library/sub/a.png", "library/gizmo.obj", "library/missing.obj"]
    with pytest.raises(FileNotFoundError, match="no such file"):
        collect_inputs([tmp_path / "nope"])
    with pytest.raises(InputError, match="matches nothing"):
        collect_inputs([str(tmp_path / "*.stl")])
    # names: the stem, or the stem plus a hash of the path when stems clash, whatever the order
    from finr3d.batch import _Asset, _name_assets

    assets = [_Asset(p) for p in collect_inputs([library], exclude=[out])]
    _name_assets(assets)
    again = [_Asset(a.path) for a in reversed(assets)]
    _name_assets(again)
    assert {a.path: a.name for a in assets} == {a.path: a.name for a in again}
    by_path = {a.path.relative_to(library).as_posix(): a.name for a in assets}
    assert by_path["gizmo.obj"] == "gizmo" and by_path["a.png"] != by_path["sub/a.png"]
    assert by_path["a.png"].startswith("a-") and len(by_path["a.png"]) == len("a-") + 8


def test_local_pool_over_a_folder_with_a_broken_file(library, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["batch", str(library), "-o", str(out), "--workers", "2", "--progress", "none", "--json", *FIT_FLAGS])
    assert code == 3  # an asset failed
    summary = json.loads(capsys.readouterr().out)
    assert summary["total"]["ok"] == 4 and summary["total"]["error"] == 1
    rows = summary["rows"]
    _check_rows(rows, library, out, "local")
    assert len({r["worker"] for r in rows if r["status"] == "ok"}) >= 1
    # the same folder again: refused without --resume or --force (nothing overwritten unasked)
    assert main(["batch", str(library), "-o", str(out), "--progress", "none", *FIT_FLAGS]) == 2
    assert "--resume" in capsys.readouterr().err
    # --resume: every ok asset is skipped; only the broken one is tried again
    events = []
    rows2 = finr3d.batch(library, out, resume=True, progress=events.append, **FIT)
    assert [r["name"] for r in rows2] == [r["name"] for r in rows]
    assert {r["name"] for r in rows2 if r.get("resumed")} == {r["name"] for r in rows if r["status"] == "ok"}
    ends = [e for e in events if e["event"] == "end"]
    assert [e["name"] for e in ends] == ["broken"]
    # a settings change is a different asset: nothing resumed
    fit = {k: v for k, v in FIT.items() if k != "resolution"}
    rows3 = finr3d.batch(library / "vol.npy", out, resume=True, target_options={"resolution": 24}, **{**fit, "steps": 10})
    assert rows3[0]["status"] == "ok" and not rows3[0].get("resumed")


@pytest.mark.ray
def test_local_ray_over_a_folder_with_a_broken_file(library, tmp_path):
    pytest.importorskip("ray")  # the ray extra (in dev, so CI runs this)
    out = tmp_path / "out"
    events = []
    rows = finr3d.batch([library], out, engine="ray", workers=2, ray_inputs="store", progress=events.append, **FIT)
    _check_rows(rows, library, out, "ray")
    assert [e["event"] for e in events].count("end") == 5


@pytest.mark.slow
def test_killed_worker_is_retried_then_recorded_and_resume_does_the_rest(tmp_path):
    lib = tmp_path / "lib"
    for i, name in enumerate(["once", "always", "calm"]):
        _image(lib / f"{name}.png", i)
    starts = {}

    def kill(event):
        # a worker dies mid-fit (as under the OOM killer): "once" on its first try, "always" on every try
        if event["event"] == "start":
            name = Path(event["input"]).stem
            starts[name] = starts.get(name, 0) + 1
            if name == "always" or (name == "once" and starts[name] == 1):
                os.kill(int(event["worker"].rsplit(":", 1)[1]), signal.SIGKILL)

    out = tmp_path / "out"
    rows = {r["name"]: r for r in finr3d.batch(lib, out, workers=2, retries=1, progress=kill,
                                                 **{**FIT, "steps": 100000, "seconds": 1.0})}
    assert rows["once"]["status"] == "ok" and rows["once"]["attempts"] == 2
    assert rows["calm"]["status"] == "ok"
    assert rows["always"]["status"] == "error" and "killed by signal 9" in rows["always"]["error"]
    assert rows["always"]["attempts"] == 2 and not (out / "always.finr").exists()
    mtimes = {n: (out / f"{n}.finr").stat().st_mtime_ns for n in ("once", "calm")}
    # after the crash: --resume fits only what is not done
    rows = {r["name"]: r for r in finr3d.batch(lib, out, resume=True, **{**FIT, "steps": 100000, "seconds": 1.0})}
    assert rows["always"]["status"] == "ok" and not rows["always"].get("resumed")
    assert rows["once"]["resumed"] and rows["calm"]["resumed"]
    assert {n: (out / f"{n}.finr").stat().st_mtime_ns for n in ("once", "calm")} == mtimes
    assert sorted(r["status"] for r in read_manifest(out)) == ["error", "ok", "ok", "ok"]


def _manifest_lines(out: Path) -> list[str]:
    path = out / MANIFEST_NAME
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_resume_finishes(tmp_path):
    lib = tmp_path / "lib"
    for i in range(5):
        _image(lib / f"img{i}.png", i)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "finr3d", "batch", str(lib), "-o", str(out), "--workers", "2", "--progress", "json",
           "--steps", "100000", "--seconds", "1.5", "--rank", "4", "--width", "16"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 180
    while not any('"ok"' in l for l in _manifest_lines(out)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole process group
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    rows = [json.loads(l) for l in _manifest_lines(out)]  # every line whole
    assert len(rows) == 5 and {r["status"] for r in rows} <= {"ok", "cancelled"}
    ok = {r["name"] for r in rows if r["status"] == "ok"}
    assert ok and "cancelled" in {r["status"] for r in rows}
    # finished results kept, no partial .finr or temporary file left
    assert {p.name for p in out.iterdir()} == {f"{n}.finr" for n in ok} | {MANIFEST_NAME, ".finr3d-batch.lock"}
    for name in ok:
        codec.read_field(out / f"{name}.finr")
    summary = json.loads(stdout.decode().splitlines()[-1])
    assert summary["event"] == "summary" and summary["total"]["cancelled"] == 5 - len(ok)
    # a crash mid-append leaves a torn last line: readers skip it and the resume cuts it off
    with open(out / MANIFEST_NAME, "ab") as handle:
        handle.write(b'{"input": "torn')
    assert len(read_manifest(out)) == 5
    code = main(["batch", str(lib), "-o", str(out), "--resume", "--progress", "none", "--workers", "2",
                 "--steps", "100000", "--seconds", "1.5", "--rank", "4", "--width", "16"])
    assert code == 0
    lines = _manifest_lines(out)
    rows = [json.loads(l) for l in lines]  # the torn tail is gone, every line parses
    assert len(rows) == 10 - len(ok) and sorted(r["name"] for r in rows if r["status"] == "ok") == sorted(
        f"img{i}" for i in range(5))


def test_manifest_appends_whole_lines(tmp_path):
    manifest = _Manifest(tmp_path / MANIFEST_NAME, fresh=True)
    manifest.append({"input": "a", "status": "ok", "bytes": 1})
    manifest.close()
    with open(tmp_path / MANIFEST_NAME, "ab") as handle:
        handle.write(b'{"input": "b", "sta')  # torn by a crash
    assert [r["input"] for r in read_manifest(tmp_path)] == ["a"]
    manifest = _Manifest(tmp_path / MANIFEST_NAME, fresh=False)
    manifest.append({"input": "c", "status": "ok", "bytes": 2})
    manifest.close()
    assert [json.loads(l)["input"] for l in (tmp_path / MANIFEST_NAME).read_text().splitlines()] == ["a", "c"]
    with pytest.raises(ValueError):  # a NaN would make a line other JSON readers reject
        _Manifest(tmp_path / "x.jsonl", fresh=True).append({"value": float("nan")})


def test_bad_usage_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, library):
    out = tmp_path / "out"
    assert main(["batch", str(tmp_path / "missing"), "-o", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["batch", str(empty), "-o", str(out)]) == 2
    assert "no inputs found" in capsys.readouterr().err
    assert main(["batch", str(library), "-o", str(out), "--budget-kb", "8", "--target-psnr", "30"]) == 2
    assert "only one of" in capsys.readouterr().err
    assert main(["batch", str(library), "-o", str(out), "--gpus-per-task", "1"]) == 2
    assert "apply to --engine ray" in capsys.readouterr().err
    with pytest.raises(InputError, match="unknown fit option"):
        finr3d.batch(library, out, secnds=3)
    with pytest.raises(ValueError):
        finr3d.batch(library, out, rank=-1)
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray absent
    assert main(["batch", str(library), "-o", str(out), "--engine", "ray"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and 'pip install "finr3d[ray]"' in err
    assert not out.exists() or not any(out.iterdir())
