"""finr3d.local_detail: sparse residual bricks, interpolation, random access, hostile bytes."""

import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finr3d.errors import FormatError
from finr3d.local_detail import PREDICTORS, LocalDetail, fit_local_detail


def _shell(shape=(21, 18, 25), seed=0):
    axes = [np.linspace(-1, 1, n) for n in shape]
    X = np.meshgrid(*axes, indexing="ij")
    r = np.sin(3 * X[0]) * np.cos(2 * X[1]) + 0.3 * X[-1]
    rad = np.sqrt(sum(x * x for x in X))
    mask = np.abs(rad - 0.6) < 0.2
    return axes, r, mask


def _trilinear(axes, values, pts):
    from scipy.interpolate import RegularGridInterpolator

    return RegularGridInterpolator(axes, values)(np.clip(pts, -1, 1))


@pytest.mark.parametrize("predictor", PREDICTORS)
@pytest.mark.parametrize("brick", [2, 5, 8])
def test_nodes_are_quantized_residual_and_zero_elsewhere(predictor, brick):
    axes, r, mask = _shell()
    d = fit_local_detail(r, mask=mask, step=0.01, brick=brick, predictor=predictor, chunk_bricks=3)
    expected = np.where(mask, np.rint(r / 0.01) * 0.01, 0.0)
    np.testing.assert_allclose(d.dense(), expected, atol=1e-6)  # float32 of values <= 1.3
    assert np.abs(d.dense() - np.where(mask, r, 0))[mask].max() <= 0.005 + 1e-6
    assert 0 < d.bricks < np.prod(d.brick_grid)
    assert d.nbytes == len(d.to_bytes())


@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
def test_points_and_grid_are_multilinear_interpolation(ndim):
    shape = (9, 7, 6, 5)[:ndim]
    rng = np.random.default_rng(ndim)
    r = rng.normal(size=shape)
    mask = rng.random(shape) < 0.5
    d = fit_local_detail(r, mask=mask, step=0.05, brick=3, chunk_bricks=2)
    axes = [np.linspace(-1, 1, n) for n in shape]
    dense = d.dense()
    pts = rng.uniform(-1.2, 1.2, (500, ndim))
    np.testing.assert_allclose(d.points(pts), _trilinear(axes, dense, pts), atol=1e-5)
    sub = [np.sort(rng.uniform(-1, 1, 4 + a)) for a in range(ndim)]
    mesh = np.stack(np.meshgrid(*sub, indexing="ij"), -1).reshape(-1, ndim)
    g = d.grid(sub)
    np.testing.assert_allclose(g.reshape(-1), d.points(mesh), atol=1e-5)
    np.testing.assert_allclose(d.grid(axes), dense, atol=1e-6)


def test_continuous_across_brick_and_mask_edges():
    axes, r, mask = _shell()
    d = fit_local_detail(r, mask=mask, step=0.01, brick=4)
    t = np.linspace(-1, 1, 20001)
    line = np.stack([t, np.full_like(t, 0.1), np.full_like(t, -0.05)], 1)
    v = d.points(line)
    # Lipschitz along the line: jumps bounded by (max node difference) * (cells per step)
    cell = 2 / (len(axes[0]) - 1)
    assert np.abs(np.diff(v)).max() <= 2 * np.abs(d.dense()).max() * (t[1] - t[0]) / cell + 1e-6


def test_random_access_decodes_only_touched_chunks(monkeypatch):
    axes, r, mask = _shell((40, 40, 40))
    d = fit_local_detail(r, mask=mask, step=0.01, brick=4, chunk_bricks=4)
    n_chunks = len(d._chunks)
    seen = []
    orig = LocalDetail._chunk_values
    monkeypatch.setattr(LocalDetail, "_chunk_values", lambda self, c: seen.append(c) or orig(self, c))
    d.points(np.array([[0.6, 0.0, 0.0]]))
    assert 1 <= len(set(seen)) <= 8 < n_chunks / 4  # a cell touches at most 2^3 bricks
    seen.clear()
    d.grid([np.linspace(0.5, 0.7, 5), np.linspace(-0.1, 0.1, 5), np.linspace(-0.1, 0.1, 5)])
    assert 1 <= len(set(seen)) < n_chunks / 4


def test_roundtrip_bytes_and_empty():
    axes, r, mask = _shell()
    d = fit_local_detail(r, mask=mask, step=0.02)
    e = LocalDetail.from_bytes(d.to_bytes())
    np.testing.assert_array_equal(e.dense(), d.dense())
    assert e.to_bytes() == d.to_bytes()
    empty = fit_local_detail(np.zeros((5, 5, 5)), step=0.1)
    assert empty.bricks == 0
    z = LocalDetail.from_bytes(empty.to_bytes())
    assert z.points(np.zeros((3, 3))).tolist() == [0, 0, 0]
    assert not z.grid([np.zeros(2)] * 3).any()


