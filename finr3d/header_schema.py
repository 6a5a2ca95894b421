"""The schema of a field's ``.finr`` metadata, checked at the boundary before anything is built.

:mod:`finr3d.codec` guarantees a well-formed container (checksums, tensor
table, bounded payload); this module guarantees that the *metadata* a loader
reads is sane: every key that :func:`finr3d.load`, ``finr3d info``,
``finr3d mesh``, ``finr3d decode`` and the Blender add-on read has its type
and range checked (``backbone_configs.*``, ``field_config``, ``target.*``,
``ranks``, frequencies, ``value_scale``/``value_offset``, the world transform,
the fit history), so a hostile or damaged header fails with one
:class:`~finr3d.errors.FormatError` that names the field, instead of a hang,
a huge allocation or a ``TypeError`` deep inside torch.

It works on the metadata dict alone (standard library and ``jsonschema``; no
torch, no numpy), so any container version can call it:

>>> from finr3d import header_schema
>>> header_schema.field_problems({"format": "finr3d-field"})[:2]
['missing backbone_configs', 'missing channels']

The second half sizes work from a valid header before it is done:
:func:`decode_memory_bytes` estimates what decoding a grid needs, and
:func:`check_memory` refuses it above :func:`memory_limit` (default 2 GiB;
``FINR3D_MAX_MEMORY`` or the CLI's ``--max-memory`` raise it).
"""

from __future__ import annotations

import functools
import math
import os
import re

from finr3d.errors import FormatError, InputError

__all__ = [
    "FIELD_SCHEMA",
    "validate_field_meta",
    "field_problems",
    "decode_memory_bytes",
    "memory_limit",
    "check_memory",
    "parse_size",
    "DEFAULT_MEMORY_LIMIT",
    "MEMORY_ENV",
]

#: Most modes (and axes) a field may have; matches ``codec.MAX_NDIM``.
MAX_AXES = 8
MAX_CHANNELS = 64
MAX_RANK = 4096
MAX_WIDTH = 4096
MAX_DEPTH = 16
MAX_BASIS = 8192  # finr3d.backbones.MAX_BASIS (not imported: that module needs torch)
MAX_OMEGA = 1e5
#: Largest samples per axis a header may declare (sizes beyond are refused before any allocation).
MAX_AXIS_SAMPLES = 1 << 24
#: Largest feature count of one mode network's output (TT: r_{m-1} r_m).
MAX_FEATURES = 1 << 24
#: |value_scale|, |value_offset| and transform entries stay below this, so field values cannot overflow float32.
MAX_MAGNITUDE = 1e30
MIN_SCALE = 1e-30

DEFAULT_MEMORY_LIMIT = 2 << 30
MEMORY_ENV = "FINR3D_MAX_MEMORY"

_HINT = "the file is damaged, hostile or from an incompatible finr3d: re-export it"

# ----------------------------------------------------------------------------- schema pieces
_INT = {"type": "integer"}
_NAME = {"type": "string", "maxLength": 256}
_TEXT = {"type": "string", "maxLength": 4096}


def _int(lo: int, hi: int) -> dict:
    return {"type": "integer", "minimum": lo, "maximum": hi}


def _num(lo: float, hi: float, *, exclusive_lo: bool = False) -> dict:
    out = {"type": "number", "maximum": hi}
    out["exclusiveMinimum" if exclusive_lo else "minimum"] = lo
    return out


_FINITE = _num(-MAX_MAGNITUDE, MAX_MAGNITUDE)
_OMEGA = _num(0, MAX_OMEGA, exclusive_lo=True)
_RANK = _int(1, MAX_RANK)
_RANKS = {"type": "array", "items": _RANK, "minItems": 1, "maxItems": MAX_AXES}
_AXIS = _int(0, MAX_AXES - 1)
_MODES = {
    "type": "array",
    "minItems": 2,
    "maxItems": MAX_AXES,
    "items": {"type": "array", "items": _AXIS, "minItems": 1, "maxItems": MAX_AXES},
}
# "cosine": the per-axis cosine series a compact (format v2) file loads into (finr3d/compact_io.py)
_BACKBONES = ["relu", "siren", "wire", "finer", "cosine"]
_DECOMPOSITIONS = ["cp", "tucker", "tt"]
_BASIS = _int(0, MAX_BASIS)

