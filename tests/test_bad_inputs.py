"""Bad and awkward inputs: each is refused with a clear exit 2 before slow work, or handled correctly.

Degenerate and far-off geometry, lying .npy headers, decompression bombs,
constant signals, outputs that cannot be written, stale temporaries and
warning format (issues 14 and 17).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import trimesh

import finr3d
from finr3d import atomic_files, codec
from finr3d.cli import main
from finr3d.errors import InputError
from finr3d.meshing import check_precision, save_mesh
from finr3d.sdf import load_mesh
from finr3d.sources import load_target
from finr3d.targets import ImageTarget

TINY_FIT = dict(steps=2, rank=4, width=8, depth=1, seed=0)


def _cli(args, capsys) -> tuple[int, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


# --------------------------------------------------------------------------- geometry and precision
@pytest.mark.parametrize("scale, offset", [(1e-8, 0.0), (1.0, 1e8), (1e4, -3e9)])
def test_meshes_far_off_or_tiny_keep_every_face(scale, offset):
    sphere = trimesh.creation.icosphere(2)
    sphere.vertices = sphere.vertices * scale + offset
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a removed "degenerate" face would warn
        mesh, removed = load_mesh(sphere)
    assert removed == {"nonfinite": 0, "degenerate": 0}
    assert len(mesh.faces) == len(sphere.faces)
    # float64 unit coordinates for the merge: within a few ulps of the input extents
    np.testing.assert_allclose(mesh.extents, sphere.extents, rtol=1e-6)


def test_far_mesh_is_saved_without_collapsing(tmp_path):
    sphere = trimesh.creation.icosphere(2)
    sphere.vertices = sphere.vertices + 1e8
    for suffix in (".ply", ".obj"):
        path = save_mesh(sphere, tmp_path / f"far{suffix}")
        back = trimesh.load(path, process=False)
        np.testing.assert_allclose(back.extents, sphere.extents, rtol=1e-6)
    with pytest.raises(InputError, match="float32"):
        save_mesh(sphere, tmp_path / "far.stl")
    check_precision(*trimesh.creation.icosphere(1).bounds, ".stl")  # near the origin: fine


def test_tiny_mesh_obj_keeps_its_digits(tmp_path):
    sphere = trimesh.creation.icosphere(2)
    sphere.vertices = sphere.vertices * 1e-8
    back = trimesh.load(save_mesh(sphere, tmp_path / "tiny.obj"), process=False)
    np.testing.assert_allclose(back.extents, sphere.extents, rtol=1e-6)


@pytest.mark.parametrize("case", ["triangle", "plane"])
def test_flat_inputs_give_a_real_bounding_box(case):
    if case == "triangle":
        mesh = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]], process=False)
    else:
        mesh = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], [[0, 1, 2], [0, 2, 3]], process=False)
    field = finr3d.fit(mesh, kind="sdf", target_options={"resolution": 16}, **TINY_FIT)
    lo, hi = np.asarray(field.target_info["bounds"]).T
    assert np.all(np.isfinite(lo)) and np.all(hi - lo < 10)
    try:
        out = field.to_mesh(16)
    except RuntimeError as exc:  # a short fit may have no surface yet: a clear SurfaceError, not a crash
        assert "No surface" in str(exc)
        return
    assert np.all(out.bounds[0] >= lo - 1e-6) and np.all(out.bounds[1] <= hi + 1e-6)


# --------------------------------------------------------------------------- impossible allocations
def _lying_npy(path, shape):
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"
    text += " " * (118 - len(text)) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode() + b"\0" * 64)
    return path


def _peak_python_bytes(call, *args, limit: int = 16 << 20):
    """Run ``call(*args)`` under tracemalloc and fail if its peak Python allocation reached ``limit``.

    The call's exception propagates after the check, so a refusal must also come in bounded memory.
    """
    tracemalloc.start()
    try:
        call(*args)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < limit, f"peak Python allocation {peak:,} bytes before the refusal"


@pytest.mark.parametrize("shape", [(3000, 3000, 3000), (200000, 200000, 200000)])
def test_npy_claiming_more_than_the_file_is_refused_before_allocating(tmp_path, capsys, shape):
    path = _lying_npy(tmp_path / "lie.npy", shape)
    with pytest.raises(InputError, match="the file holds 64 bytes"):
        _peak_python_bytes(load_target, path)
    code, err = _cli(["fit", path, "-o", tmp_path / "x.finr", "--progress", "none"], capsys)
    assert code == 2 and "truncated or corrupt" in err


def test_npz_member_claiming_more_than_it_holds_is_refused(tmp_path):
    import zipfile

    lie = _lying_npy(tmp_path / "lie.npy", (4000, 4000, 4000))
    with zipfile.ZipFile(tmp_path / "lie.npz", "w") as archive:
        archive.write(lie, "volume.npy")
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_target(tmp_path / "lie.npz")


def _zero_png(path, width, height, planes=1):
    """An all-zero 8-bit PNG written row by row (tiny on disk, large when decoded)."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    packer = zlib.compressobj(9)
    row = b"\0" * (1 + width * planes)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    colour = {1: 0, 3: 2}[planes]
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def test_png_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    import png

    bomb = _zero_png(tmp_path / "bomb.png", 9000, 9000)  # 81 M pixels in about 80 kB
    monkeypatch.setattr(png.Reader, "asDirect", lambda self: pytest.fail("decoded before the size check"))
    with pytest.raises(InputError, match="9000x9000 pixels is more than 64000000"):
        _peak_python_bytes(ImageTarget, bomb)


