"""Reading and writing ``.finr`` files: quantized, zstd-coded, checksummed tensors.

A ``.finr`` file stores one model: a JSON header (the caller's metadata plus a
tensor table) and a payload of named tensors, quantized (fp32, fp16, int8,
int6, int4) and compressed with zstandard. The byte layout, the schemes'
formulas and the limits are specified in ``docs/format.md``; this module is the
reference implementation of format version 1.

The module depends on the standard library, numpy and zstandard only, so a
``.finr`` file can be decoded where torch is absent (the Blender add-on, a
viewer, a server). It never uses pickle.

Reading is defensive: the whole-file checksum is verified before anything large
is parsed, every declared size is checked against the bytes present and
against a decompression budget, and every failure raises
:class:`finr3d.errors.FormatError` with a message that names the problem and
the fix.

Examples
--------
>>> import numpy as np
>>> from finr3d import codec
>>> blob = codec.encode({"kind": "sdf"}, {"w": np.ones((4, 3), np.float32)},
...                     quantization="int8")
>>> meta, tensors = codec.decode(blob)
>>> meta["kind"], tensors["w"].shape
('sdf', (4, 3))
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import struct
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from finr3d.errors import FormatError
from finr3d.files import atomic_write_bytes

try:
    import zstandard
except ImportError:  # a machine without it (the lent GPU box): fitting and in-memory fields still work

    class _NoZstandard:
        def __getattr__(self, name):
            raise ImportError("reading or writing .finr files needs the zstandard package: pip install zstandard")

    zstandard = _NoZstandard()

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "FORMAT_MINOR",
    "QUANTIZATIONS",
    "BLOCK_SIZE",
    "encode",
    "decode",
    "write",
    "read",
    "read_header",
    "read_info",
    "jsonable",
    "payload_sizes",
    "FORMAT_V2",
    "encode_v2",
    "decode_v2",
    "read_field",
    "decode_field",
    "FieldFile",
    "write_bytes",
    "decode_grid",
    "decode_points",
    "describe_file",
    "compact_target",
]

# NUL marks the file as binary, CR LF catches newline translation by text-mode
# transfers, and ^Z stops `type` on Windows; "FINR" makes `head -c4` readable.
MAGIC = b"FINR\x00\r\n\x1a"
FORMAT_VERSION = 1
FORMAT_MINOR = 0
QUANTIZATIONS = ("fp32", "fp16", "int8", "int6", "int4")
BLOCK_SIZE = 64
"""Values per scale for int6 and int4 (written by this encoder; readers accept any valid block)."""

# ---------------------------------------------------------------------------
# Layout: PREFIX | header JSON | header digest | zstd payload | file digest
# ---------------------------------------------------------------------------
_PREFIX = struct.Struct("<8sHHIQ")  # magic, version, flags, header length, payload length
PREFIX_BYTES = _PREFIX.size  # 24
HEADER_DIGEST_BYTES = 16
FILE_DIGEST_BYTES = 32

# Reader limits; the encoder refuses to write files that exceed them.
MAX_HEADER_BYTES = 1 << 20
MAX_JSON_DEPTH = 32
MAX_TENSORS = 10_000
MAX_NDIM = 8
MAX_NAME_CHARS = 1024
MAX_DIM = 1 << 40
MAX_BLOCK = 1 << 16
MAX_EXPANSION = 64
"""Decoded bytes may be at most this multiple of the file size (plus :data:`EXPANSION_SLACK`)."""
EXPANSION_SLACK = 1 << 20
COMPACT_EXPANSION = 512
"""A compact file's CODES may decode to 8-byte values of at most this multiple of the file size (plus
:data:`COMPACT_SLACK`): entropy-coded sparse cores legitimately expand far more than zstd'd tensors (a 4-D
Tucker core of a clip: about 300x), and the decoder needs about 25 bytes of memory per value."""
COMPACT_SLACK = 8 << 20


def compact_budget(file_bytes: int) -> int:
    """Bytes (8 per value) a compact file of ``file_bytes`` may decode to without ``max_tensor_bytes``."""
    return COMPACT_EXPANSION * int(file_bytes) + COMPACT_SLACK

_FP16_MAX = float(np.finfo(np.float16).max)
_BITS = {"int8": 8, "int6": 6, "int4": 4}
_LEVELS = range(1, 23)

# First bytes of files people may hand us by mistake, for a better message.
_FOREIGN_SIGNATURES = (
    (b"PK\x03\x04", "a zip archive (a PyTorch checkpoint or .npz?)"),
    (b"\x80", "a Python pickle (a PyTorch checkpoint?)"),
    (b"\x93NUMPY", "a numpy .npy file"),
    (b"\x28\xb5\x2f\xfd", "a bare zstandard stream"),
    (b"\x89HDF", "an HDF5 file"),
)


@dataclass(frozen=True)
class _Entry:
    """One validated row of the tensor table."""

    name: str
    shape: tuple[int, ...]
    quantization: str
    block: int
    shuffle: bool
    offset: int
    length: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)


# ---------------------------------------------------------------------------
# Quantization schemes (pure functions over float32 arrays)
# ---------------------------------------------------------------------------
def _segment_length(shape: tuple[int, ...], quantization: str, block: int) -> int:
    """Bytes of one tensor's segment in the decompressed payload.

    Parameters
    ----------
    shape : tuple of int
        Tensor shape; ``()`` is a scalar.
    quantization : str
        One of :data:`QUANTIZATIONS`.
    block : int
        Values per scale (int6/int4 only).

    Returns
    -------
    int
        fp32: ``4 n``; fp16: ``2 n``; int8: ``4 rows + n``;
        int6: ``nb (4 + block)``; int4: ``nb (4 + block / 2)``; with
        ``nb = ceil(n / block)``.
    """
    n = math.prod(shape)
    if quantization == "fp32":
        return 4 * n
    if quantization == "fp16":
        return 2 * n
    if quantization == "int8":
        return 4 * _int8_rows(shape) + n
    n_blocks = -(-n // block)
    return n_blocks * (4 + _code_bytes(quantization, block))


def _code_bytes(quantization: str, count: int) -> int:
    """Bytes holding ``count`` int6 or int4 codes.

    int4 packs two codes per byte. int6 keeps one code per byte: zstd's
    Huffman stage then codes them near their entropy (about 5.6 bits on
    gaussian weights), whereas 6-bit packing hides the symbols from it and
    stays at about 5.9 bits (measured at block 64).
    """
    return count // 2 if quantization == "int4" else count


def _int8_rows(shape: tuple[int, ...]) -> int:
    # Per-output-channel scales: axis 0 is the output axis of a Linear weight.
    return shape[0] if shape else 1


def _shuffle_bytes(values: np.ndarray) -> bytes:
    """Byte planes of a little-endian float array: all first bytes, then all second bytes, ...

    Exponent bytes of neighbouring weights are alike, so grouping them lets
    zstd find the redundancy (about 8 % smaller on gaussian fp32 weights).
    """
    return values.view(np.uint8).reshape(-1, values.itemsize).T.tobytes()


def _unshuffle(raw: memoryview, dtype: str, n: int) -> np.ndarray:
    itemsize = np.dtype(dtype).itemsize
    planes = np.frombuffer(raw, np.uint8).reshape(itemsize, n)
    return np.ascontiguousarray(planes.T).view(dtype).reshape(n)


def _symmetric_scales(groups: np.ndarray, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric quantization of each row of ``groups`` (g, k) to integers in [-qmax, qmax].

    ``s = max|w| / qmax`` per row and ``q = clip(rint(w / s), -qmax, qmax)``, so
    that ``|w - q s| <= s / 2``. All-zero rows get ``s = 0`` and ``q = 0``.
    """
    scales = (np.abs(groups).max(axis=1) / np.float32(qmax)).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1))
    q = np.clip(np.rint(groups / safe[:, None]), -qmax, qmax)
    return scales, q


def _pack_codes(u: np.ndarray, quantization: str) -> bytes:
    """Store unsigned codes: int4 as nibbles (code 2i in the low nibble of byte i), int6 one per byte."""
    if quantization == "int4":
        return (u[0::2] | (u[1::2] << 4)).astype(np.uint8).tobytes()
    return u.astype(np.uint8).tobytes()


def _unpack_codes(packed: np.ndarray, quantization: str) -> np.ndarray:
    """Inverse of :func:`_pack_codes`; returns uint8 codes."""
    if quantization == "int4":
        out = np.empty(packed.size * 2, np.uint8)
        out[0::2] = packed & 0x0F
        out[1::2] = packed >> 4
        return out
    return packed


