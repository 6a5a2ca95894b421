"""The lattice residual (finr3d.lattice_residual): exact round trips, the error bound, the step search, hostile
bytes, and a volume's goal met by a smaller field plus the residual."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

import finr3d
from finr3d import lattice_residual as lr
from finr3d.errors import FormatError, InputError
from finr3d.lattice_residual import LatticeResidual, fit_lattice_residual, fit_within
from finr3d.volume import VolumeTarget

# decoded values are float32 sums of a prediction and a code times the step: a node's error is step/2 plus the
# rounding of those float32 operations, a few ulps of the values' magnitude
F32 = float(np.finfo(np.float32).eps)


def _blobs(shape, seed=0, noise=0.01):
    """Smooth blobs plus a little noise: what a volume's residual looks like."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    out = np.zeros(shape)
    for _ in range(4):
        c = rng.uniform(-0.7, 0.7, len(shape))
        out += rng.uniform(0.3, 1.0) * np.exp(-sum((g - ci) ** 2 for g, ci in zip(grids, c)) / 0.05)
    return (out + noise * rng.standard_normal(shape)).astype(np.float32)


@pytest.mark.parametrize("shape", [(37,), (9, 1, 17), (33, 20, 5), (5, 6, 7, 8), (2, 2, 2), (1, 1, 1)])
def test_round_trip_is_exact_and_every_node_is_within_half_a_step(shape):
    x = _blobs(shape)
    step = 0.01
    d = fit_lattice_residual(x, step=step)
    back = LatticeResidual.from_bytes(d.to_bytes())
    assert back.resolution == tuple(shape) and back.nbytes == d.nbytes == len(d.to_bytes())
    assert np.array_equal(back.dense(), d.dense())  # the decoder repeats the encoder's closed loop bit for bit
    err = np.abs(back.dense().astype(np.float64) - x)
    assert err.max() <= step / 2 * (1 + 1e-4) + 8 * F32 * float(np.abs(x).max())
    assert d.sse == pytest.approx(float(np.sum(err ** 2)), rel=1e-6)


def test_the_predictors_pay_for_themselves():
    shape = (48, 40, 36)
    smooth = _blobs(shape, noise=0.0)
    noise = np.random.default_rng(1).standard_normal(shape).astype(np.float32) * float(smooth.std())
    step = 0.02
    a, b = fit_lattice_residual(smooth, step=step), fit_lattice_residual(noise, step=step)
    # a smooth field is predicted from its neighbours: far below a same-scale white one at the same step
    assert a.nbytes < 0.25 * b.nbytes
    # and far below the codes' zeroth-order entropy without prediction (a regression to "zero" everywhere)
    q = np.rint(smooth / step).astype(np.int64)
    _, counts = np.unique(q, return_counts=True)
    p = counts / counts.sum()
    assert a.nbytes < 0.5 * float(-(p * np.log2(p)).sum()) * q.size / 8
    # white noise is coded near its entropy under the uniform quantizer (a Gaussian of that scale): the
    # entropy coder works
    sigma = float(noise.std()) / step
    entropy = q.size * (0.5 * math.log2(2 * math.pi * math.e * sigma ** 2)) / 8
    assert b.nbytes < 1.05 * entropy
    # the per-pass choice is used: a smooth field takes an interpolating predictor somewhere, noise none
    used = a.describe()["predictors"]
    assert used["linear"] + used["cubic"] > 0 and sum(used.values()) == len(lr._passes(shape))


def test_an_offset_makes_a_constant_background_free_and_exact():
    x = np.full((40, 36, 30), 0.25, np.float32)
    x[10:20, 8:16, 5:25] += _blobs((10, 8, 20))
    plain = fit_lattice_residual(x, step=0.01)
    shifted = fit_lattice_residual(x, step=0.01, offset=0.25)
    back = LatticeResidual.from_bytes(shifted.to_bytes())
    assert back.offset == pytest.approx(0.25) and np.array_equal(back.dense(), shifted.dense())
    background = np.ones(x.shape, bool)
    background[10:20, 8:16, 5:25] = False
    # coded as exact zeros around the offset (but next to the blobs, where a prediction reaches over)
    assert np.mean(back.dense()[background] == np.float32(0.25)) > 0.95
    assert np.abs(plain.dense()[background] - 0.25).max() <= 0.01 / 2 + 1e-6
    assert shifted.nbytes <= plain.nbytes


