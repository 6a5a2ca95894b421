"""Format version 2: compact fields, editable files, the numpy-only decoder, hostile input."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import finr3d
import finr3d.compact_io
from finr3d import codec, compact
from finr3d.config import FieldConfig
from finr3d.errors import FormatError
from finr3d.field import FactorizedField

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHAPE = (9, 10, 11)
BOUNDS = [[-2.0, 3.0], [0.0, 1.0], [10.0, 14.0]]


def make(decomposition="tucker", backbone="siren", rank=4, channels=1, kind="sdf", shape=SHAPE, decay=True, **kw):
    """A small field with the energy decay of a trained one (leading components dominate)."""
    torch.manual_seed(0)
    cfg = FieldConfig(decomposition=decomposition, backbone=backbone, rank=rank, width=16, depth=1, **kw)
    field = FactorizedField(len(shape), channels, cfg, samples=list(shape),
                            target_info={"kind": kind, "shape": list(shape), "bounds": BOUNDS[:len(shape)],
                                         "value_offset": 0.0, "value_scale": 1.0})
    with torch.no_grad():
        for net in field.nets:
            net.out.weight.mul_(8.0)
        p = field.blocks[0].mixing_parameter()
        if decay and decomposition == "tucker":
            idx = torch.stack(torch.meshgrid(*[torch.arange(r) for r in p.shape[:-1]], indexing="ij")).sum(0)
            p.mul_(torch.exp(-float(decay) * 0.4 * idx.float())[..., None] * 4)
        elif decay:
            p.mul_(torch.exp(-float(decay) * 0.4 * torch.arange(p.shape[0]).float())[:, None] * 4)
        field.bias.fill_(0.1)
    return field


def stored_axes(shape=SHAPE):
    return [torch.linspace(-1, 1, n) for n in shape]


def resign(blob: bytes) -> bytes:
    body = blob[:-codec.V2_DIGEST_BYTES]
    return body + hashlib.blake2b(body, digest_size=codec.V2_DIGEST_BYTES).digest()


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("decomposition", ["cp", "tucker", "tt"])
def test_compact_fp32_reproduces_the_field_on_its_stored_samples(decomposition, tmp_path):
    field = make(decomposition)
    n = field.save(tmp_path / "f.finr", quantization="fp32")
    assert n == (tmp_path / "f.finr").stat().st_size
    back = finr3d.load(tmp_path / "f.finr")
    assert back.config.backbone == "cosine"
    ref = field.grid(stored_axes())
    scale = float(np.abs(ref).max())
    # float32 coefficients of an exact float64 bake: error ~ 1e-6 of the field's range
    np.testing.assert_allclose(back.grid(stored_axes()), ref, atol=2e-5 * scale)


@pytest.mark.parametrize("decomposition", ["cp", "tucker", "tt"])
@pytest.mark.parametrize("quantization", ["fp16", "int8", "int4"])
def test_numpy_decoder_agrees_with_load(decomposition, quantization, tmp_path):
    field = make(decomposition)
    path = tmp_path / "f.finr"
    field.save(path, quantization=quantization)
    back = finr3d.load(path)
    axes = [torch.linspace(-1, 1, n) for n in (7, 13, 5)]
    want = back.grid(axes)
    got = codec.decode_grid(path, resolution=(7, 13, 5))
    np.testing.assert_allclose(got, want, atol=1e-5 * max(1.0, float(np.abs(want).max())))
    # world-space points
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (50, 3))
    lo, hi = np.asarray(BOUNDS)[:, 0], np.asarray(BOUNDS)[:, 1]
    world = (x + 1) / 2 * (hi - lo) + lo
    pts = codec.decode_points(path, world, squeeze=False)
    np.testing.assert_allclose(pts, back.points(x).detach().numpy(), atol=1e-5 * max(1.0, float(np.abs(pts).max())))
    # a rank prefix, as grid(rank=)
    np.testing.assert_allclose(codec.decode_grid(path, resolution=(7, 13, 5), rank=2),
                               back.grid(axes, rank=2), atol=1e-5 * max(1.0, float(np.abs(want).max())))


def test_bounds_select_a_world_box(tmp_path):
    field = make("tucker")
    path = tmp_path / "f.finr"
    field.save(path)
    full = codec.decode_grid(path, resolution=(9, 9, 9))
    half = codec.decode_grid(path, resolution=(5, 9, 9), bounds=[[-2.0, 0.5], BOUNDS[1], BOUNDS[2]])
    np.testing.assert_allclose(half, full[:5], atol=1e-5)


@pytest.mark.parametrize("editable", [False, True])
def test_a_turned_placement_survives_save_load_and_the_numpy_decoder(editable, tmp_path):
    """A field moved by a rotation (Blender's move of a fitted object) keeps its placement in every file,
    also with no optional metadata: the FIELD section stores the affine map when bounds cannot give it."""
    from finr3d.placement import move_info

    field = make("tucker", kind="sdf")
    field.target_info["world_from_normalized"] = np.diag([2.5, 0.5, 2.0, 1.0]).tolist()
    field.target_info["bounds"] = [[-2.5, 2.5], [-0.5, 0.5], [-2.0, 2.0]]
    c, s_ = np.cos(0.7), np.sin(0.7)
    turn = np.array([[c, -s_, 0, 1.0], [s_, c, 0, -2.0], [0, 0, 1, 0.5], [0, 0, 0, 1]])
    field.target_info = move_info(field.target_info, turn)
    want = np.asarray(field.target_info["world_from_normalized"])
    path = tmp_path / "t.finr"
    field.save(path, editable=editable, metadata=False, quantization="fp32")
    back = finr3d.load(path)
    np.testing.assert_allclose(back.target_info["world_from_normalized"], want, rtol=1e-12, atol=1e-12)
    assert codec.read_field(path).spec.affine is not None
    # world points: numpy decoder against the torch field at the same points mapped back by the placement
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (40, 3))
    world = x @ want[:3, :3].T + want[:3, 3]
    got = codec.decode_points(path, world, squeeze=False)
    ref = back.points(x).detach().numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5 * max(1.0, float(np.abs(ref).max())))
    # a world box of a turned field is evaluated point by point, and agrees with decode_points
    box = [[0.0, 1.0], [-2.0, -1.0], [0.0, 0.5]]
    grid = codec.decode_grid(path, resolution=(3, 4, 2), bounds=box)
    mesh = np.stack(np.meshgrid(*[np.linspace(a, b, n) for (a, b), n in zip(box, (3, 4, 2))], indexing="ij"), -1)
    np.testing.assert_allclose(grid, codec.decode_points(path, mesh.reshape(-1, 3)).reshape(3, 4, 2), atol=1e-6)


def test_a_singular_stored_placement_is_a_format_error():
    field = make("tucker", kind="sdf")
    spec = finr3d.compact_io.field_spec(field)
    spec.flags |= compact.FLAG_AFFINE
    spec.affine = np.zeros((3, 4))
    with pytest.raises(FormatError, match="affine placement"):
        compact.unpack_field(compact.pack_field(spec))


@pytest.mark.parametrize("backbone", ["siren", "relu", "wire", "finer"])
def test_editable_file_keeps_the_weights_and_decodes_in_numpy(backbone, tmp_path):
    field = make("tucker", backbone=backbone, basis=3)
    path = tmp_path / "e.finr"
    field.save(path, quantization="fp32", editable=True)
    back = finr3d.load(path)
    for (k, a), (_, b) in zip(field.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k
    axes = [torch.linspace(-1, 1, n) for n in (6, 7, 8)]
    want = field.grid(axes)
    np.testing.assert_allclose(codec.decode_grid(path, resolution=(6, 7, 8)), want,
                               atol=2e-4 * max(1.0, float(np.abs(want).max())))  # float32 sines at omega 30


def test_version1_files_still_load_and_decode(tmp_path):
    field = make("cp")
    path = tmp_path / "v1.finr"
    header, tensors = field.to_parts()
    codec.write(path, header, tensors, quantization="fp32")
    back = finr3d.load(path)
    np.testing.assert_array_equal(back.grid(8), field.grid(8))
    np.testing.assert_allclose(codec.decode_grid(path, resolution=8), field.grid(8), atol=1e-5)


def test_multi_axis_modes_keep_their_weights(tmp_path):
    field = make("tt", modes=[[1, 2], [0]], kind="image", decay=False)
    assert finr3d.compact_io.can_compact(field)
    field.save(tmp_path / "g.finr", quantization="fp32")
    back = finr3d.load(tmp_path / "g.finr")
    np.testing.assert_array_equal(back.grid(stored_axes()), field.grid(stored_axes()))
    assert codec.describe_file(tmp_path / "g.finr")["storage"] == "weights (editable)"


@pytest.mark.parametrize("kind, shape, channels", [("image", (12, 16), 3), ("video", (5, 8, 6), 3)])
def test_images_and_video_save_and_load_compact(kind, shape, channels, tmp_path):
    field = make("tucker" if kind == "image" else "cp", kind=kind, shape=shape, channels=channels, rank=6)
    field.save(tmp_path / "x.finr", quantization="fp32")
    back = finr3d.load(tmp_path / "x.finr")
    assert back.kind == kind and back.target_info["shape"] == list(shape)
    ref = field.grid(stored_axes(shape))
    np.testing.assert_allclose(back.grid(stored_axes(shape)), ref, atol=2e-5 * float(np.abs(ref).max()))


def test_save_writes_exactly_encode_and_sizes_follow_rank(tmp_path):
    field = make("tucker", rank=16, decay=0.25, shape=(33, 34, 35))
    assert field.save(tmp_path / "a.finr", rank=4) == len(field.encode(rank=4))
    assert (tmp_path / "a.finr").read_bytes() == field.encode(rank=4)
    full, quarter = len(field.encode(metadata=False)), len(field.encode(rank=4, metadata=False))
    assert quarter <= 0.3 * full, (quarter, full)
    # encode_steps bakes once and gives the same bytes as encode at each step
    steps = finr3d.compact_io.encode_steps(field, [1e-4, 1e-3])
    assert steps[0] == field.encode(step=1e-4) and steps[1] == field.encode(step=1e-3)
    assert len(steps[1]) < len(steps[0])


def test_fixed_overhead_is_small():
    field = make("tucker", rank=2)
    blob = field.encode(quantization="int8", metadata=False)
    sections = codec.decode_v2(blob)
    fixed = len(blob) - len(sections[codec.SECTION_CODES]) + 1  # the coder byte belongs to the codes
    assert fixed <= 256, fixed
    assert codec.SECTION_META not in sections
    assert codec.SECTION_META in codec.decode_v2(field.encode(quantization="int8"))


def test_decoder_works_without_torch(tmp_path):
    field = make("tucker")
    path = tmp_path / "f.finr"
    field.save(path, quantization="int8")
    want = finr3d.load(path).grid(6)
    np.save(tmp_path / "want.npy", want)
    code = f"""
import sys
sys.modules['torch'] = None
import numpy as np
from finr3d import codec
got = codec.decode_grid({str(path)!r}, resolution=6)
pts = codec.decode_points({str(path)!r}, np.zeros((2, 3)) + 1.0)
assert 'torch' not in sys.modules or sys.modules['torch'] is None
np.testing.assert_allclose(got, np.load({str(tmp_path / 'want.npy')!r}), atol=1e-5)
print('ok', pts.shape)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ok (2,)" in out.stdout


def test_local_detail_section_round_trips(tmp_path):
    from finr3d.local_detail import fit_local_detail

    field = make("tucker")
    rng = np.random.default_rng(0)
    residual = np.zeros((17, 17, 17))
    residual[4:9, 4:9, 4:9] = rng.normal(0, 0.05, (5, 5, 5))
    field.detail = fit_local_detail(residual, step=1e-3)
    path = tmp_path / "d.finr"
    field.save(path)
    back = finr3d.load(path)
    assert back.detail is not None
    with_detail, without = back.grid(9), back.grid(9, detail=False)
    assert np.abs(with_detail - without).max() > 1e-3
    np.testing.assert_allclose(codec.decode_grid(path, resolution=9), with_detail, atol=1e-5)
    np.testing.assert_allclose(codec.decode_grid(path, resolution=9, detail=False), without, atol=1e-5)
    assert back.truncate(2).detail is back.detail  # a prefix keeps the detail
    assert len(field.encode(detail=False)) < len(field.encode())
    assert finr3d.field.FactorizedField.from_file(field.encode(detail=False)).detail is None


# --------------------------------------------------------------------------- hostile input
def small_file() -> bytes:
    return make("tucker", rank=2, shape=(5, 6, 7)).encode(quantization="int8")


def test_truncation_at_every_offset_is_a_format_error():
    blob = small_file()
    for n in range(len(blob)):
        with pytest.raises(FormatError):
            codec.decode_field(blob[:n])
    with pytest.raises(FormatError, match="unexpected bytes"):
        codec.decode_field(blob + b"\0")


@SETTINGS
@given(st.data())
def test_resigned_mutations_give_format_errors_or_valid_fields(data):
    blob = bytearray(small_file())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - codec.V2_DIGEST_BYTES - 1))
        blob[i] = data.draw(st.integers(0, 255))
    try:
        ff = codec.decode_field(resign(bytes(blob)))
    except FormatError:
        return
    # what decodes must evaluate to finite numbers
    assert np.isfinite(codec.decode_grid(ff, resolution=3)).all()