def _quantize(values: np.ndarray, quantization: str, block: int, shuffle: bool) -> bytes:
    """Encode one float32 tensor as its payload segment (see :func:`_segment_length`)."""
    flat = values.reshape(-1)
    if quantization == "fp32":
        data = flat.astype("<f4")
        return _shuffle_bytes(data) if shuffle else data.tobytes()
    if quantization == "fp16":
        data = flat.astype("<f2")
        return _shuffle_bytes(data) if shuffle else data.tobytes()
    if quantization == "int8":
        rows = _int8_rows(values.shape)
        scales, q = _symmetric_scales(flat.reshape(rows, -1), 127)
        return scales.astype("<f4").tobytes() + q.astype(np.int8).tobytes()
    bits = _BITS[quantization]
    n_blocks = -(-flat.size // block)
    padded = np.zeros(n_blocks * block, np.float32)
    padded[: flat.size] = flat
    scales, q = _symmetric_scales(padded.reshape(n_blocks, block), 2 ** (bits - 1) - 1)
    # Offset binary keeps the packed fields unsigned: u = q + 2^(bits-1).
    u = (q.reshape(-1) + 2 ** (bits - 1)).astype(np.uint8)
    return scales.astype("<f4").tobytes() + _pack_codes(u, quantization)


def _dequantize(raw: memoryview, entry: _Entry) -> np.ndarray:
    """Decode one validated segment to a writeable float32 array of ``entry.shape``."""
    # A hostile scale near float32 max overflows to Inf; the finiteness check
    # below turns that into a FormatError, so numpy's warning is only noise.
    with np.errstate(over="ignore", invalid="ignore"):
        out = _dequantize_values(raw, entry)
    if not np.isfinite(out).all():
        raise FormatError(
            f"tensor {entry.name!r} decodes to NaN or Inf values; the file is corrupted "
            "or was not written by finr3d: re-export it"
        )
    return out


def _dequantize_values(raw: memoryview, entry: _Entry) -> np.ndarray:
    n, q = entry.size, entry.quantization
    if q in ("fp32", "fp16"):
        dtype = "<f4" if q == "fp32" else "<f2"
        if entry.shuffle:
            values = _unshuffle(raw, dtype, n)
        else:
            values = np.frombuffer(raw, dtype, n)
        out = values.astype(np.float32)  # always a fresh, writeable, native copy
    elif q == "int8":
        rows = _int8_rows(entry.shape)
        scales = _checked_scales(raw[: 4 * rows], rows, entry)
        codes = np.frombuffer(raw[4 * rows :], np.int8, n)
        cols = n // rows if rows else 0
        out = codes.reshape(rows, cols).astype(np.float32) * scales[:, None]
    else:
        bits = _BITS[q]
        n_blocks = -(-n // entry.block)
        scales = _checked_scales(raw[: 4 * n_blocks], n_blocks, entry)
        packed = np.frombuffer(raw[4 * n_blocks :], np.uint8)
        u = _unpack_codes(packed, q).reshape(n_blocks, entry.block)
        out = (u.astype(np.float32) - np.float32(2 ** (bits - 1))) * scales[:, None]
        out = out.reshape(-1)[:n]
    return np.asarray(out, dtype=np.float32, order="C").reshape(entry.shape)


def _checked_scales(raw: memoryview, count: int, entry: _Entry) -> np.ndarray:
    scales = np.frombuffer(raw, "<f4", count).astype(np.float32)
    if not (np.isfinite(scales).all() and (scales >= 0).all()):
        raise FormatError(
            f"tensor {entry.name!r} has NaN, infinite or negative quantization scales; "
            "the file is corrupted or hostile: re-export it"
        )
    return scales


# ---------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------
def _json_default(obj):
    # Metrics and configs often hold numpy scalars; JSON needs Python ones.
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"header value of type {type(obj).__name__} is not JSON-serializable")


def _json_depth(obj) -> int:
    """Nesting depth of a parsed JSON value (scalars are depth 0), computed without recursion."""
    deepest, stack = 0, [(obj, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _as_float32(name: str, value) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "fiub":
        raise ValueError(
            f"tensor {name!r} has dtype {array.dtype}; expected a real numeric array"
        )
    if array.ndim > MAX_NDIM:
        raise ValueError(
            f"tensor {name!r} has {array.ndim} dimensions; at most {MAX_NDIM} are supported"
        )
    with np.errstate(over="ignore"):
        # np.asarray, not ascontiguousarray, which would turn a 0-d scalar into shape (1,)
        array = np.asarray(array, dtype=np.float32, order="C")
    if not np.isfinite(array).all():
        raise ValueError(
            f"tensor {name!r} contains NaN or Inf (or values beyond float32 range); "
            "the fit probably diverged: refit with a lower learning rate"
        )
    return array


def _choose_scheme(array: np.ndarray, quantization: str, keep: bool) -> str:
    """Scheme actually used for one tensor under the requested ``quantization``."""
    # Scalars, vectors (biases, CP weights) and empty tensors are tiny next to
    # the matrices; full precision costs almost nothing and avoids bias drift.
    if keep or array.ndim <= 1 or array.size == 0:
        return "fp32"
    if quantization == "fp16" and array.size and float(np.abs(array).max()) > _FP16_MAX:
        return "fp32"  # would overflow to Inf in half precision
    return quantization


def encode(
    header: dict,
    tensors: Mapping[str, np.ndarray],
    *,
    quantization: str = "fp16",
    keep_fp32: Iterable[str] = (),
    level: int = 19,
) -> bytes:
    """Serialize metadata and named tensors to the bytes of a ``.finr`` file.

    Parameters
    ----------
    header : dict
        JSON-serializable metadata, stored under ``"meta"`` (see
        ``docs/format.md`` for the keys finr3d uses). numpy scalars and arrays
        are converted to Python numbers and lists; NaN and Inf are refused.
    tensors : mapping of str to array_like
        Named real-valued arrays with 0 to 8 dimensions, stored as float32
        after dequantization. Order is preserved.
    quantization : {"fp32", "fp16", "int8", "int6", "int4"}, keyword-only
        Scheme for tensors with 2 or more dimensions. int8 uses one scale per
        index of axis 0; int6 and int4 use one scale per block of
        :data:`BLOCK_SIZE` values. 0-d and 1-D tensors, empty tensors and
        those named in ``keep_fp32`` are stored as fp32; fp16 falls back to
        fp32 for a tensor beyond the half-precision range.
    keep_fp32 : iterable of str, keyword-only
        Names of tensors to store losslessly (e.g. a SIREN first layer).
    level : int, keyword-only
        zstd level, 1 to 22.

    Returns
    -------
    bytes
        The complete file: prefix, header, header digest, payload, file digest.

    Raises
    ------
    ValueError
        An unknown quantization or keep_fp32 name, a non-finite value, a
        header that is not JSON-serializable or too large, too many tensors.
    TypeError
        ``header`` is not a dict or ``tensors`` is not a mapping with str keys.
    """
    if not isinstance(header, dict):
        raise TypeError(f"header must be a dict, got {type(header).__name__}")
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping of name to array, got {type(tensors).__name__}")
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}; expected one of {QUANTIZATIONS}")
    if isinstance(level, bool) or not isinstance(level, int) or level not in _LEVELS:
        raise ValueError(f"zstd level must be an int from 1 to 22, got {level!r}")
    if len(tensors) > MAX_TENSORS:
        raise ValueError(f"{len(tensors)} tensors given; a .finr file holds at most {MAX_TENSORS}")
    keep = {keep_fp32} if isinstance(keep_fp32, str) else set(keep_fp32)
    unknown = sorted(keep - set(tensors))
    if unknown:
        raise ValueError(f"keep_fp32 names tensors that are not present: {unknown}")

    table, segments, offset, elements = [], [], 0, 0
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {name!r}")
        if len(name) > MAX_NAME_CHARS:
            raise ValueError(f"tensor name {name[:40]!r}... is longer than {MAX_NAME_CHARS} characters")
        array = _as_float32(name, value)
        scheme = _choose_scheme(array, quantization, name in keep)
        block = BLOCK_SIZE if scheme in ("int6", "int4") else 0
        shuffle = scheme in ("fp32", "fp16") and array.size > 1
        segment = _quantize(array, scheme, block, shuffle)
        entry = {
            "name": name,
            "shape": list(array.shape),
            "quantization": scheme,
            "shuffle": shuffle,
            "offset": offset,
            "length": len(segment),
        }
        if block:
            entry["block"] = block
        table.append(entry)
        segments.append(segment)
        offset += len(segment)
        elements += array.size

    document = {"minor": FORMAT_MINOR, "meta": header, "tensors": table}
    try:
        text = json.dumps(
            document, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_json_default
        )
        header_bytes = text.encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError) as exc:
        raise ValueError(f"header is not JSON-serializable with finite numbers: {exc}") from None
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise ValueError(
            f"header JSON is {len(header_bytes)} bytes; the limit is {MAX_HEADER_BYTES}: "
            "store large arrays as tensors, not in the header"
        )
    if _json_depth(json.loads(text)) > MAX_JSON_DEPTH:
        raise ValueError(f"header nests deeper than {MAX_JSON_DEPTH - 1} levels; flatten it")

    compressor = zstandard.ZstdCompressor(level=level, write_checksum=False, write_content_size=True)
    payload = compressor.compress(b"".join(segments))
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(header_bytes), len(payload))
    head = prefix + header_bytes
    body = head + _digest(head, HEADER_DIGEST_BYTES) + payload
    blob = body + _digest(body, FILE_DIGEST_BYTES)

    budget = MAX_EXPANSION * len(blob) + EXPANSION_SLACK
    if max(4 * elements, offset) > budget:
        warnings.warn(
            f"the tensors compress more than {MAX_EXPANSION}x (mostly constant?); reading this "
            f"file will need max_tensor_bytes >= {max(4 * elements, offset)}",
            RuntimeWarning,
            stacklevel=2,
        )
    return blob