# Options each backbone's constructor takes besides in_dim, out_dim, width, depth and basis.
_BACKBONE_OPTIONS = {
    "siren": {"omega0": _OMEGA, "omega_hidden": _OMEGA},
    "finer": {"omega0": _OMEGA, "omega_hidden": _OMEGA, "first_bias_scale": _num(0, 1e3)},
    "wire": {"omega0": _OMEGA, "scale": _num(0, 1e3, exclusive_lo=True)},
    "relu": {"frequencies": _int(0, 24)},
    "cosine": {},
}


def _backbone_config_schema() -> dict:
    common = {
        "name": {"enum": _BACKBONES},
        "in_dim": _int(1, MAX_AXES),
        "out_dim": _int(1, MAX_FEATURES),
        "width": _int(1, MAX_WIDTH),
        "depth": _int(0, MAX_DEPTH),
        "basis": _BASIS,
    }
    branches = []
    for name, options in _BACKBONE_OPTIONS.items():
        # The keys are passed to the constructor as keyword arguments: anything else is refused here.
        branches.append({
            "if": {"properties": {"name": {"const": name}}},
            "then": {"properties": {**common, **options}, "additionalProperties": False},
        })
    return {
        "type": "object",
        "required": ["name", "in_dim", "out_dim"],
        "properties": common,
        "allOf": branches,
    }


_TARGET = {
    "type": "object",
    "properties": {
        "kind": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,31}$"},
        "shape": {"type": "array", "items": _int(1, MAX_AXIS_SAMPLES), "minItems": 1, "maxItems": MAX_AXES},
        "channels": _int(1, MAX_CHANNELS),
        "axis_names": {"type": "array", "items": _NAME, "maxItems": MAX_AXES},
        "bounds": {"type": "array", "maxItems": MAX_AXES,
                   "items": {"type": "array", "items": _FINITE, "minItems": 2, "maxItems": 2}},
        "value_offset": _FINITE,
        "value_scale": {"type": "number", "minimum": -MAX_MAGNITUDE, "maximum": MAX_MAGNITUDE,
                        "not": _num(-MIN_SCALE, MIN_SCALE)},
        "source": _TEXT,
        "bit_depth": {"enum": [8, 16]},
        "fps": _num(0, 1e4, exclusive_lo=True),
        # video: x+y+t | xy+t; volumes: axis letters grouped by '+' (x+y+z+t, xyz+t), or null (one mode per axis)
        "layout": {"anyOf": [{"enum": ["x+y+t", "xy+t"]}, {"type": "string", "pattern": "^[tzyx+(),]{1,32}$"},
                             {"type": "null"}]},
        "source_axes": {"type": "string", "pattern": "^[tzyxc]{3,5}$"},
        "dtype": {"type": "string", "pattern": "^[a-z0-9]{1,16}$"},
        "frame_start": _int(0, 1 << 40),
        "frame_stride": _int(1, 1 << 20),
        "world_from_normalized": {
            "type": "array", "minItems": 4, "maxItems": 4,
            "items": {"type": "array", "items": _FINITE, "minItems": 4, "maxItems": 4},
        },
        "resolution": {"anyOf": [_int(1, MAX_AXIS_SAMPLES), {"type": "null"}]},
        "truncation": {"anyOf": [_num(0, MAX_MAGNITUDE, exclusive_lo=True), {"type": "null"}]},
        "profile": {"enum": ["clamp", "tanh"]},
        "margin": {"anyOf": [_num(0, 1e3), {"type": "null"}]},
        "sign": {"anyOf": [_NAME, {"type": "null"}]},
    },
}

_NUMBER_OR_NULL = {"anyOf": [{"type": "number"}, {"type": "null"}]}

_HISTORY = {
    "type": "object",
    "properties": {
        "metrics": {"type": "object", "additionalProperties": _NUMBER_OR_NULL,
                    "propertyNames": {"maxLength": 256}},
        "seconds": {"anyOf": [_num(0, 1e12), {"type": "null"}]},
        "target_seconds": {"anyOf": [_num(0, 1e12), {"type": "null"}]},
        "steps": {"anyOf": [_int(0, 1 << 62), {"type": "null"}]},
        "device": {"anyOf": [_NAME, {"type": "null"}]},
    },
}