def test_fit_within_lands_just_under_the_allowed_error():
    x = _blobs((40, 40, 40))
    n = x.size
    for psnr in (35.0, 45.0):
        sse_max = n * 10 ** (-psnr / 10)
        d = fit_within(x, sse_max)
        assert d.sse <= sse_max
        assert d.sse > 0.6 * sse_max  # the coarsest step that holds, to about 3 %: not a needlessly fine one
        err = LatticeResidual.from_bytes(d.to_bytes()).dense().astype(np.float64) - x
        assert float(np.sum(err ** 2)) == pytest.approx(d.sse, rel=1e-6)


def test_fit_within_counts_what_clipping_to_the_value_range_removes():
    x = np.zeros((32, 32, 32), np.float32)
    x[8:24, 8:24, 8:24] = _blobs((16, 16, 16)).clip(0, 1)
    base = np.zeros_like(x)
    sse_max = x.size * 10 ** (-40 / 10)
    clipped = fit_within(x, sse_max, base=base, bounds=(0.0, 1.0))
    unclipped = fit_within(x, sse_max)
    assert clipped.step >= unclipped.step  # errors below 0 are clipped away by a reader, so a coarser step holds
    pred = np.clip(clipped.dense(), 0.0, 1.0).astype(np.float64)
    assert float(np.sum((pred - x) ** 2)) <= sse_max


def test_grid_and_points_interpolate_multilinearly_between_nodes():
    x = _blobs((9, 7, 5))
    d = fit_lattice_residual(x, step=1e-3)
    v = d.dense().astype(np.float64)
    nodes = [np.linspace(-1, 1, n) for n in x.shape]
    assert np.array_equal(d.grid(nodes), d.dense())
    # between nodes along axis 0: the mean of the two neighbours; outside the cube: clamped
    mid = [np.array([-1 + 1 / 8]), nodes[1], nodes[2]]
    assert np.allclose(d.grid(mid)[0], 0.5 * (v[0] + v[1]), atol=1e-6)
    assert np.array_equal(d.grid([np.array([-3.0, 5.0]), nodes[1], nodes[2]]), d.dense()[[0, -1]])
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, (50, 3))
    from scipy.interpolate import RegularGridInterpolator

    ref = RegularGridInterpolator(nodes, v)(pts)
    assert np.allclose(d.points(pts), ref, atol=1e-5)
    g = d.grid([pts[:4, 0], pts[:3, 1], pts[:2, 2]])
    cross = np.stack(np.meshgrid(pts[:4, 0], pts[:3, 1], pts[:2, 2], indexing="ij"), -1).reshape(-1, 3)
    assert np.allclose(g.reshape(-1), d.points(cross), atol=1e-6)


def _valid_blob():
    return fit_lattice_residual(_blobs((12, 10, 9)), step=0.005).to_bytes()


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b"XXXX" + b[4:], "bad magic"),
    (lambda b: b[:4] + bytes([9]) + b[5:], "version"),
    (lambda b: b[:5] + bytes([7]) + b[6:], "ndim"),
    (lambda b: b[:10], "truncated"),
    (lambda b: b[:8] + struct.pack("<I", 0) + b[12:], "out of range"),
    (lambda b: b[:20] + struct.pack("<d", float("nan")) + b[28:], "step"),
    (lambda b: b[:28] + struct.pack("<d", float("inf")) + b[36:], "offset"),
    (lambda b: b[:36] + struct.pack("<f", 0.5) + b[40:], "level factors"),
    (lambda b: b[:44] + struct.pack("<I", 99) + b[48:], "passes"),
    (lambda b: b[:48] + bytes([7]) + b[49:], "predictor"),
    (lambda b: b[:-2], "partial ANS word"),
    (lambda b: b + b"\0\0\0\1", "words left"),
])
def test_hostile_bytes_are_refused_with_a_reason(mutate, message):
    with pytest.raises(FormatError, match=message):
        LatticeResidual.from_bytes(mutate(_valid_blob()))


