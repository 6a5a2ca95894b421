"""finr3d.files: one atomic writer for every output, with the permissions of a plain open()."""

import os
import stat

import numpy as np
import pytest

from finr3d.codec import jsonable
from finr3d.files import TEMP_MARK, atomic_folder, atomic_write, atomic_write_bytes


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_outputs_get_the_umask_mode_not_0600(tmp_path, umask_022):
    out = tmp_path / "a.npy"
    atomic_write(out, lambda tmp: np.save(tmp, np.zeros(3)))
    assert mode(out) == 0o644 and np.load(out).shape == (3,)  # the writer saw the .npy suffix
    folder = atomic_folder(tmp_path / "frames", lambda tmp: (tmp / "x.txt").write_text("x"))
    assert mode(folder) == 0o755 and (folder / "x.txt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "frames"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    out = tmp_path / "m.ply"
    atomic_write_bytes(out, b"old")

    def broken(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(out, broken)
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["m.ply"]
    with pytest.raises(FileExistsError):
        atomic_write_bytes(out, b"new", overwrite=False)
    assert out.read_bytes() == b"old" and not any(TEMP_MARK in p.name for p in tmp_path.iterdir())


def test_decoded_and_meshed_outputs_are_0644(tmp_path, umask_022):
    import trimesh

    from finr3d.meshing import save_mesh

    out = save_mesh(trimesh.creation.box(), tmp_path / "box.ply")
    assert mode(out) == 0o644


def test_jsonable_makes_header_values():
    import torch

    value = {1: (np.int64(2), np.float32(0.5), np.bool_(True)), "t": torch.ones(2), "bad": float("nan"),
             "arr": np.arange(2)}
    assert jsonable(value) == {"1": [2, 0.5, True], "t": [1.0, 1.0], "bad": None, "arr": [0, 1]}