@SETTINGS
@given(field_bytes=st.binary(min_size=0, max_size=200))
def test_arbitrary_field_sections_are_validated(field_bytes):
    blob = small_file()
    sections = codec.decode_v2(blob)
    rebuilt = codec.encode_v2([(codec.SECTION_FIELD, field_bytes, False),
                               (codec.SECTION_CODES, sections[codec.SECTION_CODES], False)])
    with pytest.raises(FormatError):
        codec.decode_field(rebuilt)


def test_declared_sizes_are_bounded_before_allocation():
    blob = bytearray(small_file())
    # section 2 (CODES, stored) -> claim it is zstd with a 4 GiB decoded length
    at = codec._V2_HEAD.size + codec._V2_SECTION.size
    kind, comp, res, stored, decoded = codec._V2_SECTION.unpack_from(blob, at)
    codec._V2_SECTION.pack_into(blob, at, kind, codec.ZSTD, 0, stored, 2**32 - 1)
    with pytest.raises(FormatError, match="decompression bomb|budget"):
        codec.decode_field(resign(bytes(blob)))
    # a FIELD section declaring huge modes: refused by the value budget, not by allocating
    spec = compact.unpack_field(codec.decode_v2(small_file())[codec.SECTION_FIELD])
    spec.columns = [60000, 60000, 60000]
    spec.terms = [8000, 8000, 8000]
    rebuilt = codec.encode_v2([(codec.SECTION_FIELD, compact.pack_field(spec), False),
                               (codec.SECTION_CODES, codec.decode_v2(small_file())[codec.SECTION_CODES], False)])
    with pytest.raises(FormatError, match="budget"):
        codec.decode_field(rebuilt)