def _digest(data, size: int) -> bytes:
    return hashlib.blake2b(data, digest_size=size).digest()


def payload_sizes(
    header: dict,
    tensors: Mapping[str, np.ndarray],
    quantizations: Iterable[str] = QUANTIZATIONS,
    *,
    keep_fp32: Iterable[str] = (),
    level: int = 19,
) -> dict[str, int]:
    """Size in bytes of the encoded file at each quantization.

    Parameters
    ----------
    header, tensors, keep_fp32, level
        As for :func:`encode`.
    quantizations : iterable of str
        Schemes to measure, each one of :data:`QUANTIZATIONS`.

    Returns
    -------
    dict of str to int
        ``{quantization: len(encode(...))}``, in the order given. The sizes
        are exact (the files are actually encoded), so a rank sweep can plot
        true bytes against quality.
    """
    keep = tuple(keep_fp32)
    return {
        q: len(encode(header, tensors, quantization=q, keep_fp32=keep, level=level))
        for q in quantizations
    }


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------
def _check_prefix(prefix: bytes, file_size: int) -> tuple[int, int]:
    """Validate magic, version, flags and sizes; return (header length, payload length)."""
    if file_size == 0:
        raise FormatError("empty file: it is not a .finr file (was the export interrupted?)")
    if prefix[: len(MAGIC)] != MAGIC[: len(prefix)]:
        for signature, what in _FOREIGN_SIGNATURES:
            if prefix.startswith(signature):
                raise FormatError(
                    f"not a .finr file (bad magic): this looks like {what}; "
                    "export the model with FactorizedField.save(..., 'model.finr')"
                )
        raise FormatError("not a .finr file (bad magic): was it written by finr3d?")
    if len(prefix) < PREFIX_BYTES:
        raise FormatError(
            f"truncated file: {file_size} bytes is shorter than the {PREFIX_BYTES}-byte "
            ".finr prefix; re-export or re-download it"
        )
    _, version, flags, header_len, payload_len = _PREFIX.unpack(prefix[:PREFIX_BYTES])
    if version == FORMAT_V2:
        raise FormatError(
            "this is a .finr version 2 file (a compact field); read it with finr3d.load or "
            "codec.read_field, not the version-1 tensor reader"
        )
    if version != FORMAT_VERSION:
        raise FormatError(
            f"unsupported .finr format version {version}; this finr3d reads version "
            f"{FORMAT_VERSION}: upgrade finr3d (or re-export with this version)"
        )
    if flags != 0:
        raise FormatError(
            f"unknown .finr flags 0x{flags:04x}; this finr3d knows none: "
            "upgrade finr3d, or the file is corrupted"
        )
    if header_len > MAX_HEADER_BYTES:
        raise FormatError(
            f"header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit; "
            "the file is corrupted or hostile: re-export it"
        )
    expected = _file_size(header_len, payload_len)
    if file_size < expected:
        raise FormatError(
            f"truncated file: expected {expected} bytes, found {file_size}; "
            "re-export or re-download it"
        )
    if file_size > expected:
        raise FormatError(
            f"{file_size - expected} unexpected bytes after the end of the .finr data "
            f"(expected {expected} bytes); the file is corrupted: re-export it"
        )
    return header_len, payload_len


def _file_size(header_len: int, payload_len: int) -> int:
    return PREFIX_BYTES + header_len + HEADER_DIGEST_BYTES + payload_len + FILE_DIGEST_BYTES


def _reject_constant(token: str):
    raise FormatError(f"header contains {token}; only finite numbers are allowed: re-export the file")


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        _reject_constant(token)
    return value


def _unique_keys(pairs: list) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise FormatError("header has a JSON object with duplicate keys; the file is malformed")
    return result


def _parse_json(raw: bytes) -> dict:
    try:
        text = bytes(raw).decode("utf-8")
        document = json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            object_pairs_hook=_unique_keys,
        )
    except FormatError:
        raise
    except RecursionError:
        raise FormatError(
            f"header JSON nests too deeply (limit {MAX_JSON_DEPTH}); the file is hostile"
        ) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"header is not valid UTF-8 JSON ({exc}); the file is malformed") from None
    if _json_depth(document) > MAX_JSON_DEPTH:
        raise FormatError(f"header JSON nests deeper than {MAX_JSON_DEPTH} levels; the file is hostile")
    if not isinstance(document, dict):
        raise FormatError(f"header must be a JSON object, found {type(document).__name__}")
    return document


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _table_error(index: int, problem: str, fix: str = "the file is malformed or hostile: re-export it") -> FormatError:
    return FormatError(f"tensor table entry {index}: {problem}; {fix}")


def _parse_entry(index: int, item, offset: int) -> _Entry:
    """Validate one tensor-table row; ``offset`` is where it must start."""
    if not isinstance(item, dict):
        raise _table_error(index, f"expected an object, found {type(item).__name__}")
    name = item.get("name")
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
        raise _table_error(index, f"name must be a string of at most {MAX_NAME_CHARS} characters")
    shape = item.get("shape")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM:
        raise _table_error(index, f"shape must be a list of at most {MAX_NDIM} dimensions")
    if not all(_is_int(d) and 0 <= d <= MAX_DIM for d in shape):
        raise _table_error(index, f"shape {shape!r} must hold integers from 0 to {MAX_DIM}")
    quantization = item.get("quantization")
    if quantization not in QUANTIZATIONS:
        raise _table_error(
            index,
            f"unknown quantization {quantization!r} (this finr3d knows {', '.join(QUANTIZATIONS)})",
            "the file was probably written by a newer finr3d: upgrade finr3d",
        )
    block = 0
    if quantization in ("int6", "int4"):
        block = item.get("block")
        if not (_is_int(block) and 8 <= block <= MAX_BLOCK and block % 8 == 0):
            raise _table_error(index, f"block must be a multiple of 8 from 8 to {MAX_BLOCK}, got {block!r}")
    shuffle = item.get("shuffle", False)
    if not isinstance(shuffle, bool):
        raise _table_error(index, f"shuffle must be true or false, got {shuffle!r}")
    length = _segment_length(tuple(shape), quantization, block)
    if item.get("offset") != offset or not _is_int(item.get("offset")):
        raise _table_error(index, f"offset must be {offset} (segments are contiguous), got {item.get('offset')!r}")
    if item.get("length") != length or not _is_int(item.get("length")):
        raise _table_error(
            index, f"length {item.get('length')!r} disagrees with shape {shape} at {quantization} ({length} bytes)"
        )
    return _Entry(name, tuple(shape), quantization, block, shuffle, offset, length)


