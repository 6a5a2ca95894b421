"""Between a FactorizedField (torch) and the ``.finr`` bytes of format version 2.

:func:`encode_field` bakes a field's per-axis networks into factor curves on its
stored samples, re-expresses them for rate allocation (:func:`finr3d.compact.prepare`),
quantizes with one step and entropy-codes the result (the CODES section), or,
for an editable file, embeds the version-1 weight blob (the WEIGHTS section).
:func:`load_parts` turns either back into the parts of a FactorizedField
(:meth:`finr3d.field.FactorizedField.from_file` builds it); a compact file
loads as per-axis ``cosine`` backbones holding the coefficients.
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from finr3d import codec, compact, profiles
from finr3d.errors import FormatError

__all__ = ["PRECISION_STEPS", "QUANTIZATION_NAMES", "auto_step", "encode_field", "load_parts", "can_compact",
           "field_spec"]

#: Quantization step (field units) of a compact file for each ``quantization`` name; fp32 is unquantized.
#: Measured on bunny (benchmarks/compact_candidates.py): 2.5e-5 keeps the fitted Chamfer within ~10 %.
PRECISION_STEPS = {"fp32": 0.0, "fp16": 2.5e-5, "int8": 1e-4, "int6": 2e-4, "int4": 5e-4}
#: ``quantization`` names :func:`encode_field` takes: the steps above and ``auto`` (:func:`auto_step`, the default).
QUANTIZATION_NAMES = ("auto", *PRECISION_STEPS)
#: ``auto``: the quantization error a compact SDF file may add, as a share of the fit's own validation loss
#: (``history["metrics"]["loss"]``, a near-surface weighted L1 against the ground truth). At 0.5 the file's
#: Chamfer-L1 is within 2-10 % of the network's (benchmarks/file_accuracy.py; fp16's step added 29-85 %).
AUTO_ERROR_SHARE = 0.5
#: ``auto`` tries fp16's step, then halves it this many times at most.
AUTO_HALVINGS = 4
#: Samples per axis of the lattice ``auto`` compares the quantized and unquantized files on.
AUTO_LATTICE = 48
#: target keys kept in the optional metadata by default (the rest, e.g. the mesh report, with metadata="full")
_LEAN_TARGET_DROP = ("mesh_report", "bounds", "value_offset", "value_scale", "world_from_normalized", "channels",
                     "kind", "axis_names", "profile", "trim")
_LEAN_HISTORY = ("steps", "seconds", "stopped", "metrics", "metric_name", "device", "auto_rank", "target_seconds")


def can_compact(field) -> str | None:
    """None when ``field`` can be stored compactly, else the reason it keeps its network weights."""
    if any(len(m) != 1 for m in field.modes):
        return "a mode covers several axes (its curves are not 1-D)"
    if field.independent:
        return "independent per-channel blocks"
    return None


def _samples_per_axis(field) -> list[int]:
    shape = field.target_info.get("shape")
    out = []
    for a in range(field.ndim):
        n = None
        if isinstance(shape, (list, tuple)) and len(shape) == field.ndim:
            try:
                n = int(shape[a])
            except (TypeError, ValueError):
                n = None
        if n is None:
            n = int(getattr(field.nets[a], "basis", 0) or 256)
        out.append(max(2, min(n, compact.MAX_TERMS)))
    return out


def field_spec(field, *, flags: int = 0, step: float = 0.0, terms=None, columns=None) -> compact.FieldSpec:
    info = field.target_info or {}
    bounds = info.get("bounds")
    bounds = np.asarray(bounds, np.float64).reshape(field.ndim, 2) if bounds is not None else \
        np.tile([-1.0, 1.0], (field.ndim, 1))
    dec = field.config.decomposition
    cols = columns or [int(n.out_dim) for n in field.nets]
    affine = compact.placement_affine(info.get("world_from_normalized"), bounds, field.ndim)
    if affine is not None:
        flags |= compact.FLAG_AFFINE
    if profiles.is_tanh(info):
        flags |= compact.FLAG_TANH
    if info.get("kind") == "sdf" and info.get("trim"):
        flags |= compact.FLAG_TRIM
    return compact.FieldSpec(
        kind=info.get("kind", "signal") if info.get("kind") in compact.KIND_CODES else "signal",
        decomposition=dec, ndim=field.ndim, channels=field.channels, modes=[tuple(m) for m in field.modes],
        terms=list(terms) if terms is not None else [0] * len(field.modes), columns=cols, bounds=bounds,
        value_offset=float(info.get("value_offset", 0.0)), value_scale=float(info.get("value_scale", 1.0)),
        bias=field.bias.detach().float().cpu().numpy().reshape(-1), step=float(step), flags=flags,
        bonds=tuple(field.ranks) if dec == "tt" else (), affine=affine)



def _meta(field, metadata) -> dict | None:
    from finr3d import __version__

    if not metadata:
        return None
    target = dict(field.target_info or {})
    history = {k: v for k, v in (field.history or {}).items() if k not in ("curve", "trained")}
    # what was trained: kept through a load and re-save of a compact file (a move in Blender, a placement edit)
    trained = (field.history or {}).get("trained")
    if not (isinstance(trained, dict) and set(trained) <= {"backbone", "ranks"}):
        trained = {"backbone": field.config.backbone, "ranks": list(field.ranks)}
    if metadata != "full":
        # an SDF's placement is rebuilt from the FIELD section (bounds, or its affine map); another kind's
        # world_from_normalized (a volume's voxel frame, x first) is not, so it stays
        drop = _LEAN_TARGET_DROP if target.get("kind") == "sdf" else tuple(
            k for k in _LEAN_TARGET_DROP if k != "world_from_normalized")
        target = {k: v for k, v in target.items() if k not in drop}
        history = _rounded({k: v for k, v in history.items() if k in _LEAN_HISTORY})
    from finr3d.codec import jsonable as _jsonable

    return _jsonable({"format": "finr3d-field", "library_version": __version__, "target": target,
                      "history": history, "trained": trained})


def _rounded(value, digits: int = 4):
    """Floats of the lean history to ``digits`` significant digits (a report, not data: ~50 bytes a file)."""
    if isinstance(value, float) and math.isfinite(value) and value != 0.0:
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v, digits) for v in value]
    return value


def _meta_section(meta) -> tuple:
    text = json.dumps(meta, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (codec.SECTION_META, text.encode("utf-8"), codec.ZSTD_DICT)


def auto_step(field, model=None, prep=None) -> float:
    """The step ``quantization="auto"`` gives the compact file of ``model`` (``field`` or a prefix of it).

    fp16's step (:data:`PRECISION_STEPS`), made finer for an SDF whose fit is accurate enough for that step to
    show: the coarsest of fp16's step halved 0..:data:`AUTO_HALVINGS` times whose quantization error (the
    file against its unquantized twin on a :data:`AUTO_LATTICE`-point lattice, weighted as the SDF loss weighs
    the surface) is at most :data:`AUTO_ERROR_SHARE` of the fit's validation loss. A field without a recorded
    loss, or of another kind (whose errors dwarf fp16's step), keeps fp16's step.
    """
    model = field if model is None else model
    step = PRECISION_STEPS["fp16"]
    loss = (getattr(field, "history", None) or {}).get("metrics", {}).get("loss")
    kind = (getattr(field, "target_info", None) or {}).get("kind")
    if kind != "sdf" or not isinstance(loss, (int, float)) or not math.isfinite(loss) or loss <= 0:
        return step
    prep = prepared(model) if prep is None else prep
    n = AUTO_LATTICE
    try:
        reference = codec.decode_grid(_compact_blob(model, 0.0, prep), n, squeeze=False, detail=False)
        weight = profiles.surface_weight(reference)  # as the SDF loss the share is of weighs the surface
        for _ in range(AUTO_HALVINGS):
            values = codec.decode_grid(_compact_blob(model, step, prep), n, squeeze=False, detail=False)
            error = float((weight * np.abs(values - reference)).sum() / weight.sum())
            if error <= AUTO_ERROR_SHARE * loss:
                return step
            step /= 2
    except FormatError:  # a model a reader would refuse at this step: encode_field's own check says why
        pass
    return step


def _compact_blob(model, step: float, prep) -> bytes:
    return codec.encode_v2(_compact_sections(model, float(step), prep))


def encode_field(field, *, rank=None, quantization="auto", editable=False, detail=True, step=None,
                 metadata=True) -> bytes:
    """The bytes of the ``.finr`` file ``field.save(rank=..., ...)`` writes."""
    if quantization not in QUANTIZATION_NAMES:
        raise ValueError(f"unknown quantization {quantization!r}; use one of {QUANTIZATION_NAMES}")
    model = field if rank is None else field.truncate(rank)
    reason = None if editable else can_compact(model)
    sections = []
    if editable or reason:
        quantization = "fp16" if quantization == "auto" else quantization  # the weights: fp16 as before
        if quantization not in codec.QUANTIZATIONS:
            raise ValueError(f"unknown quantization {quantization!r}; use one of {codec.QUANTIZATIONS}")
        header, tensors = model.to_parts()
        weights = codec.encode(header, tensors, quantization=quantization, keep_fp32=model.precision_critical())
        sections.append((codec.SECTION_FIELD, compact.pack_field(field_spec(model)), False))
        sections.append((codec.SECTION_WEIGHTS, weights, False))
    else:
        prep = prepared(model)
        if step is None:
            step = auto_step(field, model, prep) if quantization == "auto" else PRECISION_STEPS[quantization]
        if not (isinstance(step, (int, float)) and math.isfinite(step) and step >= 0):
            raise ValueError(f"step must be a finite number >= 0, got {step!r}")
        sections += _compact_sections(model, float(step), prep)
        meta = _meta(model, metadata)
        if meta is not None:
            sections.append(_meta_section(meta))
    if detail and getattr(model, "detail", None) is not None:
        sections.append((codec.SECTION_DETAIL, model.detail.to_bytes(), False))
    blob = codec.encode_v2(sections)
    if not (editable or reason):
        _check_loadable(sections[0][1], len(blob))
    return blob


def _check_loadable(field_section: bytes, file_bytes: int) -> None:
    """Refuse to write a compact file that a reader would refuse by its default decode budget."""
    values = compact.decoded_values(compact.unpack_field(field_section))
    if 8 * values > codec.compact_budget(file_bytes):
        raise ValueError(f"this field's compact file would decode {values:,} values from {file_bytes:,} bytes, "
                         "more than a reader accepts from a file that size; save a lower rank, or "
                         "editable=True (the network weights)")


@torch.no_grad()
def bake_samples(model) -> list[np.ndarray]:
    """Each mode's features on its stored samples ``linspace(-1, 1, N_m)``: (N_m, D_m) float64."""
    from finr3d.coords import lattice

    out = []
    was = model.training
    model.eval()
    try:
        for n, net in zip(_samples_per_axis(model), model.nets):
            x = lattice(n, device=model.device).reshape(-1, 1)
            out.append(net(x).double().cpu().numpy())
    finally:
        model.train(was)
    return out


def prepared(model):
    """Baked, rate-allocation-ready (factor samples, mixing) of ``model`` (:func:`finr3d.compact.prepare`)."""
    dec = model.config.decomposition
    samples = bake_samples(model)
    mixing = model.blocks[0].mixing_parameter().detach().double().cpu().numpy()
    return compact.prepare(dec, samples, mixing, tuple(model.ranks) if dec == "tt" else ())


def encode_steps(model, steps, *, metadata=True, detail=True) -> list[bytes]:
    """The compact files of ``model`` at each quantization step, baking and preparing it once."""
    if can_compact(model):
        raise ValueError(f"this field cannot be stored compactly: {can_compact(model)}")
    prep = prepared(model)
    meta = _meta(model, metadata)
    out = []
    for step in steps:
        sections = _compact_sections(model, float(step), prep)
        if meta is not None:
            sections.append(_meta_section(meta))
        if detail and getattr(model, "detail", None) is not None:
            sections.append((codec.SECTION_DETAIL, model.detail.to_bytes(), False))
        out.append(codec.encode_v2(sections))
        _check_loadable(sections[0][1], len(out[-1]))
    return out


def _compact_sections(model, step: float, prep=None) -> list:
    factors, mixing = prep if prep is not None else prepared(model)
    if step == 0.0:
        coefs = [compact.bake(f) for f in factors]
        spec = field_spec(model, flags=compact.FLAG_COMPACT | compact.FLAG_RAW, step=0.0,
                          terms=[c.shape[0] for c in coefs], columns=[c.shape[1] for c in coefs])
        body = bytes([compact.CODER_RAW]) + compact.encode_raw_section(mixing, coefs)
    else:
        spec = field_spec(model, flags=compact.FLAG_COMPACT, step=step, terms=[f.shape[0] for f in factors],
                          columns=[f.shape[1] for f in factors])
        spec, q, codes = compact.quantize(spec, factors, mixing)
        coder = compact.DEFAULT_CODER if compact.have_ans() else compact.CODER_ZSTD
        body = bytes([coder]) + compact.encode_codes_section(spec, q, codes, coder)
    # zstd in the container where it pays: the ANS words are near random, but the group scale bytes (about
    # 8 % of an SDF file at the steps near Draco's error) and the raw float32 of step=0 are not
    # (benchmarks/compression.py: 3-5 % of the file); encode_v2 stores the section when it does not
    return [(codec.SECTION_FIELD, compact.pack_field(spec), False), (codec.SECTION_CODES, body, True)]


def load_parts(path_or_bytes):
    """``(header, tensors, ff)`` of a ``.finr`` file of version 1 or 2 (path or bytes).

    ``header`` and ``tensors`` are what :meth:`finr3d.field.FactorizedField.from_parts` builds a field from
    (a compact file's coefficients become per-axis ``cosine`` backbones); ``ff`` is the decoded
    :class:`finr3d.codec.FieldFile` (its ``detail`` section is attached by the caller).
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        ff = codec.decode_field(path_or_bytes)
    else:
        ff = codec.read_field(path_or_bytes)
    if ff.weights is not None:
        return ff.weights[0], ff.weights[1], ff
    return (*_compact_parts(ff), ff)


def _compact_parts(ff):
    spec, cf = ff.spec, ff.compact
    meta = ff.meta or {}
    target = codec.compact_target(ff)
    ranks = list(cf.ranks)
    rank = ranks if spec.decomposition != "cp" else ranks[0]
    header = {
        "format": "finr3d-field", "ndim": spec.ndim, "channels": spec.channels,
        "field_config": {"decomposition": spec.decomposition, "rank": rank, "backbone": "cosine", "width": 1,
                         "depth": 0, "modes": [list(m) for m in spec.modes], "channel_factor": True,
                         "basis": int(max(spec.terms))},
        "backbone_configs": [{"name": "cosine", "in_dim": 1, "out_dim": int(c.shape[1]), "width": 1, "depth": 0,
                              "basis": int(c.shape[0])} for c in cf.coefficients],
        "target": target,
        "history": dict(meta.get("history")) if isinstance(meta.get("history"), dict) else {},
    }
    if isinstance(meta.get("trained"), dict):
        header["history"]["trained"] = meta["trained"]
    from finr3d.header_schema import validate_field_meta

    validate_field_meta(header)  # the META section's target against the FIELD section (e.g. shape per axis)
    tensors = {}
    for m, c in enumerate(cf.coefficients):
        tensors[f"nets.{m}.out.weight"] = np.ascontiguousarray(c.T, np.float32)
        tensors[f"nets.{m}.out.bias"] = np.zeros(c.shape[1], np.float32)
    key = "blocks.0.core" if spec.decomposition == "tucker" else "blocks.0.weights"
    tensors[key] = np.asarray(cf.mixing, np.float32)
    tensors["bias"] = np.asarray(cf.bias, np.float32)
    return header, tensors