def test_jpeg_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    from PIL import Image

    Image.new("L", (300, 200)).save(tmp_path / "small.jpg")
    monkeypatch.setattr("imageio.v3.imread", lambda *a, **k: pytest.fail("decoded before the size check"))
    with pytest.raises(InputError, match="200x300 pixels is more than 1000"):
        ImageTarget(tmp_path / "small.jpg", max_pixels=1000)


# --------------------------------------------------------------------------- constant signals
@pytest.mark.parametrize("decomposition", ["cp", "tucker", "tt"])
@pytest.mark.parametrize("case", ["zeros", "ones", "one voxel"])
def test_constant_and_nearly_constant_volumes_fit(case, decomposition):
    volume = np.zeros((10, 9, 8), np.float32) if case != "ones" else np.ones((10, 9, 8), np.float32)
    if case == "one voxel":
        volume[3, 4, 5] = 1.0
    field = finr3d.fit(volume, kind="volume", decomposition=decomposition, init="closed_form", **TINY_FIT)
    values = field.grid(list(volume.shape)) * field.target_info["value_scale"] + field.target_info["value_offset"]
    assert np.isfinite(values).all()
    if case != "one voxel":  # a constant's closed form is exact: the mean, in float32
        np.testing.assert_allclose(values, volume, atol=1e-5)


def test_constant_image_fits(tmp_path):
    field = finr3d.fit(np.full((12, 10, 3), 128, np.uint8), kind="image", init="closed_form", **TINY_FIT)
    assert np.isfinite(field.grid([12, 10])).all()


# --------------------------------------------------------------------------- outputs checked before the fit
@pytest.fixture
def no_fit(monkeypatch):
    monkeypatch.setattr(finr3d, "fit", lambda *a, **k: pytest.fail("the fit started before the output was checked"))


def test_bad_quantization_is_refused_before_the_fit(tmp_path, capsys, no_fit):
    np.save(tmp_path / "v.npy", np.zeros((4, 4, 4), np.float32))
    code, err = _cli(["fit", tmp_path / "v.npy", "-o", tmp_path / "v.finr", "--quantization", "int3"], capsys)
    assert code == 2 and "int3" in err and "fp16" in err


