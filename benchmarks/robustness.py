"""Hostile .finr files and bad inputs: every one must end as FormatError / exit 2 or a correct result.

Two parts (issues 14 and 17):

1. **Hostile files.** Real fields, built without fitting, in both format versions: an SDF (Tucker), an
   image (CP) and a volume (TT) as version-1 files (``codec.write``) and as compact version-2 files, a
   compact SDF with a DETAIL section and an editable version-2 SDF (a WEIGHTS section). Version 1 is damaged
   in families: truncations, bit flips (not re-signed), re-signed header byte flips, re-signed header
   mutations at every nesting level (``header value``: hostile values of the same type and missing keys;
   ``type swap``: a value of every other JSON type; ``huge size``: sizes and counts set to 1e7..2^63), and
   re-signed tensor-table mutations. Version 2: truncations and bit flips of the whole file, and re-signed
   (trailing digest recomputed) mutations of the container table (version, flags, section count, every
   entry's kind/compression/reserved/stored/decoded, dropped, doubled, reordered and extra sections, zstd
   frames declaring more than the table, an 8 MiB bomb), of the FIELD section (byte flips, truncations, and
   hostile values of every field: kind, ndim, modes, channels, flags, step, bounds, value offset/scale, axis
   masks, cosine terms, columns, TT bonds, bias, affine), of CODES (coder byte, every block length, byte
   flips), of META (the version-1 header families on its document, strict-JSON violations, oversize), of
   DETAIL (byte flips and every header field) and of the embedded WEIGHTS file (the version-1 families
   inside it, then re-wrapped and re-signed). Each case runs ``finr3d.load``, ``finr3d info`` and
   ``finr3d mesh`` (SDF) or ``finr3d decode`` (others) in a forked child of a process that has already
   imported everything, so that the child's peak RSS growth and wall time are the case's own.
2. **Bad inputs.** The table of the issues (degenerate and far-off meshes,
   lying .npy headers, PNG bombs, constant volumes, bad levels, outputs that
   cannot be written, decodes that need too much memory), run through the CLI.

Outcomes per case: ``ok`` (every operation succeeded), ``refused``
(FormatError or exit 2 with one line on stderr), ``other`` (exit 1 or any
other exception: a bug), ``hang`` (over ``--timeout`` seconds), ``over
memory`` (RSS growth above 2x the file size + ``--base-mb``), ``slow`` (over
1 s, reported). Target: 0 other, 0 hangs, 0 over memory.

Run under the bench lock (CPU-heavy)::

    flock /tmp/finr3d-bench.lock python benchmarks/robustness.py --workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hashlib
import io
import json
import os
import random
import signal
import struct
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PREFIX = struct.Struct("<8sHHIQ")
MB = 1 << 20


# --------------------------------------------------------------------------- seeds and re-signing
def _split(blob: bytes) -> tuple[bytes, dict, bytes]:
    _, _, _, header_len, payload_len = PREFIX.unpack(blob[: PREFIX.size])
    text = blob[PREFIX.size: PREFIX.size + header_len]
    start = PREFIX.size + header_len + 16
    return text, json.loads(text), blob[start: start + payload_len]


def _sign(text: bytes, payload: bytes) -> bytes:
    """A version-1 file around raw header JSON ``text`` and ``payload`` with both digests valid (docs/format.md)."""
    from finr3d import codec

    head = PREFIX.pack(codec.MAGIC, 1, 0, len(text), len(payload)) + text
    body = head + hashlib.blake2b(head, digest_size=16).digest() + payload
    return body + hashlib.blake2b(body, digest_size=32).digest()


def _resign(document: dict, payload: bytes) -> bytes:
    return _sign(json.dumps(document, separators=(",", ":")).encode(), payload)


# version 2 (docs/format.md part 2): a 16-byte head, 12 bytes a section, the bodies, a 16-byte BLAKE2b digest
V2_HEAD = struct.Struct("<8sHHB3s")
V2_SECTION = struct.Struct("<BBHII")


def _v2_resign(body: bytes) -> bytes:
    """``body`` (every byte before the digest) with a valid trailing digest (``resign`` in tests/test_codec_v2.py)."""
    return body + hashlib.blake2b(body, digest_size=16).digest()


def _v2_sections(blob: bytes) -> list[dict]:
    """The section table of a valid version-2 file: kind, comp, reserved, stored, decoded, content (decoded)."""
    import zstandard

    count = blob[12]
    at = V2_HEAD.size + V2_SECTION.size * count
    out = []
    for i in range(count):
        kind, comp, reserved, stored, decoded = V2_SECTION.unpack_from(blob, V2_HEAD.size + i * V2_SECTION.size)
        body = blob[at: at + stored]
        at += stored
        content = zstandard.ZstdDecompressor(**_zstd_dict(comp)).decompress(body) if comp in (1, 2) else body
        out.append({"kind": kind, "comp": comp, "reserved": reserved, "stored": stored, "decoded": decoded,
                    "body": body, "content": content})
    return out


def _v2_build(sections: list[dict], *, version=2, flags=0, count=None, reserved=b"\0\0\0") -> bytes:
    """A re-signed version-2 file from ``sections`` exactly as declared (stored/decoded may lie)."""
    from finr3d import codec

    head = V2_HEAD.pack(codec.MAGIC, version, flags, len(sections) if count is None else count, reserved)
    table = b"".join(V2_SECTION.pack(s["kind"], s["comp"], s["reserved"], s["stored"], s["decoded"])
                     for s in sections)
    return _v2_resign(head + table + b"".join(s["body"] for s in sections))


def _zstd_dict(comp: int) -> dict:
    """zstandard keyword for compression ``comp``: 2 is zstd with the built-in META dictionary."""
    from finr3d import codec

    return {"dict_data": codec._meta_dict()} if comp == codec.ZSTD_DICT else {}


def _v2_section(kind: int, content: bytes, comp: int) -> dict:
    """A consistent section holding ``content`` (zstd-coded with its content size when comp is 1 or 2)."""
    import zstandard

    body = (zstandard.ZstdCompressor(level=3, write_content_size=True, **_zstd_dict(comp)).compress(content)
            if comp in (1, 2) else content)
    return {"kind": kind, "comp": comp, "reserved": 0, "stored": len(body), "decoded": len(content),
            "body": body, "content": content}


def _v2_replace(sections: list[dict], kind: int, content: bytes) -> bytes:
    """The file with section ``kind`` holding ``content`` instead (same compression), lengths and digest right."""
    return _v2_build([_v2_section(kind, content, s["comp"]) if s["kind"] == kind else s for s in sections])


@dataclasses.dataclass
class Seed:
    path: Path
    version: int
    kind: str  # the signal kind: "sdf" meshes, the others decode


def make_seeds(folder: Path) -> dict[str, Seed]:
    """Small real fields, built without fitting: an SDF (Tucker), an RGB image (CP) and a volume (TT), each as a
    version-1 file (``codec.write`` of ``to_parts``) and as a compact version-2 file, plus a compact SDF with a
    DETAIL section and an editable version-2 SDF (a WEIGHTS section holding a version-1 file)."""
    import numpy as np
    import torch

    from finr3d import codec
    from finr3d.config import FieldConfig
    from finr3d.field import FactorizedField
    from finr3d.local_detail import fit_local_detail

    specs = {
        "sdf": (3, 1, FieldConfig(decomposition="tucker", rank=4, width=8, depth=1),
                {"kind": "sdf", "shape": [16, 16, 16], "channels": 1, "value_offset": 0.0, "value_scale": 0.1,
                 "bounds": [[-1, 1]] * 3, "world_from_normalized": np.diag([2.0, 2.0, 2.0, 1.0]).tolist(),
                 "mesh_report": {"watertight": True, "faces": 10}, "resolution": 16, "truncation": 0.1,
                 "margin": 0.1, "sign": "raycast", "source": "sphere.obj"}),
        # two SDF layers (interpenetrating parts) of an open mesh: the tanh profile and the trim flag
        "sdf layered": (3, 2, FieldConfig(decomposition="tucker", rank=4, width=8, depth=1),
                        {"kind": "sdf", "shape": [16, 16, 16], "channels": 2, "value_offset": 0.0,
                         "value_scale": 0.1, "bounds": [[-1, 1]] * 3, "profile": "tanh", "trim": True,
                         "layers": 2, "world_from_normalized": np.diag([2.0, 2.0, 2.0, 1.0]).tolist(),
                         "resolution": 16, "truncation": 0.1, "margin": 0.1, "sign": "winding",
                         "source": "knob.obj"}),
        "image": (2, 3, FieldConfig(decomposition="cp", rank=6, width=8, depth=1),
                  {"kind": "image", "shape": [12, 10], "channels": 3, "axis_names": ["y", "x"],
                   "value_offset": 0.0, "value_scale": 1.0, "bit_depth": 8, "source": "photo.png"}),
        "volume": (3, 1, FieldConfig(decomposition="tt", rank=3, width=8, depth=1),
                   {"kind": "volume", "shape": [8, 7, 6], "channels": 1, "value_offset": 10.0,
                    "value_scale": 2.0, "source": "ct.npy"}),
    }
    out = {}
    for name, (ndim, channels, config, info) in specs.items():
        torch.manual_seed(0)
        field = FactorizedField(ndim, channels, config, target_info=info)
        with torch.no_grad():
            field.bias.fill_(-0.3)  # the SDF then crosses zero somewhere
        field.history = {"steps": 10, "seconds": 1.5, "device": "cpu", "metrics": {"psnr": 30.0, "iou": 0.9}}
        quantization = "int8" if name == "image" else "fp16"
        stem = name.replace(" ", "_")
        path = folder / f"v1_{stem}.finr"
        codec.write(path, *field.to_parts(), quantization=quantization, keep_fp32=field.precision_critical())
        out[f"v1 {name}"] = Seed(path, 1, info["kind"])
        path = folder / f"v2_{stem}.finr"
        field.save(path, quantization=quantization)
        out[f"v2 {name}"] = Seed(path, 2, info["kind"])
        if name == "sdf":
            path = folder / "v2_sdf_editable.finr"
            field.save(path, quantization=quantization, editable=True)
            out["v2 sdf editable"] = Seed(path, 2, name)
            rng = np.random.default_rng(0)
            residual = np.zeros((9, 9, 9))
            residual[2:6, 3:7, 2:5] = rng.normal(0, 0.05, (4, 4, 3))
            field.detail = fit_local_detail(residual, step=1e-3, brick=2, chunk_bricks=2)
            path = folder / "v2_sdf_detail.finr"
            field.save(path, quantization=quantization)
            out["v2 sdf+detail"] = Seed(path, 2, name)
    for name, seed in out.items():
        assert seed.path.read_bytes()[8] == seed.version, name
    return out


# --------------------------------------------------------------------------- families
def _paths(node, prefix=()):
    yield prefix, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, prefix + (index,))


def _set(document, path, value, *, delete=False):
    node = document
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value


TYPE_SWAPS = [None, True, 7, 7.5, "7", [7], {"7": 7}]
SIZE_KEYS = {"width", "depth", "out_dim", "in_dim", "rank", "ranks", "shape", "channels", "ndim", "parameters",
             "basis", "frequencies", "frame_start", "frame_stride", "resolution", "length", "offset", "block"}
HUGE = [10**7, 2**31, 2**40, 2**63, 10**30, 1e23, [2**31] * 3, [20000, 20000], [2**20] * 8]


def _hostile_values(value):
    """Same-type values that are out of range, degenerate or merely different."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, (int, float)):
        return [0, -1, 1, -1e308, 1e308, 1e-300, 2**53 + 1, 0.5, -value, value * 1000 + 1]
    if isinstance(value, str):
        return ["", "x" * 5000, "../../etc/passwd", "siren", "tt", "image", "\u0000", value.upper()]
    if isinstance(value, list):
        return [[], [[]], value[:-1], value + value, list(reversed(value)), [value]]
    if isinstance(value, dict):
        return [{}, {"a": 1}]
    return []


