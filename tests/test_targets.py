"""Targets: reading, normalisation, sub-grid ground truth, bad input."""

import numpy as np
import pytest
import torch

from finr3d.errors import InputError
from finr3d.sources import load_target
from finr3d.targets import ImageTarget, detect_kind, interpolate_subgrid, lattice
from finr3d.volume import VolumeTarget
from tolerances import assert_float32_close


def test_interpolation_is_exact_on_lattice_and_linear_between():
    data = torch.arange(5 * 4, dtype=torch.float32).reshape(5, 4, 1)
    exact = interpolate_subgrid(data, [lattice(5), lattice(4)])
    assert torch.equal(exact, data)
    mid = interpolate_subgrid(data, [torch.tensor([-0.75]), torch.tensor([-1.0])])  # halfway between rows 0 and 1
    assert float(mid) == pytest.approx((data[0, 0, 0] + data[1, 0, 0]) / 2)


@pytest.mark.parametrize("dtype,scale", [(np.uint8, 255), (np.uint16, 65535)])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_image_bit_depths_and_channels(tmp_path, dtype, scale, channels):
    from finr3d.targets import write_png

    rng = np.random.default_rng(0)
    img = (rng.random((9, 7, channels)) * scale).astype(dtype)
    path = tmp_path / "im.png"
    write_png(path, img)
    t = ImageTarget(path)
    assert t.shape == (9, 7) and t.channels == channels
    assert_float32_close(t.data, img.astype(np.float32) / scale, 1)  # one division
    assert t.describe()["bounds"] == [[0, 8], [0, 6]]
    assert t.describe()["bit_depth"] == (16 if dtype == np.uint16 else 8)


def test_raw_volume_dims_from_name(tmp_path):
    vol = np.arange(4 * 3 * 2, dtype=np.uint8).reshape(2, 3, 4)  # (z, y, x)
    path = tmp_path / "thing_4x3x2_uint8.raw"
    vol.tofile(path)
    t = VolumeTarget(path)
    assert t.shape == (2, 3, 4)
    np.testing.assert_allclose(t.to_values(t.data.numpy())[..., 0], vol)


def test_raw_volume_size_mismatch(tmp_path):
    path = tmp_path / "thing_4x4x4_uint8.raw"
    np.zeros(10, np.uint8).tofile(path)
    with pytest.raises(InputError, match="needs 64"):
        VolumeTarget(path)
    bare = tmp_path / "thing.raw"
    np.zeros(8, np.uint8).tofile(bare)
    with pytest.raises(InputError, match="dims"):
        VolumeTarget(bare)
    assert VolumeTarget(bare, dims=(2, 2, 2), dtype="uint8").shape == (2, 2, 2)


def test_npy_npz_and_pickle_refused(tmp_path):
    arr = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    np.save(tmp_path / "v.npy", arr)
    assert VolumeTarget(tmp_path / "v.npy").shape == (4, 5, 6)
    np.savez(tmp_path / "v.npz", a=arr, b=arr)
    with pytest.raises(InputError, match="key="):
        VolumeTarget(tmp_path / "v.npz")
    assert VolumeTarget(tmp_path / "v.npz", key="b").shape == (4, 5, 6)
    np.save(tmp_path / "o.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="pickle"):
        VolumeTarget(tmp_path / "o.npy")


def test_shared_volume_reads(shared_assets):
    t = VolumeTarget(shared_assets / "volumes" / "fuel_64x64x64_uint8.raw")
    assert t.shape == (64, 64, 64) and float(t.data.max()) == pytest.approx(1.0)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((0, 4, 3)), "empty"),
    (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
    (np.zeros((4, 4, 7)), "image"),
])
def test_bad_image_arrays(bad, match):
    with pytest.raises(InputError, match=match):
        ImageTarget(bad)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_target(tmp_path / "missing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        ImageTarget(tmp_path / "empty.png")
    (tmp_path / "junk.png").write_bytes(b"not a png at all")
    with pytest.raises(InputError, match="cannot read"):
        ImageTarget(tmp_path / "junk.png")
    (tmp_path / "x.xyz").write_bytes(b"1")
    with pytest.raises(InputError, match="--kind"):
        detect_kind(tmp_path / "x.xyz")
    with pytest.raises(InputError, match="kind"):
        load_target(tmp_path / "x.xyz", kind="audio")