def test_unwritable_outputs_are_refused_before_the_fit(tmp_path, capsys, no_fit):
    np.save(tmp_path / "v.npy", np.zeros((4, 4, 4), np.float32))
    (tmp_path / "dir.finr").mkdir()
    code, err = _cli(["fit", tmp_path / "v.npy", "-o", tmp_path / "dir.finr", "--force"], capsys)
    assert code == 2 and "is a directory" in err
    (tmp_path / "file").write_text("x")
    target = tmp_path / "file" / "x.finr"
    code, err = _cli(["fit", tmp_path / "v.npy", "-o", target], capsys)
    assert code == 2 and f"cannot write {target}" in err and "tmp" not in err.replace(str(tmp_path), "")
    if os.path.isdir("/proc"):
        code, err = _cli(["fit", tmp_path / "v.npy", "-o", "/proc/x.finr"], capsys)
        assert code == 2 and "/proc/x.finr" in err and "tmp" not in err
    assert not [n for n in os.listdir(tmp_path) if atomic_files.is_temp(n)]


# --------------------------------------------------------------------------- temporaries
def test_stale_temporaries_are_named_and_cleaned(tmp_path):
    out = tmp_path / "model.finr"
    dead = tmp_path / f".model.finr{atomic_files.TEMP_MARK}999999999-dead.finr"
    live = tmp_path / f".model.finr{atomic_files.TEMP_MARK}{os.getpid()}-live.finr"
    other = tmp_path / ".model.finr.bak"  # a user's file that merely looks related
    for path in (dead, live, other):
        path.write_bytes(b"partial")
    temp = atomic_files.create_temp(out)
    name = os.path.basename(temp)
    assert name.startswith(".model.finr.finr3d-tmp-") and name.endswith(".finr") and atomic_files.is_temp(name)
    os.unlink(temp)
    assert not dead.exists() and live.exists() and other.exists()
    codec.write(out, {"kind": "x"}, {})
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name, out.name])


def test_mesh_and_decode_temporaries_share_the_naming(tmp_path, monkeypatch):
    seen = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (seen.append(os.path.basename(a)), real(a, b)))
    save_mesh(trimesh.creation.box(), tmp_path / "box.ply")
    from finr3d.files import atomic_write

    atomic_write(tmp_path / "a.npy", lambda tmp: np.save(tmp, np.zeros(3)))
    assert len(seen) == 2 and all(atomic_files.is_temp(n) for n in seen)
    assert np.load(tmp_path / "a.npy").shape == (3,)


# --------------------------------------------------------------------------- warnings
def test_warnings_print_as_one_line():
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    script = textwrap.dedent(
        """
        import warnings
        import finr3d.cli.info as info
        from finr3d.cli import main

        def run(args):
            warnings.warn("mesh.obj: removed 3 zero-area (degenerate) face(s)\\nsecond line")
            return 0

        info.run = run
        raise SystemExit(main(["info", "x.finr"]))
        """
    )
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("FINR3D_DEBUG", None)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "finr3d: warning: mesh.obj: removed 3 zero-area (degenerate) face(s) second line\n"


def test_a_streamed_npy_decode_keeps_its_written_pages_out_of_memory(tmp_path):
    """A .npy decode streams slab by slab into a memory map; the written pages are released after each slab,
    so the peak RSS grows by about a slab, not by the output (a 4 GB decode once grew it by 3.9 GB)."""
    script = textwrap.dedent(f"""
        import resource, numpy as np
        import finr3d.decoding as dec
        from finr3d.config import FieldConfig
        from finr3d.field import FactorizedField
        dec.SLAB_VALUES = 1 << 20  # 4 MiB slabs
        info = {{"kind": "sdf", "shape": [8, 8, 8], "channels": 1, "value_offset": 0.0, "value_scale": 0.1}}
        field = FactorizedField(3, 1, FieldConfig(rank=4, width=8, depth=1), target_info=info)
        field.grid(8)  # warm the code paths
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        dec.stream_npy(field, __import__("pathlib").Path(r"{tmp_path / 'o.npy'}"), resolution=400)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
    """)
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    growth = int(done.stdout.split()[-1])
    output = 400**3 * 4  # 256 MB
    assert (tmp_path / "o.npy").stat().st_size == output + 128
    assert growth < 0.2 * output, f"peak RSS grew by {growth / 2**20:.0f} MiB for a {output / 2**20:.0f} MiB output"
    assert np.load(tmp_path / "o.npy", mmap_mode="r").shape == (400, 400, 400, 1)