def _document_cases(document: dict, root: tuple, rebuild, prefix: str = ""):
    """Header-value, type-swap and huge-size mutations of every value under ``document[root...]``.

    ``rebuild(mutated_document)`` returns the file bytes; yields (family, description, bytes)."""
    node = document
    for key in root:
        node = node[key]
    for path_, value in _paths(node):
        if not path_:
            continue
        path_ = root + path_
        where = ".".join(map(str, path_[len(root):]))
        for new in _hostile_values(value):
            mutated = copy.deepcopy(document)
            _set(mutated, path_, new)
            yield prefix + "header value", f"{where} = {json.dumps(new)[:40]}", rebuild(mutated)
        if isinstance(path_[-1], str):
            mutated = copy.deepcopy(document)
            _set(mutated, path_, None, delete=True)
            yield prefix + "header value", f"{where} removed", rebuild(mutated)
        for new in TYPE_SWAPS:
            if type(new) is type(value):
                continue
            mutated = copy.deepcopy(document)
            _set(mutated, path_, new)
            yield prefix + "type swap", f"{where} = {json.dumps(new)}", rebuild(mutated)
        if path_[-1] in SIZE_KEYS or (len(path_) > 1 and path_[-2] in SIZE_KEYS):
            for new in HUGE:
                mutated = copy.deepcopy(document)
                _set(mutated, path_, new)
                yield prefix + "huge size", f"{where} = {json.dumps(new)[:40]}", rebuild(mutated)


