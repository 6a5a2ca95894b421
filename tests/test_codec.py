"""Tests for finr3d.codec: round trips, sizes, atomic writes and hostile files.

The helpers ``_split`` and ``_assemble`` rebuild files from the layout written
in docs/format.md (not from codec internals), so the hostile-input tests also
check that the spec and the implementation agree.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finr3d import codec
from finr3d.errors import FormatError

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

PREFIX = struct.Struct("<8sHHIQ")
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHAPES = [(), (7,), (5, 3), (4, 3, 2), (3, 2, 2, 5), (70, 1), (2, 100)]


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _gaussian(shape, seed: int = 0, sigma: float = 0.1) -> np.ndarray:
    return (_rng(seed).standard_normal(shape) * sigma).astype(np.float32)


def _model(seed: int = 0) -> dict[str, np.ndarray]:
    """A small MLP-like tensor dict with the naming the field uses."""
    return {
        "modes.0.net.layers.0.weight": _gaussian((32, 1), seed, 1.0),
        "modes.0.net.layers.0.bias": _gaussian((32,), seed + 1),
        "modes.0.net.layers.1.weight": _gaussian((16, 32), seed + 2),
        "modes.1.net.layers.1.weight": _gaussian((24, 32), seed + 4),
        "core": _gaussian((4, 4, 4), seed + 3),
    }


META = {
    "kind": "sdf",
    "decomposition": "tucker",
    "ranks": [4, 4, 4],
    "library_version": "0.1.0",
    "world_transform": {"scale": 2.5, "offset": [0.1, -0.2, 0.3]},
    "name": "lapin \u00e9t\u00e9 \U0001f407",
}


@functools.lru_cache(maxsize=None)
def _small_file(quantization: str = "int8") -> bytes:
    return codec.encode(META, _model(), quantization=quantization)


def _split(blob: bytes) -> tuple[dict, bytes]:
    """Header JSON and compressed payload of a valid file, following docs/format.md."""
    _, _, _, header_len, payload_len = PREFIX.unpack(blob[: PREFIX.size])
    header = json.loads(blob[PREFIX.size : PREFIX.size + header_len])
    start = PREFIX.size + header_len + 16
    return header, blob[start : start + payload_len]


def _assemble(header, payload: bytes, *, version: int = 1, flags: int = 0) -> bytes:
    """A file with correct digests around ``header`` (a dict or raw JSON bytes) and ``payload``."""
    if isinstance(header, bytes):
        text = header
    else:  # the encoder's compact form, so that valid files rebuild byte for byte
        text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
    head = PREFIX.pack(codec.MAGIC, version, flags, len(text), len(payload)) + text
    body = head + hashlib.blake2b(head, digest_size=16).digest() + payload
    return body + hashlib.blake2b(body, digest_size=32).digest()


def _raw_payload(blob: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompress(_split(blob)[1])


def _compress(raw: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(raw)


def _rejected_cheaply(blob: bytes, match: str | None = None, **kwargs) -> FormatError:
    """Assert decode raises FormatError and allocates little doing so."""
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match=match) as info:
            codec.decode(blob, **kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * len(blob) + 2**20, f"peak {peak} bytes for a {len(blob)}-byte file"
    return info.value


# ---------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
def test_fp32_round_trip_is_bit_exact(shape):
    values = _gaussian(shape, 1)
    if values.size:
        values.reshape(-1)[0] = -0.0
        values.reshape(-1)[-1] = np.float32(1e-42)  # subnormal
    meta, tensors = codec.decode(codec.encode(META, {"x": values}, quantization="fp32"))
    assert meta == json.loads(json.dumps(META))
    out = tensors["x"]
    assert out.dtype == np.float32 and out.shape == shape and out.flags.writeable
    assert out.tobytes() == values.tobytes()


def _blockwise_max(values: np.ndarray, block: int) -> np.ndarray:
    flat = values.reshape(-1)
    padded = np.zeros(-(-flat.size // block) * block, np.float32)
    padded[: flat.size] = np.abs(flat)
    return np.repeat(padded.reshape(-1, block).max(axis=1), block)[: flat.size].reshape(values.shape)


@pytest.mark.parametrize("quantization", ["fp16", "int8", "int6", "int4"])
@pytest.mark.parametrize("shape", [s for s in SHAPES if len(s) >= 2])
def test_quantized_error_within_scheme_bound(quantization, shape):
    values = _gaussian(shape, 2, sigma=3.0)
    _, tensors = codec.decode(codec.encode({}, {"w": values}, quantization=quantization))
    error = np.abs(tensors["w"] - values)
    if quantization == "fp16":
        # round-to-nearest half precision: relative 2^-11, absolute 2^-25 in the subnormal range
        bound = np.abs(values) * 2.0**-11 + 2.0**-25
    elif quantization == "int8":
        row_max = np.abs(values.reshape(shape[0], -1)).max(axis=1)
        bound = np.broadcast_to((row_max / 254)[:, None], (shape[0], values.size // shape[0]))
        bound = bound.reshape(shape)
    else:
        qmax = {"int6": 31, "int4": 7}[quantization]
        bound = _blockwise_max(values, codec.BLOCK_SIZE) / (2 * qmax)
    assert (error <= bound * (1 + 1e-5) + 1e-12).all()
    if quantization in ("int6", "int4"):
        assert error.max() > 0  # the test would be vacuous on a lossless path


@pytest.mark.parametrize("quantization", codec.QUANTIZATIONS)
def test_vectors_scalars_and_kept_tensors_stay_exact(quantization):
    tensors = {
        "bias": _gaussian((33,), 3),
        "scalar": np.float32(0.123456789),
        "first": _gaussian((32, 1), 4, 30.0),
        "empty2d": np.zeros((0, 3), np.float32),
        "empty_rows": np.zeros((3, 0), np.float32),
        "ints": np.arange(6, dtype=np.int32).reshape(2, 3),
    }
    blob = codec.encode({}, tensors, quantization=quantization, keep_fp32=["first"])
    _, out = codec.decode(blob)
    assert list(out) == list(tensors)
    for name in ("bias", "scalar", "first", "empty2d", "empty_rows"):
        expected = np.asarray(tensors[name], np.float32)
        assert out[name].shape == expected.shape
        assert out[name].tobytes() == expected.tobytes(), name
    np.testing.assert_allclose(out["ints"], tensors["ints"], atol=0.5)
    schemes = {e["name"]: e["quantization"] for e in _split(blob)[0]["tensors"]}
    assert schemes["bias"] == schemes["scalar"] == schemes["first"] == "fp32"
    assert schemes["ints"] == quantization


def test_empty_tensor_dict_and_empty_meta():
    assert codec.decode(codec.encode({}, {})) == ({}, {})


def test_all_zero_tensor_quantizes_to_zero():
    for q in ("int8", "int6", "int4"):
        _, out = codec.decode(codec.encode({}, {"z": np.zeros((3, 70), np.float32)}, quantization=q))
        assert not out["z"].any()


def test_fp16_falls_back_to_fp32_beyond_half_range():
    values = np.array([[1e5, -3.0], [70000.5, 1.0]], np.float32)
    _, out = codec.decode(codec.encode({}, {"big": values}, quantization="fp16"))
    assert out["big"].tobytes() == values.tobytes()


def test_numpy_metadata_becomes_json():
    meta = {"psnr": np.float32(31.5), "steps": np.int64(10), "box": np.array([1.0, 2.0]), "t": (1, 2)}
    got, _ = codec.decode(codec.encode(meta, {}))
    assert got == {"psnr": 31.5, "steps": 10, "box": [1.0, 2.0], "t": [1, 2]}


def test_encoding_is_deterministic():
    assert codec.encode(META, _model(), quantization="int4") == codec.encode(META, _model(), quantization="int4")


def test_layout_matches_spec():
    blob = _small_file()
    magic, version, flags, header_len, payload_len = PREFIX.unpack(blob[: PREFIX.size])
    assert (magic, version, flags) == (codec.MAGIC, codec.FORMAT_VERSION, 0)
    assert len(blob) == 24 + header_len + 16 + payload_len + 32
    assert blob[-32:] == hashlib.blake2b(blob[:-32], digest_size=32).digest()
    header, payload = _split(blob)
    assert header["meta"] == json.loads(json.dumps(META)) and header["minor"] == 0
    assert zstandard.get_frame_parameters(payload).content_size == sum(e["length"] for e in header["tensors"])
    assert _assemble(header, payload) == blob


# ---------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------
def test_fewer_bits_give_smaller_files():
    tensors = {f"layer{i}.weight": _gaussian((128, 128), i) for i in range(3)}
    sizes = codec.payload_sizes({}, tensors)
    assert list(sizes) == list(codec.QUANTIZATIONS)
    ordered = [sizes[q] for q in codec.QUANTIZATIONS]
    assert ordered == sorted(ordered, reverse=True) and len(set(ordered)) == len(ordered)
    n = 3 * 128 * 128
    assert sizes["int4"] < 0.6 * n  # about 4.5 bits per weight, scales included
    assert sizes["int8"] == len(codec.encode({}, tensors, quantization="int8"))


# ---------------------------------------------------------------------------
# Encoder input validation
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(quantization="int3"), ValueError, "unknown quantization"),
        (dict(keep_fp32=["nope"]), ValueError, "not present"),
        (dict(level=0), ValueError, "zstd level"),
        (dict(tensors={"x": np.array([[np.nan, 1.0]])}), ValueError, "NaN or Inf"),
        (dict(tensors={"x": np.array([[1e300, 1.0]])}), ValueError, "NaN or Inf"),
        (dict(tensors={"x": np.array([["a"]])}), ValueError, "real numeric"),
        (dict(tensors={"x": np.zeros((1,) * 9)}), ValueError, "dimensions"),
        (dict(tensors={1: np.zeros(2)}), TypeError, "names must be str"),
        (dict(tensors=[np.zeros(2)]), TypeError, "mapping"),
        (dict(header=[1]), TypeError, "header must be a dict"),
        (dict(header={"x": float("nan")}), ValueError, "JSON"),
        (dict(header={"x": object()}), ValueError, "JSON"),
        (dict(header={"x": "a" * (2**20)}), ValueError, "limit"),
    ],
)
def test_encode_rejects_bad_input(kwargs, error, match):
    args = {"header": {}, "tensors": {"w": np.ones((2, 2))}}
    args.update(kwargs)
    header, tensors = args.pop("header"), args.pop("tensors")
    with pytest.raises(error, match=match):
        codec.encode(header, tensors, **args)


def test_encode_rejects_deep_header():
    deep: list = []
    for _ in range(40):
        deep = [deep]
    with pytest.raises(ValueError, match="nests deeper"):
        codec.encode({"deep": deep}, {})


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------
def test_write_read_and_header(tmp_path):
    path = tmp_path / "model.finr"
    written = codec.write(path, META, _model(), quantization="int6")
    assert written == path.stat().st_size
    meta, tensors = codec.read(path)
    assert meta == codec.read_header(str(path)) == json.loads(json.dumps(META))
    assert set(tensors) == set(_model())
    info = codec.read_info(path)
    assert info["file_bytes"] == written and info["parameters"] == sum(v.size for v in _model().values())
    assert {t["name"]: t["quantization"] for t in info["tensors"]}["core"] == "int6"
    assert sorted(os.listdir(tmp_path)) == ["model.finr"]


def test_overwrite_false_refuses_and_keeps_file(tmp_path):
    path = tmp_path / "model.finr"
    codec.write(path, {"v": 1}, {}, overwrite=False)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        codec.write(path, {"v": 2}, {}, overwrite=False)
    assert codec.read_header(path) == {"v": 1}
    codec.write(path, {"v": 3}, {})
    assert codec.read_header(path) == {"v": 3}
    assert sorted(os.listdir(tmp_path)) == ["model.finr"]


@pytest.mark.parametrize("failing", ["replace", "fsync", "write"])
def test_interrupted_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch, failing):
    path = tmp_path / "model.finr"
    codec.write(path, {"v": "old"}, _model())
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full (simulated)")

    if failing == "write":
        # Fails after part of the bytes reached the temp file.
        real_open = open

        class HalfWriter:
            def __init__(self, handle):
                self.handle = handle

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.handle.close()

            def write(self, data):
                self.handle.write(data[: len(data) // 2])
                raise OSError("disk full (simulated)")

        def fake_open(file, mode="r", *args, **kwargs):
            handle = real_open(file, mode, *args, **kwargs)
            temp = os.path.basename(str(file)).startswith(f".{path.name}.finr3d-tmp-")
            return HalfWriter(handle) if "w" in mode and temp else handle

        monkeypatch.setattr("builtins.open", fake_open)
    else:
        monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError, match="simulated"):
        codec.write(path, {"v": "new"}, _model(1))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.finr"]


def test_file_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such .finr file"):
        codec.read(tmp_path / "missing.finr")
    with pytest.raises(FileNotFoundError, match="no such .finr file"):
        codec.read_header(tmp_path / "missing.finr")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        codec.read(tmp_path)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        codec.write(tmp_path, {}, {})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        codec.write(tmp_path / "no" / "dir.finr", {}, {})
    empty = tmp_path / "empty.finr"
    empty.write_bytes(b"")
    with pytest.raises(FormatError, match="empty file"):
        codec.read(empty)
    with pytest.raises(FormatError, match="empty file"):
        codec.read_header(empty)


def test_read_header_detects_truncation_and_corrupt_header(tmp_path):
    blob = _small_file()
    path = tmp_path / "cut.finr"
    path.write_bytes(blob[:-1])
    with pytest.raises(FormatError, match="truncated"):
        codec.read_header(path)
    corrupt = bytearray(blob)
    corrupt[PREFIX.size + 3] ^= 0x20
    path.write_bytes(bytes(corrupt))
    with pytest.raises(FormatError, match="checksum"):
        codec.read_header(path)


# ---------------------------------------------------------------------------
# Corrupted and hostile files
# ---------------------------------------------------------------------------
def test_every_truncation_is_a_format_error():
    blob = _small_file()
    assert 2000 <= len(blob) <= 4096
    for cut in range(len(blob)):
        with pytest.raises(FormatError):
            codec.decode(blob[:cut])
    with pytest.raises(FormatError, match="unexpected bytes"):
        codec.decode(blob + b"\0")


@SETTINGS
@given(st.data())
def test_random_bit_flips_are_detected(data):
    blob = bytearray(_small_file())
    for _ in range(data.draw(st.integers(1, 3))):
        bit = data.draw(st.integers(0, 8 * len(blob) - 1))
        blob[bit // 8] ^= 1 << (bit % 8)
    if bytes(blob) == _small_file():  # an even number of flips on one bit
        return
    with pytest.raises(FormatError):
        codec.decode(bytes(blob))


@SETTINGS
@given(st.binary(max_size=512), st.booleans())
def test_random_garbage_is_rejected(garbage, with_magic):
    blob = (codec.MAGIC + garbage) if with_magic else garbage
    with pytest.raises(FormatError):
        codec.decode(blob)


def test_foreign_files_get_a_hint():
    with pytest.raises(FormatError, match="zip archive"):
        codec.decode(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(FormatError, match="bad magic"):
        codec.decode(b"hello world, not a model")
    with pytest.raises(FormatError, match="truncated"):
        codec.decode(codec.MAGIC[:5])


def _hostile(mutate) -> bytes:
    """Edit the header of the small int8 file in place with ``mutate(header)`` and re-sign it."""
    header, payload = _split(_small_file())
    mutate(header)
    return _assemble(header, payload)


def _entry(header, name="modes.0.net.layers.1.weight"):
    return next(e for e in header["tensors"] if e["name"] == name)


def _append_duplicate(header):
    last = header["tensors"][-1]
    header["tensors"].append(dict(last, offset=last["offset"] + last["length"]))


# case -> (in-place edit of the header dict, expected message)
HOSTILE_HEADERS = {
    "absurd shape": (lambda h: _entry(h).update(shape=[2**40, 2**40]), "disagrees with shape"),
    "absurd shape, consistent length": (
        lambda h: _entry(h).update(shape=[2**40, 2**40], length=4 * 2**40 + 2**80),
        "max_tensor_bytes",
    ),
    "shape past the dim limit": (lambda h: _entry(h).update(shape=[2**41]), "integers from 0"),
    "negative dim": (lambda h: _entry(h).update(shape=[-16, 32]), "integers from 0"),
    "float dim": (lambda h: _entry(h).update(shape=[16.0, 32]), "integers from 0"),
    "bool dim": (lambda h: _entry(h).update(shape=[True, 32]), "integers from 0"),
    "shape not a list": (lambda h: _entry(h).update(shape="16x32"), "shape must be a list"),
    "nine dims": (lambda h: _entry(h).update(shape=[1] * 9), "at most 8 dimensions"),
    "offset beyond end": (lambda h: _entry(h).update(offset=10**9), "offset must be"),
    "negative offset": (lambda h: _entry(h).update(offset=-4), "offset must be"),
    "float offset": (lambda h: _entry(h).update(offset=float(_entry(h)["offset"])), "offset must be"),
    "huge length": (lambda h: _entry(h).update(length=2**62), "disagrees"),
    "length off by one": (lambda h: _entry(h).update(length=_entry(h)["length"] + 1), "disagrees"),
    "huge declared size": (
        lambda h: _entry(h).update(shape=[2**20, 2**20], length=2**40 + 4 * 2**20),
        "max_tensor_bytes",
    ),
    "unknown quantization": (lambda h: _entry(h).update(quantization="int3"), "upgrade finr3d"),
    "block not multiple of 8": (lambda h: _entry(h).update(quantization="int4", block=12), "block must be"),
    "missing block": (lambda h: _entry(h).update(quantization="int6"), "block must be"),
    "shuffle not bool": (lambda h: _entry(h).update(shuffle="yes"), "shuffle must be"),
    "duplicate names": (_append_duplicate, "duplicate tensor name"),
    "name not a string": (lambda h: _entry(h).update(name=7), "name must be a string"),
    "entry not an object": (lambda h: h["tensors"].insert(0, 5), "expected an object"),
    "tensors not a list": (lambda h: h.update(tensors={"a": 1}), "'tensors' must be a list"),
    "too many tensors": (lambda h: h.update(tensors=[0] * (codec.MAX_TENSORS + 1)), "at most 10000"),
    "meta missing": (lambda h: h.pop("meta"), "'meta' must be an object"),
    "meta not an object": (lambda h: h.update(meta=[1, 2]), "'meta' must be an object"),
    "negative minor": (lambda h: h.update(minor=-1), "'minor'"),
    "entries reordered": (lambda h: h["tensors"].reverse(), "offset must be"),
    "table drops a tensor": (lambda h: h["tensors"].pop(), "declares"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_HEADERS))
def test_hostile_header_is_rejected_cheaply(case):
    mutate, match = HOSTILE_HEADERS[case]
    _rejected_cheaply(_hostile(mutate), match=match)


def _with_header_text(text: bytes) -> bytes:
    return _assemble(text, _split(_small_file())[1])


@pytest.mark.parametrize(
    "text, match",
    [
        (b'{"minor":0,"meta":{"x":' + b"[" * 100_000 + b"]" * 100_000 + b'},"tensors":[]}', "nest"),
        (b'{"minor":0,"meta":{"x":' + b"[" * 40 + b"]" * 40 + b'},"tensors":[]}', "nest"),
        (b'{"minor":0,"meta":{"x":NaN},"tensors":[]}', "finite"),
        (b'{"minor":0,"meta":{"x":-Infinity},"tensors":[]}', "finite"),
        (b'{"minor":0,"meta":{"x":1e999},"tensors":[]}', "finite"),
        (b'{"minor":0,"meta":{},"meta":{},"tensors":[]}', "duplicate keys"),
        (b'{"minor":0,"meta":{"x":"\xff\xfe"},"tensors":[]}', "UTF-8"),
        (b'{"minor":0,"meta":{', "JSON"),
        (b'[{"minor":0,"meta":{},"tensors":[]}]', "must be a JSON object"),
        (b'{"minor":0,"meta":{"x":' + b"1" * 5000 + b'},"tensors":[]}', "JSON"),
    ],
)
def test_hostile_json_is_rejected_cheaply(text, match):
    _rejected_cheaply(_with_header_text(text), match=match)


@pytest.mark.parametrize(
    "version, flags, match",
    [(3, 0, "unsupported .finr format version 3"), (2, 0, "version 2 file"), (0, 0, "version 0"), (65535, 0, "upgrade"), (1, 1, "flags")],
)
def test_unknown_version_or_flags_rejected(version, flags, match):
    header, payload = _split(_small_file())
    _rejected_cheaply(_assemble(header, payload, version=version, flags=flags), match=match)


def test_oversized_header_length_rejected():
    blob = PREFIX.pack(codec.MAGIC, 1, 0, 2**31, 0) + b"\0" * 64
    _rejected_cheaply(blob, match="header length")


def test_header_digest_must_match_even_with_a_valid_file_digest():
    blob = bytearray(_small_file())
    header_len = PREFIX.unpack(blob[: PREFIX.size])[3]
    blob[PREFIX.size + header_len] ^= 1  # first byte of the header digest
    body = bytes(blob[:-32])
    _rejected_cheaply(body + hashlib.blake2b(body, digest_size=32).digest(), match="header checksum")


def _with_payload(raw: bytes | None = None, frame: bytes | None = None) -> bytes:
    header, _ = _split(_small_file())
    return _assemble(header, frame if frame is not None else _compress(raw))


def _patched_raw(entry_name: str, *patches: tuple[int, bytes]) -> bytes:
    """The small int8 file's raw payload with bytes written at offsets inside one segment."""
    header, _ = _split(_small_file())
    raw = bytearray(_raw_payload(_small_file()))
    for at, value in patches:
        start = _entry(header, entry_name)["offset"] + at
        raw[start : start + len(value)] = value
    return bytes(raw)