def _parse_header(raw: bytes, file_size: int, max_tensor_bytes: int | None) -> tuple[dict, list[_Entry], int]:
    """Validate the header JSON; return (meta, table, decompressed payload length)."""
    document = _parse_json(raw)
    minor = document.get("minor", 0)
    if not _is_int(minor) or minor < 0:
        raise FormatError(f"header field 'minor' must be a non-negative integer, got {minor!r}")
    meta = document.get("meta")
    if not isinstance(meta, dict):
        raise FormatError(f"header field 'meta' must be an object, found {type(meta).__name__}")
    items = document.get("tensors")
    if not isinstance(items, list) or len(items) > MAX_TENSORS:
        raise FormatError(f"header field 'tensors' must be a list of at most {MAX_TENSORS} entries")

    budget = MAX_EXPANSION * file_size + EXPANSION_SLACK if max_tensor_bytes is None else max_tensor_bytes
    table, names, offset, out_bytes = [], set(), 0, 0
    for index, item in enumerate(items):
        entry = _parse_entry(index, item, offset)
        if entry.name in names:
            raise _table_error(index, f"duplicate tensor name {entry.name!r}")
        names.add(entry.name)
        offset += entry.length
        out_bytes += 4 * entry.size
        # Checked inside the loop so absurd shapes stop before the sums grow huge.
        if max(offset, out_bytes) > budget:
            raise FormatError(
                f"the tensors decode to more than {budget} bytes from a {file_size}-byte file "
                "(a decompression bomb, or a corrupted header); if you trust this file, pass "
                "max_tensor_bytes= with a larger budget"
            )
        table.append(entry)
    return meta, table, offset


def _decompress(payload: memoryview, raw_len: int, dictionary=None) -> bytes:
    """Decompress the payload frame, which must declare and hold exactly ``raw_len`` bytes."""
    extra = {} if dictionary is None else {"dict_data": dictionary}
    try:
        declared = zstandard.get_frame_parameters(payload).content_size
        if declared != raw_len:
            raise FormatError(
                f"payload zstd frame declares {declared} decompressed bytes but the tensor table needs "
                f"{raw_len}; the file is malformed: re-export it"
            )
        if raw_len == 0:
            # One-shot decoding skips validation of an empty frame, so stream
            # it; a payload this small cannot expand to anything large.
            if len(payload) > 64:
                raise FormatError(f"payload of {len(payload)} bytes for no tensor data; re-export the file")
            stream = zstandard.ZstdDecompressor(**extra).decompressobj()
            raw = stream.decompress(payload)
            if not stream.eof or stream.unused_data:
                raise FormatError("payload has bytes after its zstd frame; re-export the file")
        else:
            # One-shot decoding writes into a buffer of the (already bounded)
            # declared size, so a lying frame cannot grow memory further.
            raw = zstandard.ZstdDecompressor(**extra).decompress(
                payload, max_output_size=raw_len, allow_extra_data=False
            )
    except zstandard.ZstdError as exc:
        raise FormatError(f"payload is not a valid zstd frame ({exc}); re-export the file") from None
    if len(raw) != raw_len:
        raise FormatError(
            f"payload decompressed to {len(raw)} bytes, expected {raw_len}; re-export the file"
        )
    return raw


def decode(data: bytes, *, max_tensor_bytes: int | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Parse the bytes of a ``.finr`` file.

    The whole-file checksum is verified before the header or payload is parsed.

    Parameters
    ----------
    data : bytes-like
        A complete file, as returned by :func:`encode`.
    max_tensor_bytes : int, optional, keyword-only
        Budget for the decoded tensors (float32 output bytes, and the
        decompressed payload). The default is ``64 * len(data) + 1 MiB``,
        which stops decompression bombs; pass a larger value to read a
        trusted file whose tensors are nearly constant.

    Returns
    -------
    meta : dict
        The ``header`` given to :func:`encode` (after a JSON round trip:
        tuples become lists).
    tensors : dict of str to ndarray
        Dequantized float32 arrays, writeable, in the order written.

    Raises
    ------
    FormatError
        The data are truncated, corrupted, of an unknown version, over
        budget, or otherwise not a valid ``.finr`` file.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode expects bytes, got {type(data).__name__}")
    if max_tensor_bytes is not None and (not _is_int(max_tensor_bytes) or max_tensor_bytes < 0):
        raise ValueError(f"max_tensor_bytes must be a non-negative int or None, got {max_tensor_bytes!r}")
    view = memoryview(data).cast("B")
    size = len(view)
    header_len, payload_len = _check_prefix(bytes(view[:PREFIX_BYTES]), size)

    digest_at = size - FILE_DIGEST_BYTES
    if _digest(view[:digest_at], FILE_DIGEST_BYTES) != view[digest_at:]:
        raise FormatError("checksum mismatch: the file is corrupted; re-export or re-download it")
    header_end = PREFIX_BYTES + header_len
    if _digest(view[:header_end], HEADER_DIGEST_BYTES) != view[header_end : header_end + HEADER_DIGEST_BYTES]:
        raise FormatError("header checksum mismatch: the file is corrupted; re-export it")

    meta, table, raw_len = _parse_header(view[PREFIX_BYTES:header_end], size, max_tensor_bytes)
    payload_at = header_end + HEADER_DIGEST_BYTES
    raw = memoryview(_decompress(view[payload_at : payload_at + payload_len], raw_len))
    tensors = {entry.name: _dequantize(raw[entry.offset : entry.offset + entry.length], entry) for entry in table}
    return meta, tensors


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------
def _check_readable(path) -> str:
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory, not a .finr file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such .finr file: {path!r}")
    return path


def read(path, *, max_tensor_bytes: int | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Read a ``.finr`` file; see :func:`decode` for the return value and errors.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    IsADirectoryError
        ``path`` is a directory.
    FormatError
        The file is not a valid ``.finr`` file.
    """
    path = _check_readable(path)
    with open(path, "rb") as handle:
        data = handle.read()
    return decode(data, max_tensor_bytes=max_tensor_bytes)


def _read_table(path) -> tuple[dict, list[_Entry], int]:
    """Read and validate prefix, header and header digest without touching the payload."""
    path = _check_readable(path)
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        header_len, _ = _check_prefix(handle.read(PREFIX_BYTES), size)
        handle.seek(0)
        head = handle.read(PREFIX_BYTES + header_len)
        stored = handle.read(HEADER_DIGEST_BYTES)
    if len(head) != PREFIX_BYTES + header_len or len(stored) != HEADER_DIGEST_BYTES:
        raise FormatError(f"truncated file while reading the header of {path!r}; re-export it")
    if _digest(head, HEADER_DIGEST_BYTES) != stored:
        raise FormatError("header checksum mismatch: the file is corrupted; re-export it")
    meta, table, _ = _parse_header(head[PREFIX_BYTES:], size, None)
    return meta, table, size


def read_header(path) -> dict:
    """Read only the metadata of a ``.finr`` file (cheap: the payload is not read).

    Magic, version, flags, declared sizes versus the file size, the header
    digest and the tensor table are validated; the whole-file checksum is not
    (that needs the payload; :func:`read` verifies it).

    Returns
    -------
    dict
        The ``meta`` object, as :func:`decode` returns it.
    """
    if _file_version(path) == FORMAT_V2:
        return describe_file(path)  # v2 files are small: read and verify all of it
    meta, _, _ = _read_table(path)
    return meta


def read_info(path) -> dict:
    """Describe a ``.finr`` file without decoding its tensors (for ``finr3d info``).

    Returns
    -------
    dict
        ``{"format_version", "file_bytes", "meta", "tensors": [{"name",
        "shape", "quantization", "bytes"}], "parameters"}`` where ``bytes`` is
        the tensor's decompressed segment size.
    """
    meta, table, size = _read_table(path)
    return {
        "format_version": FORMAT_VERSION,
        "file_bytes": size,
        "meta": meta,
        "tensors": [
            {"name": e.name, "shape": list(e.shape), "quantization": e.quantization, "bytes": e.length}
            for e in table
        ],
        "parameters": sum(e.size for e in table),
    }


def write(
    path,
    header: dict,
    tensors: Mapping[str, np.ndarray],
    *,
    quantization: str = "fp16",
    keep_fp32: Iterable[str] = (),
    overwrite: bool = True,
    level: int = 19,
) -> int:
    """Encode and write a ``.finr`` file atomically.

    The bytes go to a temporary file in the destination directory, are
    fsynced, and then replace ``path`` in one rename, so a crash or error
    leaves either the old file or the new one, never a partial file.

    Parameters
    ----------
    path : str or os.PathLike
        Destination; its directory must exist.
    header, tensors, quantization, keep_fp32, level
        As for :func:`encode`.
    overwrite : bool, keyword-only
        If False and ``path`` exists, raise :class:`FileExistsError`.

    Returns
    -------
    int
        Bytes written.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory; give a file name such as model.finr")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path!r}: directory {directory!r} does not exist")
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path!r} already exists; pass overwrite=True to replace it")
    blob = encode(header, tensors, quantization=quantization, keep_fp32=keep_fp32, level=level)
    return atomic_write_bytes(path, blob, overwrite=overwrite, durable=True)