@pytest.mark.parametrize("mutate, match", [
    (lambda b: b[:8] + struct.pack("<H", 3) + b[10:], "version"),
    (lambda b: b[:10] + struct.pack("<H", 1) + b[12:], "flags"),
    (lambda b: b[:12] + bytes([0]) + b[13:], "sections"),
    (lambda b: b[:12] + bytes([17]) + b[13:], "sections"),
])
def test_bad_container_fields(mutate, match):
    with pytest.raises(FormatError, match=match):
        codec.decode_field(resign(mutate(small_file())))


def test_checksum_is_verified():
    blob = bytearray(small_file())
    blob[40] ^= 1
    with pytest.raises(FormatError, match="checksum"):
        codec.decode_field(bytes(blob))


def test_unknown_optional_sections_are_skipped_and_required_ones_refused():
    sections = codec.decode_v2(small_file())
    base = [(codec.SECTION_FIELD, sections[codec.SECTION_FIELD], False),
            (codec.SECTION_CODES, sections[codec.SECTION_CODES], False)]
    codec.decode_field(codec.encode_v2(base + [(200, b"future", True)]))
    with pytest.raises(FormatError, match="upgrade"):
        codec.decode_field(codec.encode_v2(base + [(99, b"future", False)]))
    with pytest.raises(FormatError, match="twice"):
        codec.decode_field(codec.encode_v2(base + [base[1]]))


