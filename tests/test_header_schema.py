"""Tests for finr3d.header_schema: hostile field headers, re-signed, at every nesting level.

The files are real fields (built without fitting) whose metadata is edited and
then re-signed with valid digests, so every case passes the container checks
of :mod:`finr3d.codec` and reaches the loaders.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import finr3d
from finr3d import codec, header_schema
from finr3d.cli import main
from finr3d.config import FieldConfig
from finr3d.errors import FormatError, InputError
from finr3d.field import FactorizedField

PREFIX = struct.Struct("<8sHHIQ")
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.function_scoped_fixture])


def _split(blob: bytes) -> tuple[dict, bytes]:
    """Header document and compressed payload of a valid file (docs/format.md)."""
    _, _, _, header_len, payload_len = PREFIX.unpack(blob[: PREFIX.size])
    start = PREFIX.size + header_len + 16
    return json.loads(blob[PREFIX.size: PREFIX.size + header_len]), blob[start: start + payload_len]


def _assemble(document: dict, payload: bytes) -> bytes:
    """A file around ``document`` and ``payload`` with both digests recomputed (re-signed)."""
    text = json.dumps(document, separators=(",", ":")).encode()
    head = PREFIX.pack(codec.MAGIC, 1, 0, len(text), len(payload)) + text
    body = head + hashlib.blake2b(head, digest_size=16).digest() + payload
    return body + hashlib.blake2b(body, digest_size=32).digest()


def _field(kind: str) -> FactorizedField:
    torch.manual_seed(0)
    if kind == "image":
        info = {"kind": "image", "shape": [12, 10], "channels": 3, "value_offset": 0.0, "value_scale": 1.0,
                "bit_depth": 8, "source": "x.png"}
        return FactorizedField(2, 3, FieldConfig(decomposition="tucker", rank=4, width=8, depth=1),
                               target_info=info)
    info = {"kind": "sdf", "shape": [8, 8, 8], "channels": 1, "value_offset": 0.0, "value_scale": 0.1,
            "world_from_normalized": np.diag([2.0, 2.0, 2.0, 1.0]).tolist()}
    field = FactorizedField(3, 1, FieldConfig(rank=4, width=8, depth=1), target_info=info)
    with torch.no_grad():  # a sphere-ish SDF: the bias alone would be constant
        field.bias.fill_(-0.5)
    return field


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fields")
    out = {}
    for kind in ("sdf", "image"):
        out[kind] = root / f"{kind}.finr"
        _write_v1(_field(kind), out[kind])
    return out


def _write_v1(field: FactorizedField, path: Path) -> None:
    """A version-1 file (weights and JSON header): v1 files must keep loading, and the same blob is what an
    editable version-2 file embeds (its WEIGHTS section)."""
    header, tensors = field.to_parts()
    codec.write(path, header, tensors, quantization="fp32", keep_fp32=field.precision_critical())


def _as_editable_v2(v1_blob: bytes, kind: str) -> bytes:
    """``v1_blob`` as the WEIGHTS section of a version-2 file, beside the FIELD section of the untouched field
    (the layout ``save(editable=True)`` writes)."""
    from finr3d import compact, compact_io

    spec = compact.pack_field(compact_io.field_spec(_field(kind)))
    return codec.encode_v2([(codec.SECTION_FIELD, spec, False), (codec.SECTION_WEIGHTS, v1_blob, False)])


def _mutated(files, kind, edit, tmp_path) -> Path:
    document, payload = _split(files[kind].read_bytes())
    edit(document["meta"])
    path = tmp_path / "hostile.finr"
    path.write_bytes(_assemble(document, payload))
    return path


def _set(path):
    *parents, last = path

    def edit(meta, value):
        node = meta
        for key in parents:
            node = node[key]
        node[last] = value
    return edit


def _cli(args, capsys) -> tuple[int, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse refuses bad usage by exiting
        code = exc.code
    err = capsys.readouterr().err
    return code, err


# case -> (kind, dotted path, value); every one must be a FormatError at load and exit 2 in the CLI
HOSTILE = {
    "depth 1e7 (hung for 60 s)": ("sdf", ["backbone_configs", 0, "depth"], 10_000_000),
    "width 1e23 (364 MB, exit 1)": ("sdf", ["backbone_configs", 0, "width"], 1e23),
    "target a string": ("sdf", ["target"], "x"),
    "omega0 1e308": ("sdf", ["backbone_configs", 0, "omega0"], 1e308),
    "value_offset 1e308": ("sdf", ["target", "value_offset"], 1e308),
    "value_scale 0": ("sdf", ["target", "value_scale"], 0.0),
    "omega_hidden 0 (ZeroDivisionError)": ("sdf", ["backbone_configs", 1, "omega_hidden"], 0),
    "omega_hidden -1e308": ("sdf", ["backbone_configs", 1, "omega_hidden"], -1e308),
    "negative out_dim": ("sdf", ["backbone_configs", 2, "out_dim"], -8),
    "world matrix 0-d (IndexError)": ("sdf", ["target", "world_from_normalized"], 2.0),
    "world matrix entry a string": ("sdf", ["target", "world_from_normalized", 0, 0], "1"),
    "parameters None (format string)": ("sdf", ["parameters"], None),
    "parts a list": ("sdf", ["parts"], [1, 2]),
    "metric a list": ("sdf", ["history"], {"metrics": {"iou": [0.5]}}),
    "history seconds a string": ("sdf", ["history"], {"seconds": "1"}),
    "field_config a list": ("sdf", ["field_config"], [1]),
    "field_config an int": ("sdf", ["field_config"], 3),
    "backbone config a float": ("sdf", ["backbone_configs", 0], 1.5),
    "backbone configs a str": ("sdf", ["backbone_configs"], "siren"),
    "unknown backbone option": ("sdf", ["backbone_configs", 0, "frequencies"], 10),
    "ndim disagrees with modes": ("sdf", ["ndim"], 4),
    "bool ndim": ("sdf", ["ndim"], True),
    "in_dim disagrees": ("sdf", ["backbone_configs", 0, "in_dim"], 2),
    "modes out of range": ("sdf", ["field_config", "modes"], [[0], [1], [7]]),
    "rank zero": ("sdf", ["field_config", "rank"], 0),
    "rank float": ("sdf", ["field_config", "rank"], 4.0),
    # the parameter count still matches, but the decomposition disagrees with the mode networks
    "decomposition swapped (RuntimeError in decode)": ("image", ["field_config", "decomposition"], "tt"),
    "rank disagrees with out_dim": ("sdf", ["field_config", "rank"], 5),
    "target shape negative": ("image", ["target", "shape"], [-12, 10]),
    "target shape huge": ("image", ["target", "shape"], [2**40, 10]),
    "target shape one axis": ("image", ["target", "shape"], [12]),
    "bit depth 3": ("image", ["target", "bit_depth"], 3),
    "channels 0": ("image", ["channels"], 0),
    "format wrong": ("image", ["format"], "other"),
}


#: cases that only building the field can see (the decomposition against the mode networks)
BUILD_ONLY = {"decomposition swapped (RuntimeError in decode)", "rank disagrees with out_dim"}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_field_header_is_a_format_error(case, files, tmp_path, capsys):
    kind, path, value = HOSTILE[case]
    hostile = _mutated(files, kind, lambda meta: _set(path)(meta, value), tmp_path)
    with pytest.raises(FormatError):
        finr3d.load(hostile)
    embedded = tmp_path / "hostile-v2.finr"  # the same header inside an editable version-2 file
    embedded.write_bytes(_as_editable_v2(hostile.read_bytes(), kind))
    with pytest.raises(FormatError):
        finr3d.load(embedded)
    code, err = _cli(["info", hostile], capsys)
    if case in BUILD_ONLY:  # every key is valid on its own: info may describe the header
        assert code in (0, 2)
    else:
        assert code == 2 and err.count("\n") == 1, err
    out = tmp_path / ("o.ply" if kind == "sdf" else "o.npy")
    command = ["mesh", hostile, "-o", out, "--resolution", 8] if kind == "sdf" else ["decode", hostile, "-o", out]
    code, err = _cli(command, capsys)
    assert code == 2 and "error:" in err and err.count("\n") == 1, err


def test_validate_names_the_nested_field():
    header, _ = _field("sdf").to_parts()
    bad = copy.deepcopy(header)
    bad["backbone_configs"][0]["depth"] = 10_000_000
    with pytest.raises(FormatError, match=r"backbone_configs\.0\.depth: 10000000 is out of range"):
        header_schema.validate_field_meta(bad)
    assert header_schema.validate_field_meta(header) is header


def test_empty_header_info_names_what_is_missing(tmp_path, capsys):
    path = tmp_path / "e.finr"
    codec.write(path, {}, {})
    code = main(["info", str(path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "0 tensors" in out and "lacks backbone_configs, channels, field_config, format, ndim" in out
    with pytest.raises(FormatError, match="no finr3d field"):
        finr3d.load(path)


def test_duplicate_table_keys_and_names_are_rejected(files, tmp_path):
    document, payload = _split(files["sdf"].read_bytes())
    text = json.dumps(document, separators=(",", ":"))
    first = json.dumps(document["tensors"][0], separators=(",", ":"))
    doubled = text.replace(first, first[:-1] + ',"shape":[1]}', 1)
    assert doubled != text
    raw = doubled.encode()
    head = PREFIX.pack(codec.MAGIC, 1, 0, len(raw), len(payload)) + raw
    body = head + hashlib.blake2b(head, digest_size=16).digest() + payload
    with pytest.raises(FormatError, match="duplicate keys"):
        codec.decode(body + hashlib.blake2b(body, digest_size=32).digest())
    document["tensors"][1]["name"] = document["tensors"][0]["name"]
    with pytest.raises(FormatError, match="duplicate tensor name"):
        codec.decode(_assemble(document, payload))


def test_decode_memory_is_refused_from_the_header(files, tmp_path, capsys, monkeypatch):
    hostile = _mutated(files, "image", lambda meta: meta["target"].update(shape=[20000, 20000]), tmp_path)
    code, err = _cli(["decode", hostile, "-o", tmp_path / "o.png"], capsys)
    assert code == 2 and "20000x20000" in err and "GiB" in err and "--max-memory" in err, err
    # the limit is raised by the flag or the environment; a small one refuses even the real shape
    code, err = _cli(["decode", files["image"], "-o", tmp_path / "o.npy", "--max-memory", "1k"], capsys)
    assert code == 2 and "1.0 KiB limit" in err, err
    monkeypatch.setenv(header_schema.MEMORY_ENV, "2k")
    code, err = _cli(["decode", files["image"], "-o", tmp_path / "o.npy"], capsys)
    assert code == 2 and "2.0 KiB limit" in err, err
    code, err = _cli(["decode", files["image"], "-o", tmp_path / "o.npy", "--max-memory", "64M"], capsys)
    assert code == 0 and np.load(tmp_path / "o.npy").shape == (12, 10, 3)
    code, err = _cli(["decode", files["image"], "-o", tmp_path / "p.npy", "--max-memory", "lots"], capsys)
    assert code == 2 and "memory size" in err


def test_decode_resolution_is_refused_before_allocating(files, tmp_path, capsys, monkeypatch):
    # a .npy decode streams slab by slab (bounded memory); its output is held to the decode limit, and one that
    # cannot fit on the disk is refused up front
    monkeypatch.delenv(header_schema.MEMORY_ENV, raising=False)
    code, err = _cli(["decode", files["sdf"], "-o", tmp_path / "o.npy", "--resolution", 1000], capsys)
    assert code == 2 and "1000x1000x1000 decode (the output)" in err and "--max-memory 4G" in err, err
    code, err = _cli(["decode", files["sdf"], "-o", tmp_path / "o.npy", "--resolution", 20000,
                      "--max-memory", "100000G"], capsys)
    assert code == 2 and "20000x20000x20000" in err and "disk" in err, err
    assert not (tmp_path / "o.npy").exists() and not list(tmp_path.glob(".o*"))  # nothing half-written
    # a hostile header's stored shape is held to the same limit
    hostile = _mutated(files, "image", lambda meta: meta["target"].update(shape=[20000, 20000]), tmp_path)
    code, err = _cli(["decode", hostile, "-o", tmp_path / "h.npy"], capsys)
    assert code == 2 and "20000x20000" in err and "(the output)" in err, err


def test_memory_sizes():
    assert header_schema.parse_size("2G") == 2 << 30
    assert header_schema.parse_size("512MiB") == 512 << 20
    assert header_schema.parse_size("100") == 100
    with pytest.raises(InputError):
        header_schema.parse_size("-1G")


def test_all_zero_field_is_a_clear_no_surface(files, tmp_path, capsys):
    field = finr3d.load(files["sdf"])
    with torch.no_grad():
        for p in field.parameters():
            p.zero_()
    zero = tmp_path / "zero.finr"
    field.save(zero)
    code, err = _cli(["mesh", zero, "-o", tmp_path / "z.ply", "--resolution", 8], capsys)
    assert code == 2 and "No surface" in err and "constant field" in err, err


def test_levels_outside_the_range_and_nan(files, tmp_path, capsys):
    code, err = _cli(["mesh", files["sdf"], "-o", tmp_path / "a.ply", "--level", "nan"], capsys)
    assert code == 2 and "finite" in err
    code, err = _cli(["mesh", files["sdf"], "-o", tmp_path / "a.ply", "--level", "1e9", "--resolution", 8], capsys)
    assert code == 2 and "values range over" in err, err


# --------------------------------------------------------------------------- fuzzing every nesting level
def _paths(node, prefix=()):
    """Every (path) into a JSON document, containers included."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, prefix + (index,))