@pytest.mark.parametrize(
    "case, match",
    [
        ("nan scale", "scales"),
        ("inf scale", "scales"),
        ("negative scale", "scales"),
        ("overflowing scale", "NaN or Inf"),
        ("inf value", "NaN or Inf"),
        ("frame too short", "declares"),
        ("frame too long", "declares"),
        ("frame without size", "declares"),
        ("not zstd", "zstd"),
        ("bytes after frame", "zstd"),
    ],
)
def test_hostile_payload_is_rejected_cheaply(case, match):
    raw = _raw_payload(_small_file())
    layer = "modes.0.net.layers.1.weight"  # int8: 16 float32 scales, then codes
    blob = {
        "nan scale": lambda: _with_payload(_patched_raw(layer, (4, struct.pack("<f", float("nan"))))),
        "inf scale": lambda: _with_payload(_patched_raw(layer, (0, struct.pack("<f", float("inf"))))),
        "negative scale": lambda: _with_payload(_patched_raw(layer, (8, struct.pack("<f", -1.0)))),
        "overflowing scale": lambda: _with_payload(_patched_raw(layer, (0, struct.pack("<f", 3e38)))),
        # The bias is fp32 in 4 byte planes of 32 bytes; a high byte 0x7f over a
        # third byte 0x80 sets every exponent bit: Inf or NaN.
        "inf value": lambda: _with_payload(
            _patched_raw("modes.0.net.layers.0.bias", (2 * 32, b"\x80" * 4), (3 * 32, b"\x7f" * 4))
        ),
        "frame too short": lambda: _with_payload(raw[:-1]),
        "frame too long": lambda: _with_payload(raw + b"\0"),
        "frame without size": lambda: _with_payload(
            frame=zstandard.ZstdCompressor(write_content_size=False).compress(raw)
        ),
        "not zstd": lambda: _with_payload(frame=b"\x28\xb5\x2f\xfd" + b"\xff" * 40),
        "bytes after frame": lambda: _with_payload(frame=_compress(raw) + b"junk"),
    }[case]()
    _rejected_cheaply(blob, match=match)