def jsonable(obj):
    """``obj`` with numpy and torch values made JSON values, for a header.

    Dict keys become strings, tuples lists, numpy/torch scalars and arrays
    Python numbers and lists (anything with ``tolist()``), and NaN/Inf ``None``
    (JSON has no NaN).
    """
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if hasattr(obj, "tolist"):  # numpy arrays, torch tensors
        return jsonable(obj.tolist())
    return obj


# ===========================================================================
# Format version 2: a compact binary container of sections (docs/format.md, part 2)
# ===========================================================================
FORMAT_V2 = 2
_V2_HEAD = struct.Struct("<8sHHB3x")  # magic, version, flags, section count, 3 reserved zero bytes
_V2_SECTION = struct.Struct("<BBHII")  # kind, compression, reserved, stored length, decoded length
V2_DIGEST_BYTES = 16
MAX_SECTIONS = 16
#: section kinds; a kind >= 128 is optional: readers that do not know it skip it
SECTION_FIELD, SECTION_CODES, SECTION_META, SECTION_DETAIL, SECTION_WEIGHTS = 1, 2, 3, 4, 5
SECTION_NAMES = {1: "field", 2: "codes", 3: "meta", 4: "detail", 5: "weights"}
#: section compressions: stored, zstd, zstd with the built-in dictionary :data:`META_DICTIONARY` (version 1)
STORE, ZSTD, ZSTD_DICT = 0, 1, 2
#: A raw-content zstd dictionary: typical META JSON of each kind, so a file's own META codes as little more
#: than its values (an SDF's 436-byte META: 301 bytes with plain zstd, 78 with this). Part of the format:
#: never change it; a new one gets a new compression id.
META_DICTIONARY = (
    b'{"format":"finr3d-field","library_version":"0.1.0","target":{"shape":[48,64,64,64],"source":"<array>",'
    b'"source_axes":"tzyx","dtype":"uint8","layout":null,"frames":null,"fps":null,"bit_depth":8,'
    b'"world_from_normalized":[[0.0,0.0,31.5,31.5],[0.0,31.5,0.0,31.5],[31.5,0.0,0.0,31.5],[0.0,0.0,0.0,1.0]]},'
    b'"history":{"metric_name":"psnr","steps":1000,"seconds":60.0,"stopped":"budget","metrics":{"psnr":40.0,'
    b'"ssim":0.9,"loss":0.001},"device":"cpu","target_seconds":1.0,"auto_rank":{"ranks":[48,48,48],"bytes":10000,'
    b'"step":0.0001,"quantization":"compact","params":100000,"metric":"psnr","evaluations":5}},'
    b'"trained":{"backbone":"siren","ranks":[128,128]}}'
    b'{"format":"finr3d-field","library_version":"0.1.0","target":{"shape":[128,128,128],"source":"mesh.obj",'
    b'"resolution":128,"detail_resolution":null,"truncation":0.1,"margin":0.1,"sign":"auto"},"history":'
    b'{"metric_name":"iou","steps":300,"seconds":60.0,"stopped":"budget","metrics":{"iou":0.997,"sdf_mae":0.0005,'
    b'"psnr":55.0,"loss":0.001},"device":"cpu","target_seconds":1.0},"trained":{"backbone":"siren","ranks":[48,48,48]}}')
_META_DICT = None