REPLACEMENTS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0, -1, 1e308, -1e308, 2**31, 1e-300]),
    st.text(max_size=6), st.lists(st.integers(-3, 2**33), max_size=9), st.dictionaries(st.text(max_size=3),
                                                                                      st.integers(), max_size=2),
)


@SETTINGS
@given(data=st.data())
def test_fuzzed_field_headers_load_or_fail_with_format_error(files, tmp_path, capsys, data):
    kind = data.draw(st.sampled_from(["sdf", "image"]))
    document, payload = _split(files[kind].read_bytes())
    meta = document["meta"]
    # every path but the root; the free-form history only down to its second level
    paths = [p for p in _paths(meta) if p and (p[0] != "history" or len(p) <= 2)]
    path = data.draw(st.sampled_from(paths))
    value = data.draw(REPLACEMENTS)
    node = meta
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    hostile = tmp_path / "fuzz.finr"
    hostile.write_bytes(_assemble(document, payload))
    code, err = _cli(["info", hostile], capsys)
    assert code in (0, 2), err
    try:
        field = finr3d.load(hostile)
    except FormatError:
        return
    # accepted: then what the loaders read must be usable
    assert field.kind in ("sdf", "image") or isinstance(field.kind, str)
    resolution = 6 if field.ndim == 3 else None
    values = field.grid(resolution or [4] * field.ndim)
    assert np.isfinite(values).all()


def test_schema_works_without_torch():
    script = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None
        from finr3d import header_schema
        assert header_schema.field_problems({})[0] == "missing backbone_configs"
        print("ok")
        """
    )
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