def test_damaged_words_never_escape_as_anything_but_a_format_error():
    blob = bytearray(_valid_blob())
    rng = np.random.default_rng(3)
    for _ in range(20):
        bad = bytearray(blob)
        i = int(rng.integers(len(bad) - 40, len(bad)))
        bad[i] ^= 0xFF
        try:
            LatticeResidual.from_bytes(bytes(bad))
        except FormatError:
            pass  # decoding garbage to garbage values is allowed; anything else escaping is not


def test_a_lattice_claiming_terabytes_is_refused_up_front(tmp_path):
    from finr3d import codec, compact_io

    field = finr3d.fit(VolumeTarget(_blobs((12, 10, 9))), steps=2, width=8, rank=2)
    good = fit_lattice_residual(_blobs((12, 10, 9)), step=0.01).to_bytes()
    hostile = good[:8] + struct.pack("<3I", 60000, 60000, 60000) + good[20:]  # a well-formed file around it

    class Section:
        def to_bytes(self):
            return hostile

    field.detail = Section()
    blob = compact_io.encode_field(field)
    with pytest.raises(InputError, match=r"lattice residual needs about [0-9.]+ GiB.*--max-memory"):
        finr3d.FactorizedField.from_file(blob)
    with pytest.raises(InputError, match="--max-memory"):
        codec.decode_grid(blob, resolution=[4, 4, 4])


def test_a_field_with_a_residual_decodes_alike_everywhere(tmp_path):
    from finr3d import codec

    vol = _blobs((14, 12, 10))
    field = finr3d.fit(VolumeTarget(vol), steps=5, width=8, rank=2)
    base = field.grid([np.linspace(-1, 1, n) for n in vol.shape])
    field.detail = fit_lattice_residual(vol - base, step=1e-3)
    path = tmp_path / "v.finr"
    field.save(path)
    loaded = finr3d.load(path)
    nodes = [np.linspace(-1, 1, n) for n in vol.shape]
    torch_grid = loaded.grid(nodes)
    numpy_grid = codec.decode_grid(path, resolution=list(vol.shape))
    assert np.allclose(torch_grid, numpy_grid, atol=1e-5)
    assert np.abs(numpy_grid - vol).max() < 1e-3  # field + residual: the coded volume
    assert np.abs(loaded.grid(nodes, detail=False) - vol).max() > 1e-2  # the field alone is not