def _truncations(blob: bytes, count: int):
    """The first 64 lengths, then ``count`` evenly spaced ones."""
    return sorted(set(list(range(min(64, len(blob)))) + [round(i * len(blob) / count) for i in range(count)]))


def _flipped(blob: bytes, rng: random.Random) -> bytes:
    data = bytearray(blob)
    for _ in range(rng.choice([1, 1, 2, 8])):
        at = rng.randrange(len(data))
        data[at] ^= 1 << rng.randrange(8)
    return bytes(data)


def v1_cases(blob: bytes, rng: random.Random, *, truncations: int, flips: int, prefix: str = ""):
    """Yield (family, description, bytes): the version-1 families on the file ``blob``."""
    text, document, payload = _split(blob)
    for n in _truncations(blob, truncations):
        yield prefix + "truncation", f"first {n} bytes", blob[:n]
    for i in range(flips):
        yield prefix + "bit flip", f"flip #{i}", _flipped(blob, rng)
    for i in range(flips // 2):  # flips inside the header JSON, then re-signed: the JSON itself is hostile
        data = bytearray(text)
        at = rng.randrange(len(data))
        data[at] ^= 1 << rng.randrange(8)
        yield prefix + "re-signed header bytes", f"header byte {at}", _sign(bytes(data), payload)
    yield from _document_cases(document, ("meta",), lambda d: _resign(d, payload), prefix)
    for top in ("meta", "tensors", "minor"):
        for new in TYPE_SWAPS:
            mutated = copy.deepcopy(document)
            mutated[top] = new
            yield prefix + "type swap", f"{top} = {json.dumps(new)}", _resign(mutated, payload)
    table = document["tensors"]
    for index in range(len(table)):
        for key, value in list(table[index].items()):
            for new in _hostile_values(value) + [v for v in TYPE_SWAPS if type(v) is not type(value)]:
                mutated = copy.deepcopy(document)
                mutated["tensors"][index][key] = new
                yield prefix + "tensor table", f"tensors.{index}.{key} = {json.dumps(new)[:40]}", \
                    _resign(mutated, payload)
        for new in ([2**40, 2**40], [2**20] * 4, [10**7]):
            mutated = copy.deepcopy(document)
            mutated["tensors"][index]["shape"] = new
            yield prefix + "huge size", f"tensors.{index}.shape = {new}", _resign(mutated, payload)
    mutated = copy.deepcopy(document)
    mutated["tensors"].append(dict(table[-1], offset=table[-1]["offset"] + table[-1]["length"]))
    yield prefix + "tensor table", "duplicate entry", _resign(mutated, payload)
    raw = json.dumps(document, separators=(",", ":"))
    entry = json.dumps(table[0], separators=(",", ":"))
    yield prefix + "tensor table", "duplicate key in an entry", _sign(
        raw.replace(entry, entry[:-1] + ',"name":"x"}', 1).encode(), payload)


U32 = [0, 1, 2**16, 2**31, 2**32 - 1]


def _byte_cases(content: bytes, rng: random.Random, flips: int, rebuild, family: str):
    """Re-signed byte-level damage of one section's content: flips, bytes set to 0/255, truncations, one extra."""
    for i in range(flips):
        yield family, f"flip #{i}", rebuild(_flipped(content, rng))
    for at in sorted(rng.sample(range(len(content)), min(len(content), max(flips // 2, 1)))):
        for value in (0, 255):
            data = bytearray(content)
            data[at] = value
            yield family, f"byte {at} = {value}", rebuild(bytes(data))
    for n in sorted(set(_truncations(content, 16)[:24] + [len(content) - 1])):
        yield family, f"first {n} bytes", rebuild(content[:n])
    yield family, "one byte appended", rebuild(content + b"\0")


def _packed(content: bytes, fmt: str, at: int, value) -> bytes:
    data = bytearray(content)
    struct.pack_into(fmt, data, at, value)
    return bytes(data)


def _field_layout(content: bytes):
    """(name, struct format, offset, value) of every FIELD value (docs/format.md 2.2)."""
    kind, dec, ndim, n_modes, channels, flags, reserved, step = struct.unpack_from("<BBBBBBHf", content)
    out = [("kind", "<B", 0), ("decomposition", "<B", 1), ("ndim", "<B", 2), ("modes", "<B", 3),
           ("channels", "<B", 4), ("flags", "<B", 5), ("reserved", "<H", 6), ("step", "<f", 8)]
    at = 12
    for a in range(ndim):
        out += [(f"bounds[{a}].lo", "<d", at), (f"bounds[{a}].hi", "<d", at + 8)]
        at += 16
    out += [("value_offset", "<d", at), ("value_scale", "<d", at + 8)]
    at += 16
    for m in range(n_modes):
        out += [(f"mode{m}.mask", "<B", at), (f"mode{m}.terms", "<H", at + 1), (f"mode{m}.columns", "<H", at + 3)]
        at += 5
    if dec == 2:
        for m in range(n_modes):
            out.append((f"bond{m}", "<H", at))
            at += 2
    for c in range(channels):
        out.append((f"bias[{c}]", "<f", at))
        at += 4
    if flags & 4:
        for i in range(ndim * (ndim + 1)):
            out.append((f"affine[{i}]", "<d", at))
            at += 8
    return [(name, fmt, off, struct.unpack_from(fmt, content, off)[0]) for name, fmt, off in out]


def _field_values(name: str, fmt: str, value):
    if fmt == "<B":
        return sorted({0, 1, 2, 3, 4, 5, 7, 8, 9, 64, 65, 128, 255} - {value})
    if fmt == "<H":
        return sorted({0, 1, 2, 8192, 8193, 65535, max(value - 1, 0), min(value + 1, 65535), min(2 * value, 65535)}
                      - {value})
    nan, inf = float("nan"), float("inf")
    return [nan, inf, -inf, 0.0, -value, 1e-45 if fmt == "<f" else 1e-300, 3e38 if fmt == "<f" else 1e308,
            -(3e38 if fmt == "<f" else 1e308), value + 1e-7]


def _codes_blocks(content: bytes) -> list[int]:
    """Offsets of the u32 block lengths of an ANS/zstd CODES section."""
    at, out = 1, []
    while at + 4 <= len(content):
        out.append(at)
        at += 4 + struct.unpack_from("<I", content, at)[0]
    return out


def _detail_layout(content: bytes):
    ndim = content[5]
    out = [("magic", "<4s", 0), ("version", "<B", 4), ("ndim", "<B", 5), ("brick", "<B", 6),
           ("predictor", "<B", 7), ("int_bytes", "<B", 8), ("occupancy_kind", "<B", 9), ("reserved", "<H", 10)]
    at = 12
    for a in range(ndim):
        out.append((f"resolution[{a}]", "<I", at))
        at += 4
    out += [("step", "<d", at), ("bricks", "<I", at + 8), ("chunk_bricks", "<I", at + 12),
            ("occupancy_bytes", "<I", at + 16)]
    step, n_bricks, chunk_bricks, occ = struct.unpack_from("<dIII", content, at)
    at += 20
    for c in range(-(-n_bricks // max(chunk_bricks, 1))):
        out.append((f"chunk{c}.length", "<I", at))
        at += 4
    return [(name, fmt, off, struct.unpack_from(fmt, content, off)[0]) for name, fmt, off in out]


def v2_cases(blob: bytes, rng: random.Random, *, truncations: int, flips: int):
    """Yield (family, description, bytes): the version-2 families on the file ``blob``."""
    from finr3d import codec, compact

    for n in _truncations(blob, truncations):
        yield "truncation", f"first {n} bytes", blob[:n]
    for i in range(flips):
        yield "bit flip", f"flip #{i}", _flipped(blob, rng)
    sections = _v2_sections(blob)
    kinds = [s["kind"] for s in sections]
    names = {k: codec.SECTION_NAMES.get(k, str(k)) for k in kinds}

    # the container: head, table entries, structure
    fam = "container table"
    for version in (1, 3, 65535):
        yield fam, f"version {version}", _v2_build(sections, version=version)
    for flags in (1, 0x8000):
        yield fam, f"flags 0x{flags:x}", _v2_build(sections, flags=flags)
    yield fam, "reserved head bytes", _v2_build(sections, reserved=b"\0\1\0")
    for count in sorted({0, len(sections) - 1, len(sections) + 1, 16, 17, 255}):
        yield fam, f"section count {count}", _v2_build(sections, count=count)
    for i, s in enumerate(sections):
        name = names[s["kind"]]
        hostile = {"kind": [0, 6, 127, 128, 255] + [k for k in codec.SECTION_NAMES if k != s["kind"]],
                   "comp": sorted({0, 1, 2, 3, 255} - {s["comp"]}), "reserved": [1, 0xFFFF],
                   "stored": [0, s["stored"] - 1, s["stored"] + 1, 2**32 - 1],
                   "decoded": [0, s["decoded"] - 1, s["decoded"] + 1, 2**24, 2**31, 2**32 - 1]}
        for key, values in hostile.items():
            for value in values:
                mutated = [dict(t) for t in sections]
                mutated[i][key] = max(value, 0)
                family = "huge size" if key in ("stored", "decoded") and value >= 2**24 else fam
                yield family, f"{name}.{key} = {value}", _v2_build(mutated)
        yield fam, f"{name} dropped", _v2_build(sections[:i] + sections[i + 1:])
        yield fam, f"{name} twice", _v2_build(sections[: i + 1] + sections[i:])
        if s["comp"] in (1, 2):  # the zstd frame declares a different (huge) size than the table
            import zstandard

            for declared in (s["decoded"] + 1, 2**31, 2**40):
                frame = bytearray(s["body"])
                params = zstandard.get_frame_parameters(bytes(frame[:18]))
                if params.content_size == s["decoded"]:
                    fhd = frame[4]
                    fcs_flag = fhd >> 6
                    single = (fhd >> 5) & 1
                    did = [0, 1, 2, 4][fhd & 3]
                    at = 5 + (0 if single else 1) + did
                    width = [1 if single else 0, 2, 4, 8][fcs_flag]
                    if width == 8 or (width == 4 and declared < 2**32):
                        frame[at: at + width] = declared.to_bytes(width, "little")
                        mutated = [dict(t) for t in sections]
                        mutated[i]["body"] = bytes(frame)
                        yield "huge size", f"{name} zstd frame declares {declared}", _v2_build(mutated)
        else:
            mutated = [dict(t) for t in sections]
            mutated[i] = _v2_section(s["kind"], s["content"], 1)
            yield fam, f"{name} zstd-coded", _v2_build(mutated)
    if len(sections) > 1:
        yield fam, "sections reversed", _v2_build(sections[::-1])
    for kind in (200, 50):
        yield fam, f"extra section kind {kind}", _v2_build(sections + [_v2_section(kind, b"hello", 0)])
    yield fam, "17 sections", _v2_build(sections + [_v2_section(200 + i, b"", 0) for i in range(17 - len(sections))])
    bomb = _v2_section(200, b"\0" * (8 << 20), 1)
    yield "huge size", "optional section decoding to 8 MiB", _v2_build(sections + [bomb])

    for s in sections:
        content, kind = s["content"], s["kind"]

        def rebuild(new, kind=kind):
            return _v2_replace(sections, kind, new)

        if kind == codec.SECTION_FIELD:
            yield from _byte_cases(content, rng, flips // 4, rebuild, "FIELD bytes")
            for name, fmt, off, value in _field_layout(content):
                for new in _field_values(name, fmt, value):
                    yield "FIELD values", f"{name} = {new}", rebuild(_packed(content, fmt, off, new))
        elif kind == codec.SECTION_CODES:
            yield from _byte_cases(content, rng, flips // 4, rebuild, "CODES bytes")
            for coder in (0, 1, 2, 3, 255):
                if coder != content[0]:
                    yield "CODES values", f"coder {coder}", rebuild(bytes([coder]) + content[1:])
            for b, off in enumerate(_codes_blocks(content)[:12]):
                length = struct.unpack_from("<I", content, off)[0]
                for new in sorted(set(U32 + [max(length - 1, 0), length + 1])):
                    yield "CODES values", f"block {b} length = {new}", rebuild(_packed(content, "<I", off, new))
                if length:
                    yield "CODES values", f"block {b} empty", rebuild(
                        content[:off] + struct.pack("<I", 0) + content[off + 4 + length:])
                if length and content[0] == compact.CODER_ANS_BOUNDED:  # the block's alphabet bound (bits)
                    for bits in sorted({0, 1, content[off + 4] - 1, content[off + 4] + 1, 20, 21, 255} - {-1}):
                        yield "CODES values", f"block {b} bound bits = {bits}", rebuild(
                            content[:off + 4] + bytes([bits]) + content[off + 5:])
        elif kind == codec.SECTION_META:
            document = json.loads(content)
            meta_bytes = lambda d: rebuild(json.dumps(d, separators=(",", ":")).encode())  # noqa: E731
            for family, what, data in _document_cases(document, (), meta_bytes, "META "):
                yield family, what, data
            for new in TYPE_SWAPS:
                yield "META type swap", f"META = {json.dumps(new)}", meta_bytes(new)
            yield from _byte_cases(content, rng, flips // 4, rebuild, "META bytes")
            for what, text in [("NaN", b'{"a":NaN}'), ("1e999", b'{"a":1e999}'), ("duplicate key", b'{"a":1,"a":2}'),
                               ("depth 100000", b"[" * 100000 + b"]" * 100000), ("not UTF-8", b'{"a":"\xff"}'),
                               ("not JSON", b"\x00\x01garbage"), ("empty", b""),
                               ("1 MiB + 1 string", b'{"a":"' + b"x" * (1 << 20) + b'"}'),
                               ("800 kB of spaces", b" " * 800_000 + content)]:
                yield "META bytes", what, rebuild(text)
        elif kind == codec.SECTION_DETAIL:
            yield from _byte_cases(content, rng, flips // 4, rebuild, "DETAIL bytes")
            for name, fmt, off, value in _detail_layout(content):
                if fmt == "<4s":
                    news = [b"FLDU", b"\0\0\0\0"]
                elif fmt == "<B":
                    news = sorted({0, 1, 2, 3, 4, 5, 8, 32, 33, 255} - {value})
                elif fmt == "<H":
                    news = [1, 65535]
                elif fmt == "<I":
                    news = sorted(set(U32 + [max(value - 1, 0), value + 1, 2 * value]) - {value})
                else:
                    news = _field_values(name, "<d", value)
                for new in news:
                    yield "DETAIL values", f"{name} = {new!r}"[:60], rebuild(_packed(content, fmt, off, new))
        elif kind == codec.SECTION_WEIGHTS:
            for family, what, data in v1_cases(content, rng, truncations=truncations // 4, flips=flips // 4,
                                               prefix="WEIGHTS "):
                yield family, what, rebuild(data)


def hostile_cases(seeds: dict[str, Seed], rng: random.Random, *, truncations: int, flips: int):
    """Yield (family, seed name, description, bytes)."""
    for name, seed in seeds.items():
        blob = seed.path.read_bytes()
        cases = v1_cases if seed.version == 1 else v2_cases
        for family, what, data in cases(blob, rng, truncations=truncations, flips=flips):
            yield family, name, what, data


# --------------------------------------------------------------------------- running one case in a child
def _rss_kb() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _cli(argv) -> tuple[str, str]:
    from finr3d.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
    text = err.getvalue().strip()
    if code == 0:
        return "ok", ""
    if code == 2 and text.count("\n") == 0 and "error" in text:
        return "refused", text[:200]
    return "other", f"exit {code}: {text.splitlines()[-1] if text else ''}"[:300]


def _hostile_ops(path: Path, kind: str, work: Path) -> list[tuple[str, str, str]]:
    import finr3d
    from finr3d.errors import FormatError

    results = []
    try:
        finr3d.load(path)
        results.append(("load", "ok", ""))
    except FormatError:
        results.append(("load", "refused", ""))
    except Exception as exc:  # noqa: BLE001 (this is what is being counted)
        results.append(("load", "other", f"{type(exc).__name__}: {exc}"[:300]))
    results.append(("info", *_cli(["info", path])))
    if kind == "sdf":
        results.append(("mesh", *_cli(["mesh", path, "-o", work / "out.ply", "--resolution", 16, "--force"])))
    else:
        results.append(("decode", *_cli(["decode", path, "-o", work / "out.npy", "--force"])))
    return results


def run_in_child(job, timeout: float) -> dict:
    """Fork, run ``job()`` (returns a JSON-able value) in the child; the parent measures time, RSS and hangs."""
    read_fd, write_fd = os.pipe()
    baseline = _rss_kb()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        # the child's peak starts near the RSS it was forked with; its own first reading is the baseline
        start_kb = _rss_kb()
        try:
            value = {"result": job(), "start_kb": start_kb}
        except BaseException as exc:  # noqa: BLE001
            value = {"crash": f"{type(exc).__name__}: {exc}"[:300], "start_kb": start_kb}
        with os.fdopen(write_fd, "w") as handle:
            handle.write(json.dumps(value))
        os._exit(0)
    os.close(write_fd)
    status, usage = None, None
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.perf_counter() - start > timeout:
            os.kill(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            os.close(read_fd)
            return {"hang": True, "seconds": time.perf_counter() - start, "growth_mb": 0.0}
        time.sleep(0.002)
    seconds = time.perf_counter() - start
    with os.fdopen(read_fd) as handle:
        text = handle.read()
    out = json.loads(text) if text else {"crash": f"child died with status {status}"}
    out["seconds"] = seconds
    out["growth_mb"] = max(0.0, (usage.ru_maxrss - min(baseline, out.get("start_kb", baseline))) / 1024)
    out["peak_mb"] = usage.ru_maxrss / 1024
    return out


def _warm_up(seeds: dict[str, Path], work: Path) -> None:
    """Import and exercise everything once in the parent, so that a child's growth is its own."""
    import functools

    import torch

    import finr3d.cli

    torch.set_num_threads(1)  # one thread per child, and no OpenMP pool to inherit across fork
    # argparse parsers are reusable: build the CLI's once (its help text parses config.py, 0.1 s a call)
    finr3d.cli.build_parser = functools.lru_cache(maxsize=1)(finr3d.cli.build_parser)
    for seed in seeds.values():
        _hostile_ops(seed.path, seed.kind, work)


def _worker(args) -> list[dict]:
    cases, seeds, timeout, base_mb = args
    work = Path(tempfile.mkdtemp(prefix="finr3d-robust-"))
    _warm_up(seeds, work)
    rows = []
    for family, name, what, data in cases:
        path = work / "case.finr"
        path.write_bytes(data)
        kind = seeds[name].kind
        res = run_in_child(lambda: _hostile_ops(path, kind, work), timeout)
        bound = 2 * len(data) / MB + base_mb
        ops = res.get("result") or []
        outcomes = [o for _, o, _ in ops]
        if res.get("hang"):
            outcome = "hang"
        elif "crash" in res or "other" in outcomes:
            outcome = "other"
        elif res["growth_mb"] > bound:
            outcome = "over memory"
        elif all(o == "ok" for o in outcomes):
            outcome = "ok"
        else:
            outcome = "refused"
        detail = res.get("crash") or "; ".join(f"{op}: {msg}" for op, o, msg in ops if o == "other")
        rows.append({"family": family, "seed": name, "version": seeds[name].version, "case": what, "bytes": len(data), "outcome": outcome,
                     "seconds": res["seconds"], "growth_mb": res["growth_mb"], "detail": detail})
    return rows


# --------------------------------------------------------------------------- the bad-input table
def bad_input_table(folder: Path, seeds: dict[str, Path]):
    """Yield (name, expected, argv, check) rows; ``check(folder)`` returns an error string or ''."""
    import numpy as np
    import trimesh

    from finr3d import codec

    def npy_lie(name, shape):
        text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"
        text += " " * (118 - len(text)) + "\n"
        (folder / name).write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode() + b"\0" * 64)
        return folder / name

    def png_bomb(name, size, planes):
        import zlib

        def chunk(tag, data):
            return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

        packer = zlib.compressobj(9)
        row = b"\0" * (1 + size * planes)
        body = b"".join(packer.compress(row) for _ in range(size)) + packer.flush()
        ihdr = struct.pack(">IIBBBBB", size, size, 8, {1: 0, 3: 2}[planes], 0, 0, 0)
        (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body)
                                    + chunk(b"IEND", b""))
        return folder / name

    tri = folder / "triangle.obj"
    trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]], process=False).export(tri)
    plane = folder / "plane.obj"
    trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], [[0, 1, 2], [0, 2, 3]], process=False).export(plane)
    far = folder / "far.obj"  # OBJ with enough digits: PLY from trimesh is float32, which would collapse it
    sphere = trimesh.creation.icosphere(3)
    trimesh.Trimesh(sphere.vertices + 1e8, sphere.faces).export(far, digits=10)
    tiny = folder / "tiny.ply"
    trimesh.Trimesh(sphere.vertices * 1e-8, sphere.faces).export(tiny)
    for name, value in (("zeros", 0.0), ("ones", 1.0)):
        np.save(folder / f"{name}.npy", np.full((16, 16, 16), value, np.float32))
    onevox = np.zeros((16, 16, 16), np.float32)
    onevox[3, 4, 5] = 1
    np.save(folder / "onevox.npy", onevox)
    codec.write(folder / "empty.finr", {}, {})
    (folder / "dir.finr").mkdir(exist_ok=True)
    fit = ["fit", "--steps", 5, "--progress", "none", "--force"]
    sdf_fit = fit + ["--resolution", 16]

    def extents(path, low, high):
        def check(_):
            mesh = trimesh.load(path, process=False)
            e = mesh.extents
            return "" if np.all(e >= low) and np.all(e <= high) else f"extents {e.tolist()} not in [{low}, {high}]"
        return check

    def fitted(name):
        def check(_):
            out = folder / f"{name}.finr"
            return "" if out.exists() and codec.read_header(out) else "no output"
        return check

    rows = [
        ("single triangle: fit", "ok", [*sdf_fit, tri, "-o", folder / "tri.finr"], fitted("tri")),
        ("single triangle: mesh", "ok or no surface", ["mesh", folder / "tri.finr", "-o", folder / "tri.ply", "--force",
                                                       "--resolution", 32], None),
        ("open plane: fit", "ok", [*sdf_fit, plane, "-o", folder / "plane.finr"], fitted("plane")),
        ("open plane: mesh", "ok or no surface", ["mesh", folder / "plane.finr", "-o", folder / "plane.ply",
                                                  "--force", "--resolution", 32], None),
        ("unit sphere at 1e8: fit", "ok", [*sdf_fit, far, "-o", folder / "far.finr"], fitted("far")),
        ("unit sphere at 1e8: mesh .ply", "ok", ["mesh", folder / "far.finr", "-o", folder / "far_out.ply", "--force",
                                                 "--resolution", 32], extents(folder / "far_out.ply", 1.5, 2.5)),
        ("unit sphere at 1e8: mesh .stl", "exit 2", ["mesh", folder / "far.finr", "-o", folder / "far_out.stl",
                                                     "--force"], None),
        ("sphere at 1e-8 scale: fit", "ok", [*sdf_fit, tiny, "-o", folder / "tiny.finr"], fitted("tiny")),
        ("sphere at 1e-8 scale: mesh", "ok", ["mesh", folder / "tiny.finr", "-o", folder / "tiny_out.ply", "--force",
                                              "--resolution", 32], extents(folder / "tiny_out.ply", 1.5e-8, 2.5e-8)),
        (".npy claiming 8e15 bytes", "exit 2", [*fit, npy_lie("lie8e15.npy", (200000, 200000, 50000)), "-o",
                                                folder / "x.finr"], None),
        (".npy claiming 27e9 values", "exit 2", [*fit, npy_lie("lie27e9.npy", (3000, 3000, 3000)), "-o",
                                                 folder / "x.finr"], None),
        ("PNG bomb 20000^2 RGB (1.1 MB)", "exit 2", [*fit, png_bomb("bomb_rgb.png", 20000, 3), "-o",
                                                     folder / "x.finr"], None),
        ("PNG bomb 20000^2 gray", "exit 2", [*fit, png_bomb("bomb_gray.png", 20000, 1), "-o", folder / "x.finr"], None),
        ("constant volume 0", "ok", [*fit, folder / "zeros.npy", "-o", folder / "zeros.finr"], fitted("zeros")),
        ("constant volume 1", "ok", [*fit, folder / "ones.npy", "-o", folder / "ones.finr"], fitted("ones")),
        ("one voxel different", "ok", [*fit, folder / "onevox.npy", "-o", folder / "onevox.finr"], fitted("onevox")),
        ("constant volume 0, tucker", "ok", [*fit, folder / "zeros.npy", "-o", folder / "zt.finr", "--decomposition",
                                             "tucker"], fitted("zt")),
        ("constant volume 1, tt", "ok", [*fit, folder / "ones.npy", "-o", folder / "ot.finr", "--decomposition", "tt"],
         fitted("ot")),
        ("mesh --level nan", "exit 2", ["mesh", seeds["v2 sdf"].path, "-o", folder / "l.ply", "--level", "nan"], None),
        ("mesh --level 1e9", "exit 2", ["mesh", seeds["v2 sdf"].path, "-o", folder / "l.ply", "--level", "1e9",
                                        "--resolution", 16], None),
        ("fit --quantization int3", "exit 2", [*fit, folder / "ones.npy", "-o", folder / "q.finr", "--quantization",
                                               "int3"], None),
        ("fit -o /proc/x.finr", "exit 2", [*fit, folder / "ones.npy", "-o", "/proc/x.finr"], None),
        ("fit -o existing_dir.finr --force", "exit 2", [*fit, folder / "ones.npy", "-o", folder / "dir.finr"], None),
        ("decode --resolution 1000 (SDF)", "exit 2", ["decode", seeds["v2 sdf"].path, "-o", folder / "d.npy", "--resolution",
                                                      1000, "--force"], None),
        ("info on an empty header", "ok", ["info", folder / "empty.finr"], None),
        ("mesh an empty header", "exit 2", ["mesh", folder / "empty.finr", "-o", folder / "e.ply", "--force"], None),
    ]
    yield from rows


def _bad_input_job(argv, check, folder):
    def job():
        outcome, detail = _cli(argv)
        if outcome == "ok" and check is not None:
            problem = check(folder)
            if problem:
                return "wrong", problem
        return outcome, detail
    return job


def run_bad_inputs(folder: Path, seeds, timeout: float, base_mb: float) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    _warm_up(seeds, folder)
    rows = []
    for name, expected, argv, check in bad_input_table(folder, seeds):
        res = run_in_child(_bad_input_job(argv, check, folder), timeout)
        if res.get("hang"):
            outcome, detail = "hang", ""
        elif "crash" in res:
            outcome, detail = "other", res["crash"]
        else:
            outcome, detail = res["result"]
        correct = outcome == "ok" if expected == "ok" else outcome == "refused" if expected == "exit 2" else (
            outcome == "ok" or outcome == "refused")
        over = expected == "exit 2" and res["growth_mb"] > base_mb
        rows.append({"case": name, "expected": expected, "outcome": outcome, "correct": correct and not over,
                     "over_memory": over, "seconds": res["seconds"], "growth_mb": res["growth_mb"],
                     "peak_mb": res.get("peak_mb", 0.0), "detail": detail})
    return rows


# --------------------------------------------------------------------------- main
COLUMNS = ["ok", "refused", "other", "hang", "over memory", "slow"]


def _family_key(row) -> str:
    return f"v{row.get('version', 1)} {row['family']}"


def hostile_summary(rows) -> dict:
    """{"v1 truncation": {"ok": n, ..., "cases": n, "max_s": s, "max_mb": mb}, ...} in print order."""
    table = {}
    for row in sorted(rows, key=_family_key):
        counts = table.setdefault(_family_key(row), dict.fromkeys(COLUMNS, 0) | {"cases": 0, "max_s": 0.0,
                                                                              "max_mb": 0.0})
        counts[row["outcome"]] += 1
        counts["cases"] += 1
        counts["slow"] += row["seconds"] > 1.0
        counts["max_s"] = max(counts["max_s"], row["seconds"])
        counts["max_mb"] = max(counts["max_mb"], row["growth_mb"])
    return table


def print_hostile(rows, seconds, workers) -> Counter:
    seeds = sorted({(r.get("version", 1), r.get("seed", r.get("kind"))) for r in rows})
    print(f"hostile .finr files: {len(rows)} cases in {seconds:.0f} s ({workers} workers); "
          "each runs load, info and mesh|decode in a forked child")
    print("seeds: " + ", ".join(name for _, name in seeds))
    print(f"{'family':<30}{'cases':>7}" + "".join(f"{c:>12}" for c in COLUMNS) + f"{'max s':>8}{'max MB':>8}")
    total = Counter()
    for family, counts in hostile_summary(rows).items():
        total.update({c: counts[c] for c in COLUMNS})
        print(f"{family:<30}{counts['cases']:>7}" + "".join(f"{counts[c]:>12}" for c in COLUMNS)
              + f"{counts['max_s']:>8.2f}{counts['max_mb']:>8.1f}")
    n = sum(total[c] for c in COLUMNS[:-1])
    print(f"{'total':<30}{n:>7}" + "".join(f"{total[c]:>12}" for c in COLUMNS)
          + f"{max(r['seconds'] for r in rows):>8.2f}{max(r['growth_mb'] for r in rows):>8.1f}")
    print("slowest cases:")
    for row in sorted(rows, key=lambda r: -r["seconds"])[:8]:
        print(f"  {row['seconds']:6.2f} s {row['growth_mb']:6.1f} MB  {row.get('seed')}: {row['family']}: "
              f"{row['case']} ({row['outcome']})")
    for row in [r for r in rows if r["outcome"] in ("other", "hang", "over memory")][:40]:
        print(f"  {row['outcome']}: {row.get('seed')} {row['family']} {row['case']}: {row['detail']}")
    return total


def print_bad_inputs(rows) -> None:
    print("\nbad inputs (CLI; RSS growth bound for refusals: 500 MB)")
    print(f"{'case':<36}{'expected':>18}{'outcome':>10}{'correct':>9}{'s':>7}{'growth MB':>11}{'peak MB':>9}")
    for r in rows:
        print(f"{r['case']:<36}{r['expected']:>18}{r['outcome']:>10}{'yes' if r['correct'] else 'NO':>9}"
              f"{r['seconds']:>7.1f}{r['growth_mb']:>11.1f}{r['peak_mb']:>9.0f}"
              + (f"  {r['detail'][:110]}" if r["detail"] else ""))
    print(f"bad inputs: {sum(r['correct'] for r in rows)}/{len(rows)} correct, "
          f"{sum(r['outcome'] == 'other' for r in rows)} other, {sum(r['outcome'] == 'hang' for r in rows)} "
          f"hangs, {sum(r['over_memory'] for r in rows)} over memory")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="parallel parents, each forking one child per case")
    parser.add_argument("--truncations", type=int, default=300, help="evenly spaced truncation lengths per seed")
    parser.add_argument("--flips", type=int, default=400, help="bit-flip cases per seed")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds before a case counts as a hang")
    parser.add_argument("--base-mb", type=float, default=64.0,
                        help="fixed part of the memory bound: RSS growth <= 2x file size + this")
    parser.add_argument("--limit", type=int, default=None, help="run only N random hostile cases (a smoke run)")
    parser.add_argument("--shard", default="1/1", help="K/N: run the K-th of N interleaved parts of the hostile "
                        "cases (several locked runs of under 10 minutes); --merge prints their table")
    parser.add_argument("--seeds", default=None, help="comma-separated seed names to damage (default: all), "
                        "e.g. 'v2 sdf,v2 image'")
    parser.add_argument("--cases", default=None, help="only the hostile cases whose description contains this "
                        "text (e.g. 'target.shape'): a quick rerun of one kind of case")
    parser.add_argument("--skip-hostile", action="store_true")
    parser.add_argument("--skip-bad-inputs", action="store_true")
    parser.add_argument("--merge", type=Path, nargs="+", help="print the combined tables of these JSON outputs")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "robustness.json")
    args = parser.parse_args(argv)

    if args.merge:
        parts = [json.loads(p.read_text()) for p in args.merge]
        rows = [r for p in parts for r in p.get("hostile_rows", [])]
        bad_rows = [r for p in parts for r in p.get("bad_inputs", [])]
        total = print_hostile(rows, sum(p.get("hostile_seconds", 0) for p in parts),
                              parts[0]["settings"]["workers"]) if rows else Counter()
        if bad_rows:
            print_bad_inputs(bad_rows)
        summary = {"settings": [p["settings"] for p in parts], "hostile_cases": len(rows),
                   "hostile_seconds": sum(p.get("hostile_seconds", 0) for p in parts),
                   "hostile": hostile_summary(rows),
                   "hostile_failures": [r for r in rows if r["outcome"] in ("other", "hang", "over memory")],
                   "slowest": sorted(rows, key=lambda r: -r["seconds"])[:20],
                   "bad_inputs": bad_rows}
        args.json.write_text(json.dumps(summary, indent=1))
        return 1 if total["other"] + total["hang"] + total["over memory"] else 0

    import multiprocessing as mp

    folder = Path(tempfile.mkdtemp(prefix="finr3d-robustness-"))
    seeds = make_seeds(folder)
    rows, hostile_seconds, total = [], 0.0, Counter()
    if not args.skip_hostile:
        rng = random.Random(0)
        chosen = seeds if not args.seeds else {n: seeds[n] for n in args.seeds.split(",")}
        cases = list(hostile_cases(chosen, rng, truncations=args.truncations, flips=args.flips))
        if args.cases:
            cases = [c for c in cases if args.cases in c[2]]
        if args.limit:
            rng.shuffle(cases)
            cases = cases[: args.limit]
        k, n = (int(x) for x in args.shard.split("/"))
        cases = cases[k - 1:: n]
        t0 = time.perf_counter()
        chunks = [cases[i:: args.workers] for i in range(args.workers)]
        with mp.get_context("fork").Pool(args.workers) as pool:
            rows = [r for part in pool.map(_worker, [(c, seeds, args.timeout, args.base_mb) for c in chunks])
                    for r in part]
        hostile_seconds = time.perf_counter() - t0
        total = print_hostile(rows, hostile_seconds, args.workers)
    bad_rows = []
    if not args.skip_bad_inputs:
        bad_rows = run_bad_inputs(folder, seeds, max(args.timeout, 300.0), max(args.base_mb, 500.0))
        print_bad_inputs(bad_rows)
    args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json), "merge": None},
                                     "hostile_rows": rows, "bad_inputs": bad_rows,
                                     "hostile_seconds": hostile_seconds}))
    failures = total["other"] + total["hang"] + total["over memory"] + sum(not r["correct"] for r in bad_rows)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