def test_meta_section_must_be_strict_json():
    sections = codec.decode_v2(small_file())
    base = [(codec.SECTION_FIELD, sections[codec.SECTION_FIELD], False),
            (codec.SECTION_CODES, sections[codec.SECTION_CODES], False)]
    for bad in (b"{", b"[1]", b'{"a": NaN}', b'{"a":1,"a":2}', b"[" * 100 + b"]" * 100):
        with pytest.raises(FormatError):
            codec.decode_field(codec.encode_v2(base + [(codec.SECTION_META, bad, True)]))
    assert codec.decode_field(codec.encode_v2(base + [(codec.SECTION_META, json.dumps({"a": 1}).encode(), True)])
                              ).meta == {"a": 1}


def test_info_and_read_header_describe_v2(tmp_path):
    field = make("tucker")
    field.save(tmp_path / "f.finr")
    meta = codec.read_header(tmp_path / "f.finr")
    assert meta["format_version"] == 2 and meta["kind"] == "sdf" and meta["ndim"] == 3
    assert meta["decomposition"] == "tucker" and len(meta["ranks"]) == 3


@pytest.mark.parametrize("decomposition", ["cp", "tucker", "tt"])
def test_numpy_grid_in_slabs_equals_one_piece(decomposition):
    ff = codec.decode_field(make(decomposition).encode(quantization="int8"))
    axes = [np.linspace(-1, 1, n) for n in (7, 6, 5)]
    ev = codec._Evaluator(ff)
    np.testing.assert_allclose(ev.grid(axes, chunk_elements=31), ev.grid(axes), atol=1e-6)