def _local_volume(shape=(40, 36, 32), seed=0):
    """Sparse sharp blobs on an empty background: structure a low-rank field holds poorly."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    out = np.zeros(shape, np.float32)
    for _ in range(25):
        c = [rng.uniform(3, n - 3) for n in shape]
        r2 = sum((g - ci) ** 2 for g, ci in zip(grids, c))
        out += (rng.uniform(0.3, 1.0) * (r2 < rng.uniform(4, 12))).astype(np.float32)
    return np.clip(out, 0, 1)


def test_choose_rank_takes_the_residual_where_it_is_smaller_and_the_field_where_that_is():
    from finr3d.sweep import choose_rank

    local = VolumeTarget(_local_volume())
    field = finr3d.fit(local, steps=20)
    c = choose_rank(field, local, target=40.0)
    assert "detail" in c and c["psnr"] >= 40.0 and c["bytes"] < c["table"][0]["bytes"] * 50
    field_only = [r for r in c["table"] if "detail" not in r and r.get("psnr", 0) >= 40.0]
    assert all(c["bytes"] < r["bytes"] for r in field_only)
    # what `finr3d fit --target-psnr` writes (the chosen prefix and step, the residual as the field's detail)
    field.detail = c["_detail"]
    blob = field.encode(rank=tuple(c["ranks"]), step=c["step"])
    assert abs(len(blob) - c["bytes"]) < 512  # the metadata differs, the coded field does not
    assert local.evaluate(finr3d.FactorizedField.from_file(blob), ssim=False)["psnr"] >= 40.0  # what the reader sees
    # a low-rank volume: the field alone is the smaller file
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in (30, 28, 26)], indexing="ij")
    smooth = VolumeTarget((np.exp(-(x ** 2 + y ** 2)) * np.cos(2 * z) * 0.5 + 0.5).astype(np.float32))
    field = finr3d.fit(smooth, steps=20)
    c = choose_rank(field, smooth, target=40.0)
    assert "detail" not in c and c["psnr"] >= 40.0


def test_a_budget_split_with_a_residual_is_within_the_budget_and_no_worse():
    from finr3d.sweep import choose_rank

    local = VolumeTarget(_local_volume())
    field = finr3d.fit(local, steps=20)
    c = choose_rank(field, local, budget_bytes=6000)
    assert c["bytes"] <= 6000
    plain = [r for r in c["table"] if "detail" not in r and "psnr" in r]
    assert all(c["psnr"] >= r["psnr"] for r in plain)
    assert "detail" in c  # sharp local blobs: the residual's bytes buy more than the field's


def test_a_large_lattice_ranks_its_candidates_on_a_crop_and_skips_hopeless_finalists(monkeypatch):
    from finr3d import sweep

    monkeypatch.setattr(sweep, "RESIDUAL_CROP_NODES", 1 << 13)  # this small volume takes the large-lattice path
    local = VolumeTarget(_local_volume())
    field = finr3d.fit(local, steps=20)
    c = sweep.choose_rank(field, local, target=40.0)
    assert "detail" in c and c["psnr"] >= 40.0  # the crop's ranking still finds the residual
    coded = []
    original = lr.fit_within
    monkeypatch.setattr(lr, "fit_within", lambda r, *a, **kw: coded.append(r.size) or original(r, *a, **kw))
    front = [{"ranks": list(field.truncate(1).ranks), "bytes": 400, "step": 3e-3, "quantization": "compact",
              "proxy": 1.0, "_blob": field.truncate(1).encode(step=3e-3)}]
    rows = sweep._residual_rows(field, local, front, target=40.0, budget_bytes=None, upto=None, to_beat=10)
    # a field-only choice of 10 bytes: the crops are estimated, and no finalist is coded on the whole lattice
    assert rows == [] and coded and max(coded) < local.array.size


def test_a_budget_on_a_large_lattice_tries_only_the_smallest_fields(monkeypatch):
    from finr3d import sweep

    monkeypatch.setattr(sweep, "RESIDUAL_CROP_NODES", 1 << 13)
    local = VolumeTarget(_local_volume())
    field = finr3d.fit(local, steps=20)
    c = sweep.choose_rank(field, local, budget_bytes=6000)
    assert c["bytes"] <= 6000
    tried = [r for r in c["table"] if "detail" in r]
    assert 1 <= len(tried) <= sweep.RESIDUAL_FINALISTS


def test_a_decoded_volume_is_clipped_to_its_sources_value_range(tmp_path):
    from finr3d.decoding import decode_array

    vol = (_local_volume((16, 14, 12)) * 200 + 20).astype(np.float32)  # source range 20 .. 220
    field = finr3d.fit(VolumeTarget(vol), steps=3, width=8, rank=2)
    field.detail = fit_lattice_residual(np.full(vol.shape, 0.5, np.float32), step=1e-3)  # lifts it past the top
    out = decode_array(field)[..., 0]
    assert out.min() >= vol.min() and out.max() <= vol.max()
    assert np.isclose(out.max(), vol.max())  # clipped, not rescaled


def test_a_crops_search_hints_the_whole_lattices(monkeypatch):
    x = _blobs((48, 44, 40))
    sse_max = x.size * 10 ** (-40 / 10)
    box = lr.crop_box(x.shape, 1 << 13)
    crop = fit_within(x[box], sse_max * x[box].size / x.size)
    assert crop.finalists and crop.finalists[0] == (crop.levels, crop.step)
    runs = []
    real = lr._run_encoder
    monkeypatch.setattr(lr, "_run_encoder", lambda *a, **kw: runs.append(1) or real(*a, **kw))
    hinted = fit_within(x, sse_max, hint=crop)
    n_hinted = len(runs)
    runs.clear()
    full = fit_within(x, sse_max)
    assert hinted.sse <= sse_max and hinted.levels in [lv for lv, _ in crop.finalists]
    assert n_hinted < len(runs)  # fewer codings of the whole lattice
    assert hinted.nbytes <= 1.15 * full.nbytes  # and not much worse for it
