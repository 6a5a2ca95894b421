"""Every public example in README.md and docs/DESIGN.md runs.

The examples run as written except for their budgets and sizes, which
:data:`SMALLER` shrinks so that the whole file runs in seconds on two cores
(``seconds=60`` becomes a few steps, ``resolution=512`` a 32-grid), and their
input files, which are small stand-ins written under the same names.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import trimesh

from finr3d.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "DESIGN.md"]

#: (pattern, replacement): budgets and sizes only, never the calls themselves.
SMALLER = [
    (r"seconds=\d+", "steps=8, target_options={'resolution': 24}"),
    (r"resolution=512", "resolution=24"),
    (r"grid\(256\)", "grid(16)"),
    (r"grid\(resolution=256\)", "grid(resolution=16)"),
    (r'evaluate\(field, "bunny.obj"\)', 'evaluate(field, "bunny.obj", resolution=24, n_samples=2000, n_volume=2000)'),
    (r"--seconds \d+", "--steps 8"),
    (r"--resolution 512", "--resolution 24"),
    (r"--frames 0:120", "--frames 0:6"),
    (r"ct_512x512x512_uint8\.raw", "ct_16x12x10_uint8.raw"),
    (r"--target-psnr 40", "--target-psnr 10"),
]


def blocks(path: Path, language: str) -> list[str]:
    """The fenced ``language`` code blocks of a Markdown file."""
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(), flags=re.S)


def shrink(code: str) -> str:
    for pattern, replacement in SMALLER:
        code = re.sub(pattern, replacement, code)
    return code


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """bunny.obj, photo.png, clip.mp4 and smoke.npy stand-ins in the working folder."""
    from finr3d.targets import write_png
    from finr3d.video import write_video

    monkeypatch.chdir(tmp_path)
    trimesh.creation.capsule(height=0.8, radius=0.4).export(tmp_path / "bunny.obj")
    y, x = np.mgrid[0:24, 0:32] / 32.0
    img = np.stack([np.sin(6 * x), np.cos(5 * y), x * y], -1) * 0.5 + 0.5
    write_png(tmp_path / "photo.png", np.round(img * 255).astype(np.uint8))
    t = np.arange(8)[:, None, None, None] / 8.0
    write_video(np.clip(img[None] + 0.1 * t, 0, 1), tmp_path / "clip.mp4", fps=8)
    from finr3d.simulation import smoke_clip

    np.save(tmp_path / "smoke.npy", smoke_clip(frames=4, size=12))  # what assets/make_smoke.py writes, smaller
    z, y, x = np.mgrid[0:10, 0:12, 0:16] / 8.0  # a headerless CT stand-in: dims x first in the name, x fastest
    ct = np.round(127 + 100 * np.sin(3 * x) * np.cos(2 * y) * np.cos(z)).astype(np.uint8)
    ct.tofile(tmp_path / "ct_16x12x10_uint8.raw")
    return tmp_path


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_python_examples_run(doc, inputs):
    found = blocks(doc, "python")
    assert found, f"{doc.name} has no python example"
    for code in found:
        namespace: dict = {}
        exec(compile(shrink(code), f"{doc.name} example", "exec"), namespace)  # noqa: S102 (our own docs)
    assert "field" in namespace


@pytest.mark.slow
def test_readme_command_examples_run(inputs, capsys):
    lines = [ln.split("#")[0].strip() for code in blocks(ROOT / "README.md", "bash") for ln in code.splitlines()]
    commands = [ln for ln in lines if ln.startswith("finr3d ")]
    assert len(commands) >= 5
    for line in commands:
        argv = shlex.split(shrink(line))[1:]
        if argv[0] == "fit" and argv[1].endswith(".obj"):
            argv += ["--resolution", "24"]
        assert cli_main(argv) == 0, line
        capsys.readouterr()