def _with_meta(meta) -> bytes:
    sections = codec.decode_v2(small_file())
    return codec.encode_v2([(codec.SECTION_FIELD, sections[codec.SECTION_FIELD], False),
                            (codec.SECTION_CODES, sections[codec.SECTION_CODES], False),
                            (codec.SECTION_META, json.dumps(meta).encode(), True)])


@pytest.mark.parametrize("meta", [
    {"history": 7.5}, {"history": [7]}, {"history": {"metrics": 7}}, {"history": {"metrics": {"psnr": {"7": 7}}}},
    {"history": {"seconds": [7]}}, {"target": 7}, {"target": {"shape": "7"}}, {"target": {"shape": 1e23}},
    {"target": {"shape": [9, [7], 11]}}, {"target": {"shape": [9, 10, 11, 9, 10, 11]}},
])
def test_meta_values_are_validated_before_use(meta, tmp_path):
    # robustness.py found these: META type swaps reached finr3d info / load as AttributeError / TypeError
    path = tmp_path / "m.finr"
    path.write_bytes(_with_meta({"format": "finr3d-field", **meta}))
    if meta != {"target": {"shape": [9, 10, 11, 9, 10, 11]}}:  # well-typed, only inconsistent with FIELD: info says so
        with pytest.raises(FormatError, match="re-export"):
            codec.describe_file(path)
    with pytest.raises(FormatError, match="re-export"):
        finr3d.load(path)
    (tmp_path / "ok.finr").write_bytes(_with_meta({"format": "finr3d-field", "history": {}}))
    assert finr3d.load(tmp_path / "ok.finr").ndim == 3


@pytest.mark.parametrize("step", [3e38, 1e35])
def test_a_hostile_step_cannot_overflow_float32(step):
    # robustness.py found it: a re-signed FIELD step of 3e38 decoded to 1.8e41 (finite in float64), inf on load
    sections = codec.decode_v2(small_file())
    field = bytearray(sections[codec.SECTION_FIELD])
    struct.pack_into("<f", field, 8, step)
    blob = codec.encode_v2([(codec.SECTION_FIELD, bytes(field), False),
                            (codec.SECTION_CODES, sections[codec.SECTION_CODES], False)])
    with pytest.raises(FormatError, match="re-export"):
        codec.decode_field(blob)


@pytest.mark.parametrize("shape", [[5, 6], [20000, 20000], [5, 6, 7, 8]])
def test_a_volume_meta_shape_of_the_wrong_length_is_a_format_error(shape, tmp_path):
    # robustness.py found it: a volume's META target.shape [8, 7] reached voxel_frame (ValueError) on load
    blob = make("tt", rank=2, kind="volume", shape=(5, 6, 7)).encode(quantization="int8")
    sections = codec.decode_v2(blob)
    meta = json.loads(sections[codec.SECTION_META])
    meta["target"]["shape"] = shape
    meta["target"].pop("world_from_normalized", None)
    path = tmp_path / "v.finr"
    path.write_bytes(codec.encode_v2([(k, json.dumps(meta).encode() if k == codec.SECTION_META else v, True)
                                      for k, v in sections.items()]))
    with pytest.raises(FormatError, match="re-export"):
        finr3d.load(path)