FIELD_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "finr3d field metadata (the 'meta' object of a .finr file)",
    "type": "object",
    "required": ["format", "ndim", "channels", "field_config", "backbone_configs"],
    "properties": {
        "format": {"const": "finr3d-field"},
        "kind": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,31}$"},
        "ndim": _int(2, MAX_AXES),
        "channels": _int(1, MAX_CHANNELS),
        "modes": _MODES,
        "decomposition": {"enum": _DECOMPOSITIONS},
        "ranks": _RANKS,
        "backbone": {"enum": _BACKBONES},
        "parameters": _int(0, 1 << 40),
        "parts": {"type": "object", "additionalProperties": _int(0, 1 << 40),
                  "propertyNames": {"maxLength": 256}},
        "library_version": _NAME,
        "field_config": {
            "type": "object",
            "properties": {
                "decomposition": {"enum": _DECOMPOSITIONS},
                "rank": {"anyOf": [_RANK, _RANKS]},
                "backbone": {"enum": _BACKBONES},
                "width": _int(1, MAX_WIDTH),
                "depth": _int(0, MAX_DEPTH),
                "omega0": {"anyOf": [_OMEGA, {"type": "null"}]},
                "modes": {"anyOf": [_MODES, {"type": "null"}]},
                "channel_factor": {"type": "boolean"},
                "basis": {"anyOf": [_BASIS, {"const": "grid"}]},
            },
        },
        "backbone_configs": {"type": "array", "minItems": 2, "maxItems": MAX_AXES,
                             "items": _backbone_config_schema()},
        "target": _TARGET,
        "history": _HISTORY,
    },
}


@functools.lru_cache(maxsize=1)
def _validator():
    import jsonschema

    base = jsonschema.Draft202012Validator
    # JSON Schema counts 1.0 as an integer and Python counts True as one; the loaders want real ints.
    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool))
    cls = jsonschema.validators.extend(base, type_checker=checker)
    cls.check_schema(FIELD_SCHEMA)
    return cls(FIELD_SCHEMA)


def _where(path) -> str:
    return ".".join(str(p) for p in path) or "the header"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _message(error) -> tuple[bool, str]:
    """(is a missing key, one-line description) of a jsonschema error."""
    where = _where(error.absolute_path)
    if error.validator == "required":
        missing = re.findall(r"'([^']*)' is a required property", error.message)
        name = missing[0] if missing else error.message
        return True, f"missing {name}" if where == "the header" else f"missing {where}.{name}"
    if error.validator == "additionalProperties":
        return False, f"{where}: {error.message}"
    if error.validator in ("type", "enum", "const", "pattern"):
        expected = error.validator_value
        if error.validator == "type":
            wants = f"a{'n' if str(expected)[0] in 'aeiou' else ''} {expected}"
        elif error.validator == "pattern":
            wants = "a short lowercase name"
        else:
            wants = f"one of {expected}" if error.validator == "enum" else repr(expected)
        return False, f"{where} is {_short(error.instance)}, expected {wants}"
    if error.validator in ("anyOf", "not"):
        return False, f"{where} has the invalid value {_short(error.instance)}"
    return False, f"{where}: {_short(error.instance)} is out of range ({error.message.split(' is ', 1)[-1]})"