def test_wide_values_use_wider_ints():
    r = np.linspace(-50, 50, 9**3).reshape(9, 9, 9)
    d = fit_local_detail(r, step=0.001, predictor="none")
    assert d.int_bytes == 4
    np.testing.assert_allclose(LocalDetail.from_bytes(d.to_bytes()).dense(), np.rint(r / 0.001) * 0.001, atol=1e-5)


def test_fit_rejects_bad_arguments():
    r = np.zeros((4, 4, 4))
    with pytest.raises(ValueError, match="step"):
        fit_local_detail(r, step=0)
    with pytest.raises(ValueError, match="brick"):
        fit_local_detail(r, step=1, brick=1)
    with pytest.raises(ValueError, match="mask shape"):
        fit_local_detail(r, step=1, mask=np.ones((3, 3, 3), bool))
    with pytest.raises(ValueError, match="NaN"):
        fit_local_detail(np.full((4, 4, 4), np.nan), step=1)
    with pytest.raises(ValueError, match="overflow"):
        fit_local_detail(np.full((4, 4, 4), 1e9), step=1e-6)
    with pytest.raises(ValueError, match="predictor"):
        fit_local_detail(r, step=1, predictor="zigzag")


def test_decoded_size_limit():
    axes, r, mask = _shell()
    blob = fit_local_detail(r, mask=mask, step=0.01).to_bytes()
    with pytest.raises(FormatError, match="limit"):
        LocalDetail.from_bytes(blob, max_decoded_bytes=1000)


def _blob():
    axes, r, mask = _shell((12, 10, 11))
    return fit_local_detail(r, mask=mask, step=0.01, brick=4, chunk_bricks=2).to_bytes()


BLOB = _blob()


def test_every_truncation_is_a_format_error():
    for n in range(len(BLOB)):
        with pytest.raises(FormatError):
            LocalDetail.from_bytes(BLOB[:n])
    with pytest.raises(FormatError):
        LocalDetail.from_bytes(BLOB + b"\0")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_bytes_fail_cleanly_or_decode_bounded(data):
    b = bytearray(BLOB)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(b) - 1))
        b[i] = data.draw(st.integers(0, 255))
    try:
        d = LocalDetail.from_bytes(bytes(b), max_decoded_bytes=1 << 20)
    except FormatError:
        return
    # a mutation that still parses (e.g. inside the step or a value) decodes to finite values of the same lattice
    v = d.points(np.zeros((4, d.ndim)))
    assert v.shape == (4,) and np.isfinite(d.dense()).all()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_are_format_errors(blob):
    with pytest.raises(FormatError):
        LocalDetail.from_bytes(b"FLDT\x01" + blob)


def test_header_fields_are_checked():
    head = struct.Struct("<4sBBBBBBH")
    fields = list(head.unpack_from(BLOB, 0))
    for index, value in [(0, b"XXXX"), (1, 2), (2, 0), (2, 9), (3, 1), (3, 99), (4, 7), (5, 3), (6, 5), (7, 1)]:
        f = list(fields)
        f[index] = value
        with pytest.raises(FormatError):
            LocalDetail.from_bytes(head.pack(*f) + BLOB[head.size:])


def test_module_imports_without_torch():
    code = "import sys; sys.modules['torch'] = None; import finr3d.local_detail as m; print(m.VERSION)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_a_frame_declaring_a_huge_size_is_refused_before_allocating():
    """zstandard allocates what a frame declares: a mutated size field (once a MemoryError) is a FormatError."""
    import zstandard

    from finr3d.compact import zstd_bounded

    honest = zstandard.ZstdCompressor(write_content_size=True).compress(b"\1" * 64)
    assert honest[4] & 0xE0 == 0x20  # single segment, a 1-byte content size: rewrite it as an 8-byte one
    lying = honest[:4] + bytes([(honest[4] & 0x3F) | 0xC0]) + (1 << 40).to_bytes(8, "little") + honest[6:]
    assert zstandard.get_frame_parameters(lying).content_size == 1 << 40
    with pytest.raises(FormatError, match="declares 1,099,511,627,776 bytes"):
        zstd_bounded(lying, 256, "test block")
    assert zstd_bounded(honest, 64, "test block") == b"\1" * 64
    with pytest.raises(FormatError):
        zstd_bounded(b"\x28\xb5", 64, "test block")  # truncated frame header