def test_a_meta_shape_that_disagrees_with_the_stored_samples_is_a_format_error(tmp_path):
    """A compact file stores one cosine term per stored sample, so a META target.shape asking for another
    (e.g. 20000 x 20000 pixels from a 435-byte file, which once decoded for over 10 s) is refused on load."""
    field = make("tucker", kind="image", shape=(12, 16), channels=3)
    blob = field.encode()
    sections = codec.decode_v2(blob)
    meta = json.loads(sections[codec.SECTION_META])
    assert meta["target"]["shape"] == [12, 16]
    meta["target"]["shape"] = [20000, 20000]
    hostile = codec.encode_v2([(kind, json.dumps(meta).encode() if kind == codec.SECTION_META else raw,
                                kind == codec.SECTION_META) for kind, raw in sections.items()])
    with pytest.raises(FormatError, match="disagrees with the FIELD section"):
        finr3d.field.FactorizedField.from_file(hostile)
    assert finr3d.field.FactorizedField.from_file(blob).target_info["shape"] == [12, 16]


# --------------------------------------------------------------------------- the bounded ANS coder
def test_bounded_coder_is_lossless_against_the_first_coder_and_smaller(monkeypatch):
    """The default coder (3) decodes to exactly what the first ANS coder (1) does, in fewer bytes; files of
    coder 1 still load."""
    field = make(rank=16, decay=0.15, shape=(24, 24, 24))
    new = field.encode(step=1e-3)
    monkeypatch.setattr(compact, "DEFAULT_CODER", compact.CODER_ANS)
    old = field.encode(step=1e-3)
    assert codec.decode_v2(new)[codec.SECTION_CODES][0] == compact.CODER_ANS_BOUNDED
    assert codec.decode_v2(old)[codec.SECTION_CODES][0] == compact.CODER_ANS
    a, b = codec.decode_field(old).compact, codec.decode_field(new).compact
    assert np.array_equal(a.mixing, b.mixing)
    assert all(np.array_equal(x, y) for x, y in zip(a.coefficients, b.coefficients))
    assert len(new) < len(old)


def test_best_fit_scales_beat_mean_scales_on_sparse_groups():
    """A sparse group (2 % of codes ±1): the mean |code| as Laplace scale makes each nonzero cost ~20 bits;
    the scale chosen by code length must cost at most 1.25x the group's empirical entropy."""
    rng = np.random.default_rng(0)
    codes = np.zeros(20000, np.int64)
    hit = rng.random(20000) < 0.02
    codes[hit] = rng.choice([-1, 1], int(hit.sum()))
    groups = np.zeros(len(codes), np.int64)
    p = hit.mean()
    entropy_bytes = len(codes) * (-(p * np.log2(p / 2) + (1 - p) * np.log2(1 - p))) / 8
    best = len(compact.encode_codes(codes, groups, 1, bounded=True))
    mean = len(compact.encode_codes(codes, groups, 1, bounded=False))
    assert best <= 1.25 * entropy_bytes + 8
    assert best < 0.6 * mean
    assert np.array_equal(compact.decode_codes(memoryview(compact.encode_codes(codes, groups, 1)), groups, 1), codes)


@pytest.mark.parametrize("bounded", [True, False])
def test_a_code_stream_of_no_words_decodes(bounded):
    """One code of -1 leaves the ANS coder's state where it began, so it writes no words; such a section
    (written by every release with the ANS coders, e.g. a rank-(1, 3, 2) prefix of a noisy volume at a coarse
    step) must decode, not be called damaged."""
    codes, groups = np.array([-1], np.int64), np.zeros(1, np.int64)
    blob = compact.encode_codes(codes, groups, 1, bounded=bounded)
    if bounded:
        assert len(blob) == 2  # the head alone (bit length, group scale): no ANS words
    assert np.array_equal(compact.decode_codes(memoryview(blob), groups, 1, bounded=bounded), codes)
    with pytest.raises(FormatError, match="whole number of ANS words"):
        compact.decode_codes(memoryview(blob + b"\x00\x01"), groups, 1, bounded=bounded)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=1, max_size=6), st.integers(1, 3))
def test_short_code_streams_round_trip(values, n_groups):
    codes = np.array(values, np.int64)
    groups = np.arange(len(codes), dtype=np.int64) % n_groups
    blob = compact.encode_codes(codes, groups, n_groups)
    assert np.array_equal(compact.decode_codes(memoryview(blob), groups, n_groups), codes)


def test_bounded_coder_rejects_a_hostile_alphabet_bound():
    codes = np.array([0, 1, -2, 0, 3], np.int64)
    groups = np.zeros(5, np.int64)
    blob = bytearray(compact.encode_codes(codes, groups, 1))
    assert blob[0] == 2  # bit length of max |code| = 3: alphabet [-3, 3]
    with pytest.raises(FormatError, match="bound"):
        compact.decode_codes(memoryview(bytes([21]) + blob[1:]), groups, 1)
    with pytest.raises(FormatError, match="bound 0"):
        compact.decode_codes(memoryview(bytes([0]) + blob[1:]), groups, 1)
    with pytest.raises(FormatError):
        compact.decode_codes(memoryview(b""), groups, 1)