def _meta_dict():
    global _META_DICT
    if _META_DICT is None:
        _META_DICT = zstandard.ZstdCompressionDict(META_DICTIONARY, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return _META_DICT


#: largest META JSON (decoded)
MAX_META_BYTES = 1 << 20


def encode_v2(sections, *, level: int = 19) -> bytes:
    """Build a version-2 file from ``[(kind, bytes, compress)]``; compress=True zstd-codes the section,
    compress=ZSTD_DICT with the built-in META dictionary. A section that compression does not make smaller
    (near-random ANS words, say) is stored instead."""
    if len(sections) > MAX_SECTIONS:
        raise ValueError(f"{len(sections)} sections; a .finr v2 file holds at most {MAX_SECTIONS}")
    table, bodies = [], []
    for kind, body, compress in sections:
        body = bytes(body)
        if compress:
            how = ZSTD if compress is True else compress
            if how not in (ZSTD, ZSTD_DICT):
                raise ValueError(f"section {kind}: compress must be False, True or ZSTD_DICT, got {compress!r}")
            extra = {"dict_data": _meta_dict(), "write_dict_id": False} if how == ZSTD_DICT else {}
            coded = zstandard.ZstdCompressor(level=level, write_checksum=False, write_content_size=True,
                                             **extra).compress(body)
            if len(coded) < len(body):
                table.append(_V2_SECTION.pack(kind, how, 0, len(coded), len(body)))
                bodies.append(coded)
                continue
        table.append(_V2_SECTION.pack(kind, STORE, 0, len(body), len(body)))
        bodies.append(body)
    head = _V2_HEAD.pack(MAGIC, FORMAT_V2, 0, len(sections)) + b"".join(table) + b"".join(bodies)
    return head + _digest(head, V2_DIGEST_BYTES)


def _v2_error(problem: str, fix: str = "the file is corrupted or hostile: re-export it") -> FormatError:
    return FormatError(f"{problem}; {fix}")


def decode_v2(data, *, max_tensor_bytes: int | None = None) -> dict[int, bytes]:
    """Verify a version-2 file and return its known sections, decompressed: ``{kind: bytes}``.

    Checks, in order: magic, version, flags, section count, the exact file size
    implied by the table, the BLAKE2b digest (before anything else is parsed),
    known compressions, unique kinds, and the decoded sizes against the decode
    budget (``64 x file size + 1 MiB`` unless ``max_tensor_bytes``) before any
    decompression. Every failure is a :class:`FormatError`.
    """
    view = memoryview(data).cast("B")
    size = len(view)
    if size == 0:
        raise FormatError("empty file: it is not a .finr file (was the export interrupted?)")
    if bytes(view[: min(size, len(MAGIC))]) != MAGIC[: min(size, len(MAGIC))]:
        _check_prefix(bytes(view[:PREFIX_BYTES]), size)  # the v1 path words the bad-magic hints
    if size < _V2_HEAD.size + V2_DIGEST_BYTES:
        raise _v2_error(f"truncated file: {size} bytes is shorter than the smallest .finr v2 file",
                        "re-export or re-download it")
    _, version, flags, count = _V2_HEAD.unpack_from(view)
    if version != FORMAT_V2:
        raise _v2_error(f"not a .finr version 2 file (version {version})", "read it with codec.read_field")
    if flags != 0 or bytes(view[13:16]) != b"\0\0\0":
        raise _v2_error(f"unknown .finr v2 flags 0x{flags:04x}", "upgrade finr3d, or the file is corrupted")
    if not 1 <= count <= MAX_SECTIONS:
        raise _v2_error(f"{count} sections (1 to {MAX_SECTIONS} allowed)")
    table_end = _V2_HEAD.size + _V2_SECTION.size * count
    if size < table_end + V2_DIGEST_BYTES:
        raise _v2_error(f"truncated file: {size} bytes cannot hold a {count}-section table",
                        "re-export or re-download it")
    entries, stored_total = [], 0
    for i in range(count):
        kind, comp, reserved, stored, decoded = _V2_SECTION.unpack_from(view, _V2_HEAD.size + i * _V2_SECTION.size)
        entries.append((kind, comp, reserved, stored, decoded))
        stored_total += stored
    expected = table_end + stored_total + V2_DIGEST_BYTES
    if size < expected:
        raise _v2_error(f"truncated file: expected {expected} bytes, found {size}", "re-export or re-download it")
    if size > expected:
        raise _v2_error(f"{size - expected} unexpected bytes after the end of the .finr data")
    if _digest(view[: size - V2_DIGEST_BYTES], V2_DIGEST_BYTES) != view[size - V2_DIGEST_BYTES:]:
        raise FormatError("checksum mismatch: the file is corrupted; re-export or re-download it")
    budget = MAX_EXPANSION * size + EXPANSION_SLACK if max_tensor_bytes is None else max_tensor_bytes
    out, at, decoded_total = {}, table_end, 0
    for kind, comp, reserved, stored, decoded in entries:
        body = view[at: at + stored]
        at += stored
        if reserved:
            raise _v2_error(f"section {kind}: reserved bits 0x{reserved:04x} are set")
        if kind in out:
            raise _v2_error(f"section kind {kind} appears twice")
        if kind not in SECTION_NAMES:
            if kind >= 128:
                continue  # optional, unknown to this reader: skipped
            raise _v2_error(f"unknown required section kind {kind}", "the file is newer: upgrade finr3d")
        if comp not in (STORE, ZSTD, ZSTD_DICT):
            raise _v2_error(f"section {SECTION_NAMES[kind]}: unknown compression {comp}", "upgrade finr3d")
        decoded_total += decoded
        if decoded_total > budget:
            raise FormatError(
                f"the sections decode to more than {budget} bytes from a {size}-byte file (a decompression "
                "bomb, or a corrupted table); if you trust this file, pass max_tensor_bytes= with a larger budget")
        if comp == STORE:
            if decoded != stored:
                raise _v2_error(f"section {SECTION_NAMES[kind]}: stored and decoded lengths differ")
            out[kind] = bytes(body)
        else:
            out[kind] = _decompress(body, decoded, _meta_dict() if comp == ZSTD_DICT else None)
    if SECTION_FIELD not in out:
        raise _v2_error("the file has no FIELD section")
    if (SECTION_CODES in out) == (SECTION_WEIGHTS in out):
        raise _v2_error("the file needs exactly one of a CODES and a WEIGHTS section")
    return out


@dataclass
class FieldFile:
    """A decoded ``.finr`` field of either version (what :func:`read_field` returns).

    ``spec``: the essentials (:class:`finr3d.compact.FieldSpec`); ``compact``: the
    cosine-coefficient form (or None); ``weights``: ``(header, tensors)`` of the
    per-axis networks (editable files and version 1; or None); ``detail``: the
    LocalDetail section bytes (or None); ``meta``: the optional metadata (dict).
    """

    version: int
    spec: object
    compact: object
    weights: object
    detail: object
    meta: dict
    file_bytes: int
    sections: dict
    #: the parsed detail section (:func:`_load_detail`), kept so that slab-by-slab decoders parse it once
    detail_object: object = dataclasses.field(default=None, repr=False, compare=False)


def _spec_from_header(header: dict):
    from finr3d import compact, profiles

    try:
        target = header.get("target") or {}
        ndim, channels = int(header["ndim"]), int(header["channels"])
        bounds = np.asarray(target.get("bounds") or [[-1.0, 1.0]] * ndim, dtype=np.float64).reshape(ndim, 2)
        modes = [tuple(int(a) for a in m) for m in header["modes"]]
        configs = header["backbone_configs"]
        columns = [int(c["out_dim"]) for c in configs]
        dec = header["decomposition"]
        ranks = [int(r) for r in header["ranks"]]
        bonds = tuple(ranks) if dec == "tt" else ()
        affine = compact.placement_affine(target.get("world_from_normalized"), bounds, ndim)
        return compact.FieldSpec(target.get("kind", header.get("kind", "signal")), dec, ndim, channels, modes,
                                 [0] * len(modes), columns, bounds, float(target.get("value_offset", 0.0)),
                                 float(target.get("value_scale", 1.0)), np.zeros(channels, np.float32), 0.0,
                                 (compact.FLAG_AFFINE if affine is not None else 0)
                                 | (compact.FLAG_TANH if profiles.is_tanh(target) else 0)
                                 | (compact.FLAG_TRIM if target.get("kind") == "sdf" and target.get("trim") else 0),
                                 bonds, affine)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise FormatError(f"the field header is invalid ({type(exc).__name__}: {exc}); re-export the file") from exc


def _weights_spec(header: dict):
    """The FieldSpec of a weights header (version 1 or an editable version 2), None when it is incomplete.

    Every key present is checked by :func:`finr3d.header_schema.validate_field_meta` first (a FormatError
    naming it); an incomplete header still decodes, so ``finr3d info`` can say what it lacks, and
    :func:`_complete` refuses it where a field is evaluated.
    """
    from finr3d.header_schema import field_problems, validate_field_meta

    validate_field_meta(header, partial=True)
    if any(p.startswith("missing ") for p in field_problems(header)):
        return None
    return _spec_from_header(header)


def _complete(ff: FieldFile) -> FieldFile:
    """``ff`` when it holds a whole field; a FormatError naming what a weights header lacks otherwise."""
    if ff.weights is not None:
        from finr3d.header_schema import validate_field_meta

        validate_field_meta(ff.weights[0])
    return ff


def decode_field(data, *, max_tensor_bytes: int | None = None) -> FieldFile:
    """Decode a ``.finr`` file of version 1 or 2 (bytes) into a :class:`FieldFile`."""
    from finr3d import compact

    view = memoryview(data).cast("B")
    version = struct.unpack_from("<H", view, 8)[0] if len(view) >= 10 and bytes(view[:8]) == MAGIC else 1
    if version != FORMAT_V2:
        header, tensors = decode(data, max_tensor_bytes=max_tensor_bytes)
        spec = _weights_spec(header)
        if spec is not None and "bias" in tensors:
            spec.bias = np.asarray(tensors["bias"], np.float32).reshape(-1)
        return FieldFile(1, spec, None, (header, tensors), None, header, len(view), {})
    sections = decode_v2(view, max_tensor_bytes=max_tensor_bytes)
    spec = compact.unpack_field(sections[SECTION_FIELD])
    meta = {}
    if SECTION_META in sections:
        raw = sections[SECTION_META]
        if len(raw) > MAX_META_BYTES:
            raise FormatError(f"META section is {len(raw)} bytes (limit {MAX_META_BYTES}); the file is hostile")
        meta = _parse_json(raw)
        from finr3d.header_schema import validate_field_meta

        # what is present is checked like a version-1 header (types, ranges), before anything reads it
        validate_field_meta(meta, partial=True)
    comp = weights = None
    if SECTION_CODES in sections:
        if not spec.flags & compact.FLAG_COMPACT:
            raise FormatError("the FIELD section does not declare the CODES section; re-export the file")
        raw = sections[SECTION_CODES]
        if not raw:
            raise FormatError("empty CODES section; re-export the file")
        budget = compact_budget(len(view)) if max_tensor_bytes is None else max_tensor_bytes
        if 8 * compact.decoded_values(spec) > budget:
            raise FormatError(f"the CODES section declares {compact.decoded_values(spec):,} values, over the decode "
                              "budget; if you trust this file, pass max_tensor_bytes= with a larger budget")
        comp = compact.decode_codes_section(spec, memoryview(raw)[1:], raw[0])
    else:
        if spec.flags & compact.FLAG_COMPACT:
            raise FormatError("the FIELD section declares a CODES section the file lacks; re-export the file")
        weights = decode(sections[SECTION_WEIGHTS], max_tensor_bytes=max_tensor_bytes)
        _weights_spec(weights[0])  # the embedded header is checked like a version-1 one
        if not meta:
            meta = weights[0]
    return FieldFile(2, spec, comp, weights, sections.get(SECTION_DETAIL), meta, len(view), sections)


def read_field(path, *, max_tensor_bytes: int | None = None) -> FieldFile:
    """Read a ``.finr`` file of version 1 or 2; see :func:`decode_field`."""
    path = _check_readable(path)
    with open(path, "rb") as handle:
        data = handle.read()
    return decode_field(data, max_tensor_bytes=max_tensor_bytes)


def write_bytes(path, blob: bytes, *, overwrite: bool = True) -> int:
    """Write already-encoded bytes atomically (temporary file, fsync, rename); returns the byte count."""
    return atomic_write_bytes(path, bytes(blob), overwrite=overwrite, durable=True)


# ---------------------------------------------------------------------------
# The numpy-only decoder
# ---------------------------------------------------------------------------
def _prefix_of(ff: FieldFile, rank):
    """Ranks of the prefix model (clipped to the stored ranks), as the torch field's ``prefix``."""
    spec = ff.spec
    dec = spec.decomposition
    full = tuple(spec.bonds) if dec == "tt" else (
        (spec.columns[0],) if dec == "cp" else tuple(spec.columns))
    if ff.weights is not None:
        full = tuple(int(r) for r in ff.weights[0]["ranks"])
    if rank is None:
        return full
    if dec == "tt":
        if isinstance(rank, (int, np.integer)):
            return tuple(min(int(rank), r) for r in full[:-1]) + (full[-1],)
        rank = tuple(int(r) for r in rank)
        if len(rank) == len(full) - 1:
            rank = rank + (full[-1],)
    elif dec == "cp" and not isinstance(rank, (int, np.integer)):
        rank = min(int(r) for r in rank)
    if isinstance(rank, (int, np.integer)):
        if rank < 1:
            raise ValueError(f"rank must be at least 1, got {rank}")
        return tuple(min(int(rank), r) for r in full)
    rank = tuple(int(r) for r in rank)
    if len(rank) != len(full) or any(r < 1 for r in rank):
        raise ValueError(f"{dec} expects {len(full)} positive ranks, got {rank}")
    return tuple(min(r, t) for r, t in zip(rank, full))


def _feature_index(dec, full, prefix, m):
    if dec == "cp":
        return np.arange(prefix[0])
    if dec == "tucker":
        return np.arange(prefix[m])
    fb, cb = (1,) + tuple(full), (1,) + tuple(prefix)
    return (np.arange(cb[m])[:, None] * fb[m + 1] + np.arange(cb[m + 1])[None, :]).reshape(-1)


def _mixing_prefix(dec, mixing, prefix):
    if dec == "tucker":
        return mixing[tuple(slice(0, r) for r in prefix)]
    if dec == "cp":
        return mixing[: prefix[0]]
    return mixing[: prefix[-1]]


class _Evaluator:
    """Mode features and contraction of a decoded file, in numpy (float64)."""

    def __init__(self, ff: FieldFile, rank=None):
        from finr3d import compact

        self.ff, self.spec = ff, ff.spec
        self.dec = ff.spec.decomposition
        self.prefix = _prefix_of(ff, rank)
        if ff.compact is not None:
            self.full = ff.compact.ranks
            self.mixing = ff.compact.mixing
            self.bias = ff.compact.bias
        else:
            header, tensors = ff.weights
            self.full = tuple(int(r) for r in header["ranks"])
            self.mixing = np.asarray(tensors.get("blocks.0.core", tensors.get("blocks.0.weights")), np.float64)
            self.bias = np.asarray(tensors["bias"], np.float64)
            if len(header.get("backbone_configs", [])) and not header.get("field_config", {}).get("channel_factor", True) \
                    and int(header["channels"]) > 1:
                raise FormatError("decode_grid does not evaluate independent per-channel blocks; use finr3d.load")
        self.prefix = tuple(min(p, f) for p, f in zip(self.prefix, self.full))
        self.mixing_p = _mixing_prefix(self.dec, self.mixing, self.prefix)
        self.compact_mod = compact

    def features(self, m: int, x: np.ndarray) -> np.ndarray:
        """Mode m's prefix features at (n, len(axes)) coordinates."""
        if self.ff.compact is not None:
            f = self.ff.compact.features(m, x[:, 0])
        else:
            header, tensors = self.ff.weights
            pre = f"nets.{m}."
            sub = {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}
            f = self.compact_mod.network_features(header["backbone_configs"][m], sub, x)
        if self.prefix != self.full:
            f = f[:, _feature_index(self.dec, self.full, self.prefix, m)]
        return f

    def grid(self, axes, chunk_elements: int = 1 << 22) -> np.ndarray:
        """float32 (n_0, ..., n_{d-1}, C); evaluated in slabs of the first mode so memory stays bounded."""
        modes = self.spec.modes
        feats = []
        for m, mode in enumerate(modes):
            if len(mode) == 1:
                x = np.asarray(axes[mode[0]], np.float64).reshape(-1, 1)
            else:
                mesh = np.meshgrid(*[axes[a] for a in mode], indexing="ij")
                x = np.stack([g.reshape(-1) for g in mesh], axis=-1).astype(np.float64)
            feats.append(self.features(m, x))
        bonds = self.prefix if self.dec == "tt" else ()
        order = [a for mode in modes for a in mode]
        sizes = [len(a) for a in axes]
        channels = self.mixing_p.shape[-1]
        out = np.empty(sizes + [channels], np.float32)
        rows = feats[0].shape[0]
        per_row = max(1, math.prod(f.shape[0] for f in feats[1:]) * channels)
        step = rows if len(modes[0]) != 1 else max(1, min(rows, chunk_elements // per_row))
        perm = [order.index(a) for a in range(len(order))] + [len(order)]
        for start in range(0, rows, step):
            part = self.compact_mod.contract_grid(self.dec, [feats[0][start:start + step]] + feats[1:],
                                                  self.mixing_p, bonds) + self.bias
            sub = [len(axes[a]) for a in order]
            if len(modes[0]) == 1:
                sub[0] = part.shape[0]
            part = part.reshape(*sub, channels)
            if order != sorted(order):
                part = np.transpose(part, perm)
            index = [slice(None)] * len(sizes)
            if len(modes[0]) == 1:
                index[modes[0][0]] = slice(start, start + step)
            out[tuple(index)] = part
        return out

    def points(self, x: np.ndarray) -> np.ndarray:
        feats = [self.features(m, x[:, list(mode)]) for m, mode in enumerate(self.spec.modes)]
        bonds = self.prefix if self.dec == "tt" else ()
        return self.compact_mod.contract_points(self.dec, feats, self.mixing_p, bonds) + self.bias


def _load_detail(ff: FieldFile):
    """The detail section as an object: a sparse :class:`~finr3d.local_detail.LocalDetail` (bounded by the
    file's size, like every other section) or a :class:`~finr3d.lattice_residual.LatticeResidual`, which holds
    a value for every node of its lattice by design, so its decoded size is checked against the memory limit
    instead (:func:`finr3d.header_schema.check_memory`: refused up front with the size it needs)."""
    if ff.detail is None:
        return None
    if ff.detail_object is None:
        from finr3d import lattice_residual

        if bytes(ff.detail[:4]) == lattice_residual.MAGIC:
            from finr3d.header_schema import check_memory, memory_limit

            check_memory(lattice_residual.decoded_bytes(ff.detail), "decoding the file's lattice residual")
            ff.detail_object = lattice_residual.LatticeResidual.from_bytes(ff.detail,
                                                                           max_decoded_bytes=memory_limit())
        else:
            from finr3d.local_detail import LocalDetail

            ff.detail_object = LocalDetail.from_bytes(ff.detail, max_decoded_bytes=MAX_EXPANSION * ff.file_bytes
                                                      + EXPANSION_SLACK)
    return ff.detail_object


def _open_field(path, max_tensor_bytes: int | None) -> FieldFile:
    """A whole :class:`FieldFile` from a path, bytes or a decoded FieldFile (the numpy decoders' input)."""
    ff = path if isinstance(path, FieldFile) else (
        decode_field(path, max_tensor_bytes=max_tensor_bytes) if isinstance(path, (bytes, bytearray, memoryview))
        else read_field(path, max_tensor_bytes=max_tensor_bytes))
    return _complete(ff)


def decode_grid(path, resolution=256, rank=None, bounds=None, *, detail: bool = True, squeeze: bool = True,
                max_tensor_bytes: int | None = None) -> np.ndarray:
    """Evaluate a ``.finr`` file on a grid with numpy alone (no torch).

    Parameters
    ----------
    path : str, os.PathLike, or bytes
        A ``.finr`` file of version 1 or 2 (or its bytes).
    resolution : int or sequence of int
        Lattice points per axis.
    rank : int or tuple, optional
        The rank-prefix model (as ``FactorizedField.grid(rank=...)``).
    bounds : (d, 2) array_like, optional
        World box to sample (default: the fitted box, i.e. ``[-1, 1]`` per normalized axis).
    detail : bool
        Add the local-detail section when the file has one.

    Returns
    -------
    (n_0, ..., n_{d-1}[, C]) float32 array in field units, equal to
    ``finr3d.load(path).grid(resolution, rank=rank)`` to float32 tolerance.
    """
    ff = _open_field(path, max_tensor_bytes)
    spec = ff.spec
    res = [int(resolution)] * spec.ndim if isinstance(resolution, (int, np.integer)) else [int(r) for r in resolution]
    if len(res) != spec.ndim or any(not 1 <= r <= 65536 for r in res):
        raise ValueError(f"resolution must give 1..65536 points for each of the {spec.ndim} axes, got {resolution!r}")
    if math.prod(res) * spec.channels > 1 << 31:
        raise ValueError("the grid is too large for one array; decode it in pieces (bounds=)")
    if bounds is None:
        axes = [np.linspace(-1.0, 1.0, r) if r > 1 else np.zeros(1) for r in res]
    elif spec.affine is not None:  # a turned field: a world box is no product of normalized axes
        b = np.asarray(bounds, np.float64).reshape(spec.ndim, 2)
        world = [np.linspace(b[a, 0], b[a, 1], r) if r > 1 else b[a, :1] for a, r in enumerate(res)]
        slab = max(1, (1 << 20) // max(1, math.prod(res[1:])))
        out = np.concatenate([
            decode_points(ff, np.stack(np.meshgrid(world[0][i:i + slab], *world[1:], indexing="ij"), -1)
                          .reshape(-1, spec.ndim), rank, detail=detail, squeeze=False)
            .reshape(len(world[0][i:i + slab]), *res[1:], spec.channels)
            for i in range(0, res[0], slab)], axis=0)
        return out[..., 0] if squeeze and spec.channels == 1 else out
    else:
        b = np.asarray(bounds, np.float64).reshape(spec.ndim, 2)
        axes = [_to_normalized_axis(spec, a, np.linspace(b[a, 0], b[a, 1], r) if r > 1 else b[a, :1])
                for a, r in enumerate(res)]
    return _decode_axes(ff, axes, rank, detail, squeeze)


def decode_axes(path, axes, rank=None, *, detail: bool = True, squeeze: bool = True,
                max_tensor_bytes: int | None = None) -> np.ndarray:
    """Evaluate a ``.finr`` file (path, bytes or a decoded :class:`FieldFile`) with numpy alone on the outer
    product of per-axis coordinates ``axes`` (normalized, ``[-1, 1]``: sample ``i`` of an axis of ``N`` stored
    samples sits at ``-1 + 2 i / (N - 1)``), e.g. an index sub-lattice of a large volume. Returns
    ``(len(axes[0]), ..., [C])`` float32 in field units, as :func:`decode_grid`."""
    ff = _open_field(path, max_tensor_bytes)
    axes = [np.asarray(a, np.float64).reshape(-1) for a in axes]
    if len(axes) != ff.spec.ndim:
        raise ValueError(f"give coordinates for each of the {ff.spec.ndim} axes, got {len(axes)}")
    return _decode_axes(ff, axes, rank, detail, squeeze)


def _decode_axes(ff: FieldFile, axes: list, rank, detail: bool, squeeze: bool) -> np.ndarray:
    out = _Evaluator(ff, rank).grid(axes)
    if detail and ff.detail is not None:
        out += _load_detail(ff).grid(axes).astype(np.float32)[..., None]
    if squeeze and ff.spec.channels == 1:
        out = out[..., 0]
    return out


def _to_normalized_axis(spec, a: int, world: np.ndarray) -> np.ndarray:
    """World coordinates along axis ``a`` of an axis-aligned placement to ``[-1, 1]``."""
    lo, hi = spec.bounds[a]
    return (world - lo) * (2.0 / (hi - lo)) - 1.0


def decode_points(path, points, rank=None, *, detail: bool = True, normalized: bool = False,
                  squeeze: bool = True, max_tensor_bytes: int | None = None) -> np.ndarray:
    """Evaluate a ``.finr`` file at world-space points with numpy alone (no torch).

    ``points`` is (P, d) in world units (the fitted target's coordinates; pass
    ``normalized=True`` for ``[-1, 1]`` coordinates). Returns (P,) float32 for a
    one-channel field (``squeeze=False``: (P, C)), in field units, as
    ``finr3d.load(path).points(normalized_points)``.
    """
    ff = _open_field(path, max_tensor_bytes)
    x = np.asarray(points, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != ff.spec.ndim:
        raise ValueError(f"points must be a (P, {ff.spec.ndim}) array, got shape {x.shape}")
    if not normalized:
        x = ff.spec.to_normalized(x)
    ev = _Evaluator(ff, rank)
    out = np.concatenate([ev.points(x[i:i + 65536]) for i in range(0, len(x), 65536)] or
                         [np.zeros((0, ff.spec.channels))], axis=0)
    if detail and ff.detail is not None and len(x):
        out = out + _load_detail(ff).points(x).reshape(-1, 1)
    out = out.astype(np.float32)
    return out[:, 0] if squeeze and ff.spec.channels == 1 else out


def _file_version(path) -> int:
    with open(_check_readable(path), "rb") as handle:
        head = handle.read(10)
    if len(head) == 10 and head[:8] == MAGIC:
        return struct.unpack_from("<H", head, 8)[0]
    return 1


def compact_target(ff: FieldFile) -> dict:
    """The target description of a compact file: its META ``target`` completed from the FIELD section.

    What the optional metadata leaves out (kind, channels, bounds, value offset and scale, the stored shape:
    one cosine term per stored sample) comes from the FIELD section, which also holds an SDF's placement; a
    volume without one is in voxel units. A META shape that disagrees with the FIELD section is a FormatError.
    """
    from finr3d import compact

    spec = ff.spec
    meta = ff.meta or {}
    target = dict(meta.get("target") if isinstance(meta.get("target"), dict) else {})
    target.setdefault("kind", spec.kind)
    target.setdefault("channels", spec.channels)
    if spec.kind == "sdf":
        target.setdefault("axis_names", ["x", "y", "z"])
    target.setdefault("bounds", spec.bounds.tolist())
    if "shape" not in target and all(k > 0 for k in spec.terms) and len(spec.terms) == spec.ndim:
        target["shape"] = [int(k) for k in spec.terms]  # one cosine term per stored sample (files without metadata)
    shape = target.get("shape")
    if shape is not None and (not isinstance(shape, list) or len(shape) != spec.ndim):
        raise FormatError(f"the META target.shape {str(shape)[:60]} does not match the FIELD section's {spec.ndim} "
                          "axes; the file is damaged or hostile: re-export it")
    if shape is not None and len(spec.modes) == spec.ndim and all(k > 0 for k in spec.terms):
        # a compact file stores one cosine term per stored sample (at most MAX_TERMS): the stored shape follows
        for n, k in zip(shape, spec.terms):
            if not isinstance(n, int) or (n != k if k < compact.MAX_TERMS else n < k):
                raise FormatError(f"the META target.shape {str(shape)[:60]} disagrees with the FIELD section's "
                                  f"{list(spec.terms)} stored samples; the file is damaged or hostile: re-export it")
    if spec.kind == "volume" and spec.ndim in (3, 4) and "world_from_normalized" not in target and "shape" in target:
        from finr3d.placement import voxel_frame

        target["world_from_normalized"] = voxel_frame(target["shape"]).tolist()  # voxel units, x first
    target.setdefault("value_offset", spec.value_offset)
    target.setdefault("value_scale", spec.value_scale)
    if spec.kind == "sdf":  # the FIELD section's profile flag decides (finr3d.profiles)
        target["profile"] = "tanh" if spec.flags & compact.FLAG_TANH else "clamp"
        target["trim"] = bool(spec.flags & compact.FLAG_TRIM)
    if spec.kind == "sdf" or spec.affine is not None:
        target["world_from_normalized"] = spec.world_from_normalized().tolist()  # the FIELD section's placement
    return target


def describe_field(ff: FieldFile) -> dict:
    """A version-1-style metadata dict of a decoded file (kind, ndim, ranks, parameters, target, history, ...)."""
    if ff.version == 1 or ff.compact is None:
        meta = dict(ff.weights[0] if ff.weights is not None else ff.meta)
        meta.update(format_version=ff.version, file_bytes=ff.file_bytes,
                    storage="weights (editable)" if ff.version == 2 else "weights")
        if ff.detail is not None:
            meta["detail_bytes"] = len(ff.detail)
        return meta
    spec, cf = ff.spec, ff.compact
    meta = dict(ff.meta or {})
    target = compact_target(ff)
    params = cf.mixing.size + sum(c.size for c in cf.coefficients) + cf.bias.size
    meta.update(
        format="finr3d-field", format_version=2, storage="compact", file_bytes=ff.file_bytes, kind=spec.kind,
        ndim=spec.ndim, channels=spec.channels, modes=[list(m) for m in spec.modes],
        decomposition=spec.decomposition, ranks=list(cf.ranks), backbone="cosine", parameters=int(params),
        cosine_terms=list(spec.terms), step=spec.step, target=target,
        section_bytes={SECTION_NAMES[k]: len(v) for k, v in ff.sections.items() if k in SECTION_NAMES})
    meta.setdefault("history", {})
    return meta


def describe_file(path) -> dict:
    """Read and verify a ``.finr`` file of either version holding a whole field; :func:`describe_field`'s dict.

    A weights header is checked in full (:func:`finr3d.header_schema.validate_field_meta`): a FormatError
    names what is wrong or missing.
    """
    return describe_field(_complete(read_field(path)))