def test_decompression_bomb_needs_explicit_budget():
    zeros = {"w": np.zeros((1024, 1024), np.float32)}  # 4 MiB of zeros, a few hundred bytes coded
    with pytest.warns(RuntimeWarning, match="max_tensor_bytes"):
        blob = codec.encode({}, zeros, quantization="fp32")
    assert len(blob) < 2000
    _rejected_cheaply(blob, match="max_tensor_bytes")
    _, out = codec.decode(blob, max_tensor_bytes=4 * 2**20)
    assert out["w"].shape == (1024, 1024) and not out["w"].any()
    with pytest.raises(FormatError, match="max_tensor_bytes"):
        codec.decode(_small_file(), max_tensor_bytes=100)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8) | st.sampled_from(codec.QUANTIZATIONS),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=10,
)
ENTRY_KEYS = ["name", "shape", "quantization", "block", "shuffle", "offset", "length"]


@SETTINGS
@given(
    index=st.integers(0, 3),
    key=st.sampled_from(ENTRY_KEYS),
    value=JSON_VALUES | st.lists(st.integers(-(2**45), 2**45), max_size=9),
)
def test_fuzzed_table_entries_fail_only_with_format_error(index, key, value):
    def mutate(header):
        header["tensors"][index][key] = value

    blob = _hostile(mutate)
    tracemalloc.start()
    try:
        try:
            codec.decode(blob)
        except FormatError:
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * len(blob) + 2**20