def test_core_sum_groups_follow_the_index_sum():
    g, n = compact.core_sum_groups((3, 4, 2, 2))  # Tucker (3, 4, 2), 2 channels
    idx = np.indices((3, 4, 2)).sum(0).reshape(-1)
    assert n == 2 + 3 + 1 + 1
    assert np.array_equal(g, np.repeat(idx, 2))


def test_a_compact_file_a_reader_would_refuse_is_not_written(monkeypatch):
    """Files finr3d writes load with the default budget: the encoder refuses what the reader would."""
    field = make(rank=8)
    blob = field.encode(step=1e-3)
    monkeypatch.setattr(codec, "COMPACT_SLACK", 0)
    monkeypatch.setattr(codec, "COMPACT_EXPANSION", 1)
    with pytest.raises(FormatError, match="budget"):
        codec.decode_field(blob)
    assert codec.decode_field(blob, max_tensor_bytes=1 << 30).compact is not None
    with pytest.raises(ValueError, match="lower rank"):
        field.encode(step=1e-3)


def test_codes_section_is_zstd_coded_only_when_that_pays():
    """The container's zstd on CODES: used where it makes the file smaller, the decoded field unchanged."""
    field = make(rank=16, decay=0.15, shape=(24, 24, 24))
    for step in (1e-3, 0.0):  # ANS codes (scale bytes compress a little), raw float32 coefficients
        blob = field.encode(step=step)
        view = memoryview(blob)
        table = [codec._V2_SECTION.unpack_from(view, codec._V2_HEAD.size + i * codec._V2_SECTION.size)
                 for i in range(codec._V2_HEAD.unpack_from(view)[3])]
        kind, comp, _, stored, decoded = next(t for t in table if t[0] == codec.SECTION_CODES)
        assert (comp == codec.ZSTD) == (stored < decoded)
        sections = codec.decode_v2(blob)  # the same sections, CODES stored
        stored_blob = codec.encode_v2([(k, v, codec.ZSTD_DICT if k == codec.SECTION_META else False)
                                       for k, v in sections.items()])
        assert len(blob) <= len(stored_blob)
        a, b = codec.decode_field(blob).compact, codec.decode_field(stored_blob).compact
        assert np.array_equal(a.mixing, b.mixing)


def test_a_section_compression_does_not_shrink_is_stored():
    noise = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    field_bytes = codec.decode_v2(small_file())[codec.SECTION_FIELD]
    codes = codec.decode_v2(small_file())[codec.SECTION_CODES]
    blob = codec.encode_v2([(codec.SECTION_FIELD, field_bytes, True), (codec.SECTION_CODES, codes, False),
                            (200, noise, True)])  # an optional section of random bytes, asked to compress
    view = memoryview(blob)
    entries = [codec._V2_SECTION.unpack_from(view, codec._V2_HEAD.size + i * codec._V2_SECTION.size)
               for i in range(3)]
    assert entries[2][1] == codec.STORE and entries[2][3] == len(noise)
    assert codec.decode_v2(blob)[codec.SECTION_FIELD] == field_bytes
    with pytest.raises(ValueError, match="compress must be"):
        codec.encode_v2([(codec.SECTION_FIELD, field_bytes, 7)])


def test_meta_is_coded_with_the_built_in_dictionary_and_round_trips():
    """META uses compression 2 (zstd with codec.META_DICTIONARY): a typical SDF report costs well under 128
    bytes; plain zstd frames in a section marked 2 still read, and compression 3 is refused."""
    field = make(rank=6)
    field.history = {"metric_name": "iou", "steps": 326, "seconds": 59.87, "stopped": "budget",
                     "metrics": {"iou": 0.9973, "sdf_mae": 0.0004816, "psnr": 56.84, "loss": 0.00126},
                     "device": "cpu"}
    blob = field.encode(step=1e-3)
    view = memoryview(blob)
    count = codec._V2_HEAD.unpack_from(view)[3]
    entries = [codec._V2_SECTION.unpack_from(view, codec._V2_HEAD.size + i * codec._V2_SECTION.size)
               for i in range(count)]
    kind, comp, _, stored, decoded = next(e for e in entries if e[0] == codec.SECTION_META)
    assert comp == codec.ZSTD_DICT and stored < 128 < decoded
    meta = codec.decode_field(blob).meta
    assert meta["history"]["steps"] == 326 and meta["history"]["metrics"]["iou"] == 0.9973
    # the same sections with META in a plain zstd frame, then with an unknown compression id
    sections = codec.decode_v2(blob)
    plain = codec.encode_v2([(k, v, k == codec.SECTION_META) for k, v in sections.items()])
    assert codec.decode_field(plain).meta == meta
    at = codec._V2_HEAD.size + [e[0] for e in entries].index(codec.SECTION_META) * codec._V2_SECTION.size
    bad = bytearray(blob)
    codec._V2_SECTION.pack_into(bad, at, kind, 3, 0, stored, decoded)
    with pytest.raises(FormatError, match="unknown compression"):
        codec.decode_field(resign(bytes(bad)))