def _schema_problems(meta) -> list[tuple[bool, str]]:
    errors = sorted(_validator().iter_errors(meta), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    # a key checked both by the common properties and by its backbone's branch reports twice
    return list(dict.fromkeys(_message(e) for e in errors))


def _cross_problems(meta: dict) -> list[str]:
    """Consistency between fields (run only when every field is individually valid)."""
    problems = []
    ndim = meta["ndim"]
    config = meta["field_config"]
    modes = config.get("modes") or meta.get("modes")
    if modes is None:
        modes = [[a] for a in range(ndim)]
    flat = sorted(a for m in modes for a in m)
    if flat != list(range(ndim)):
        problems.append(f"modes {modes} do not cover each of the {ndim} axes exactly once")
        return problems
    backbones = meta["backbone_configs"]
    if len(backbones) != len(modes):
        problems.append(f"backbone_configs has {len(backbones)} entries for {len(modes)} modes")
    else:
        for m, (bc, axes) in enumerate(zip(backbones, modes)):
            if bc["in_dim"] != len(axes):
                problems.append(f"backbone_configs.{m}.in_dim is {bc['in_dim']}, its mode has {len(axes)} axes")
    target = meta.get("target") or {}
    shape = target.get("shape")
    if shape is not None and len(shape) != ndim:
        problems.append(f"target.shape {shape} has {len(shape)} axes, the field {ndim}")
    if "channels" in target and target["channels"] != meta["channels"]:
        problems.append(f"target.channels is {target['channels']}, the field has {meta['channels']}")
    rank = config.get("rank")
    ranks = [rank] if isinstance(rank, int) else list(rank or meta.get("ranks") or [1])
    if config.get("decomposition", meta.get("decomposition")) == "tucker" and math.prod(ranks) > 1 << 31:
        problems.append(f"a Tucker core of ranks {ranks} has more than 2^31 entries")
    return problems


def field_problems(meta) -> list[str]:
    """Everything wrong with ``meta`` as a field's metadata, one line each ([] when valid).

    Missing keys come first, as ``"missing <key>"``; then wrong types and
    ranges, each naming its dotted path (``backbone_configs.0.depth``).
    """
    if not isinstance(meta, dict):
        return [f"the metadata is a {type(meta).__name__}, expected an object"]
    found = _schema_problems(meta)
    if found:
        missing = sorted(text for is_missing, text in found if is_missing)
        return missing + [text for is_missing, text in found if not is_missing]
    return _cross_problems(meta)


def validate_field_meta(meta, *, partial: bool = False) -> dict:
    """Check a field's metadata against :data:`FIELD_SCHEMA` and for consistency; return it unchanged.

    Cheap (no allocation beyond the header) and bounded: run it before
    anything is built from the header.

    Parameters
    ----------
    meta : dict
        The metadata (the ``meta`` of a decoded ``.finr`` file).
    partial : bool, keyword-only
        Accept missing keys (what ``finr3d info`` can still describe); the
        keys present must still be valid.

    Raises
    ------
    FormatError
        Naming the first bad field (and how many more there are).
    """
    if not partial and isinstance(meta, dict) and meta.get("format") != "finr3d-field":
        raise FormatError("the file holds no finr3d field (header 'format' is not 'finr3d-field'); "
                          "it may be another tool's .finr container")
    problems = field_problems(meta)
    if partial:
        problems = [p for p in problems if not p.startswith("missing ")]
    if problems:
        more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        raise FormatError(f"invalid field header: {problems[0]}{more}; {_HINT}")
    return meta


# ----------------------------------------------------------------------------- memory
def _modes(meta: dict) -> list[list[int]]:
    modes = (meta.get("field_config") or {}).get("modes") or meta.get("modes")
    return [list(m) for m in modes] if modes else [[a] for a in range(meta["ndim"])]


def decode_memory_bytes(meta: dict, shape, *, copies: int = 2) -> int:
    """Bytes that evaluating a validated field on a grid of ``shape`` needs, estimated from the header.

    ``copies`` float32 arrays of the whole grid (the values, and one
    conversion for the output), plus each mode network's features on its
    axes (width and outputs per sample, three times for the activations).
    """
    channels = int(meta["channels"])
    values = 4 * math.prod(int(s) for s in shape) * channels * copies
    features = 0
    for bc, axes in zip(meta["backbone_configs"], _modes(meta)):
        samples = math.prod(int(shape[a]) for a in axes if a < len(shape))
        features += 4 * samples * (3 * int(bc.get("width", 128)) + int(bc.get("basis", 0)) + int(bc["out_dim"]))
    return values + features


def parse_size(text) -> int:
    """``"2G"``, ``"512M"``, ``"64k"``, ``"1.5GiB"`` or a plain byte count, as bytes."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(text))
    if not match:
        raise InputError(f"memory size must be a number of bytes or like 512M, 8G, got {text!r}")
    factor = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[match.group(2).lower()]
    return int(float(match.group(1)) * factor)


def memory_limit(override=None) -> int:
    """The decode memory limit in bytes: ``override``, else ``$FINR3D_MAX_MEMORY``, else 2 GiB."""
    if override is not None:
        return parse_size(override)
    env = os.environ.get(MEMORY_ENV)
    if env:
        try:
            return parse_size(env)
        except InputError:
            raise InputError(f"{MEMORY_ENV}={env!r} is not a memory size; use bytes or a size like 8G") from None
    return DEFAULT_MEMORY_LIMIT


def _human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def check_memory(needed: int, what: str, *, limit=None, flag: str = "--max-memory", resource: str = "memory") -> None:
    """Refuse work that needs more than the memory limit, saying how much it needs and how to allow it.

    Raises
    ------
    InputError
        ``needed`` exceeds :func:`memory_limit` (``limit``).
    """
    allowed = memory_limit(limit)
    if needed > allowed:
        raise InputError(
            f"{what} needs about {_human(needed)}, more than the {_human(allowed)} limit; if this machine has the "
            f"{resource}, pass {flag} {math.ceil(needed / (1 << 30))}G or set {MEMORY_ENV}"
        )