@SETTINGS
@given(key=st.sampled_from(["minor", "meta", "tensors", "extra"]), value=JSON_VALUES)
def test_fuzzed_top_level_fails_only_with_format_error(key, value):
    blob = _hostile(lambda header: header.update({key: value}))
    try:
        meta, _ = codec.decode(blob)
    except FormatError:
        return
    assert isinstance(meta, dict)


@SETTINGS
@given(st.data())
def test_fuzzed_payload_bytes_fail_only_with_format_error(data):
    raw = bytearray(_raw_payload(_small_file()))
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(raw) - 4))
        raw[at : at + 4] = data.draw(st.binary(min_size=4, max_size=4))
    try:
        _, tensors = codec.decode(_with_payload(bytes(raw)))
    except FormatError:
        return
    assert all(np.isfinite(v).all() for v in tensors.values())


def test_decode_argument_checks():
    with pytest.raises(TypeError, match="bytes"):
        codec.decode("FINR")
    with pytest.raises(ValueError, match="max_tensor_bytes"):
        codec.decode(_small_file(), max_tensor_bytes=-1)
    meta, _ = codec.decode(bytearray(_small_file()))
    assert meta["kind"] == "sdf"


# ---------------------------------------------------------------------------
# Dependencies
# ---------------------------------------------------------------------------
def test_codec_imports_and_round_trips_without_torch():
    script = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np
        import finr3d.codec as codec
        blob = codec.encode({"kind": "sdf"}, {"w": np.ones((4, 70), np.float32)}, quantization="int4")
        meta, tensors = codec.decode(blob)
        assert meta == {"kind": "sdf"} and np.allclose(tensors["w"], 1.0)
        assert sys.modules["torch"] is None
        print("ok")
        """
    )
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60, cwd=root
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