def test_auto_quantization_refines_the_step_only_for_an_accurate_sdf_fit():
    """``auto`` (the default) is fp16's step unless an SDF's recorded fit loss is small enough for that step's
    error to show; then the coarsest halving whose error is within the share of the loss; never coarser."""
    from finr3d.compact_io import AUTO_ERROR_SHARE, AUTO_HALVINGS, AUTO_LATTICE, PRECISION_STEPS, auto_step

    fp16 = PRECISION_STEPS["fp16"]
    field = make("tucker", rank=6, shape=(17, 18, 19))
    assert auto_step(field) == fp16  # no recorded loss: fp16
    assert field.encode() == field.encode(quantization="fp16")

    def error(step):  # the file at ``step`` against its unquantized twin, weighted as auto weighs it
        ref = codec.decode_grid(field.encode(quantization="fp32", metadata=False), AUTO_LATTICE)
        got = codec.decode_grid(field.encode(step=step, metadata=False), AUTO_LATTICE)
        w = 1 + 4 * np.exp(-np.abs(ref) / 0.25)
        return float((w * np.abs(got - ref)).sum() / w.sum())

    e16 = error(fp16)
    assert e16 > 0
    field.history = {"metrics": {"loss": 10 * e16 / AUTO_ERROR_SHARE}}  # a loose fit: fp16 is fine
    assert auto_step(field) == fp16
    field.history = {"metrics": {"loss": 0.6 * e16 / AUTO_ERROR_SHARE}}  # fp16 would add more than the share
    step = auto_step(field)
    assert step < fp16 and error(step) <= 0.6 * e16 and error(2 * step) > 0.6 * e16
    assert field.encode() == field.encode(step=step)
    assert len(field.encode()) > len(field.encode(quantization="fp16"))
    field.history = {"metrics": {"loss": 1e-12}}  # nothing reaches it: the finest step tried
    assert auto_step(field) == fp16 / 2 ** AUTO_HALVINGS
    volume = make("tucker", rank=6, shape=(17, 18, 19), kind="volume")
    volume.history = {"metrics": {"loss": 1e-12}}
    assert auto_step(volume) == fp16  # other kinds: their errors dwarf fp16's step
    # an editable file keeps fp16 weights under auto
    assert field.encode(editable=True) == field.encode(editable=True, quantization="fp16")
    with pytest.raises(ValueError, match="unknown quantization"):
        field.encode(quantization="int3")


def test_blender_bridge_shows_the_bytes_an_auto_export_writes(tmp_path):
    """The panel's info line sizes the file its export writes, under ``auto`` too (the same step at each rank)."""
    from blender_addon import bridge
    from finr3d.compact_io import PRECISION_STEPS, auto_step

    field = make("tucker", rank=6, shape=(17, 18, 19))
    field.history = {"metrics": {"loss": 1e-9}}  # an accurate fit: auto refines the step
    assert auto_step(field) < PRECISION_STEPS["fp16"]
    field.save(tmp_path / "f.finr", quantization="fp32")
    _, _, info = bridge._preview_here(tmp_path / "f.finr", 3, 24, "auto")
    written = bridge._export_here(tmp_path / "f.finr", tmp_path / "out.finr", 3, "auto", False, None)
    assert info["bytes"] == written["bytes"] == (tmp_path / "out.finr").stat().st_size
    assert written["bytes"] > bridge._export_here(tmp_path / "f.finr", tmp_path / "fp16.finr", 3, "fp16", False,
                                                  None)["bytes"]
