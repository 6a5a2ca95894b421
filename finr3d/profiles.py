"""How an SDF field's values map to distances: the value profile (numpy only, no torch).

An SDF field does not predict the distance itself but a bounded profile of it,
in field units:

- ``clamp`` (every file written before the tanh profile, 2026-12-01): ``v = clip(d / t, -1, 1)``, with ``t``
  the truncation. The clamp has a kink on the two offset surfaces ``|d| = t``,
  which wrap the whole shape: a low-rank (Tucker) model pays for them with rank
  and coefficients that do nothing for the surface.
- ``tanh`` (the default): ``v = tanh(d / t)``, from exact distances up to
  :data:`TANH_REACH` ``t`` (``|v| <= tanh(2) = 0.964``, where the profile is
  already flat). It is smooth everywhere, has the same slope at the surface
  (``1 / t``), and its zero level set is the same surface. On the six shared
  meshes a HOSVD of the tanh grid codes 23-48 % smaller than the clamped grid
  at equal Chamfer and reaches a lower error at equal rank
  (``benchmarks/profiles.py``, RESULTS.md 'Compression').

``value_scale`` (world distance per field unit at the surface, ``t`` times the
normalized-to-world scale) and ``value_offset`` are stored as before; the
profile maps between them and field values.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["PROFILES", "DEFAULT_PROFILE", "TANH_REACH", "check", "saturation", "reach", "to_field", "to_distance",
           "profile_of", "is_tanh", "to_signal", "from_signal", "surface_weight"]

PROFILES = ("clamp", "tanh")
DEFAULT_PROFILE = "tanh"
#: exact distances of a tanh profile reach this many truncations (the grid is clamped there: tanh(2) = 0.964)
TANH_REACH = 2.0


def surface_weight(values):
    """``1 + 4 exp(-|v| / 0.25)`` of field values ``v``: how much an SDF's loss weighs each sample, most at the
    surface (``finr3d.sdf.SDFTarget.loss``; ``compact_io.auto_step`` weighs quantization errors the same way).
    Numpy arrays or torch tensors (their own ``exp``), of the same type."""
    x = -abs(values) / 0.25
    return 1.0 + 4.0 * (x.exp() if hasattr(x, "exp") else np.exp(x))


def check(profile: str) -> str:
    """``profile`` when it is one of :data:`PROFILES`, else a ValueError naming them."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    return profile


def reach(profile: str) -> float:
    """Distance, in truncations, up to which the ground truth is exact (and where it is clamped)."""
    return TANH_REACH if check(profile) == "tanh" else 1.0


def saturation(profile: str) -> float:
    """The field value the clamped ground truth takes far from the surface (1 for clamp, tanh(2) for tanh)."""
    return math.tanh(TANH_REACH) if check(profile) == "tanh" else 1.0


def to_field(distance, truncation: float, profile: str):
    """Field values of normalized distances (``distance`` already clamped at ``reach(profile) truncation``)."""
    d = np.asarray(distance) / np.asarray(truncation, dtype=np.asarray(distance).dtype)
    return np.tanh(d) if check(profile) == "tanh" else np.clip(d, -1.0, 1.0)


def to_distance(values, truncation: float, profile: str):
    """Normalized distances of field values (the inverse of :func:`to_field` inside its range).

    A tanh value at or beyond the saturation maps to ``reach`` truncations: the profile carries no
    distance information beyond the clamp, and ``atanh`` of values near +-1 is not finite.
    """
    v = np.asarray(values)
    if check(profile) == "clamp":
        return v * np.asarray(truncation, dtype=v.dtype)
    top = np.asarray(math.tanh(TANH_REACH), dtype=v.dtype)
    return np.arctanh(np.clip(v, -top, top)) * np.asarray(truncation, dtype=v.dtype)


def profile_of(info) -> str:
    """The profile of a target description (``target_info``): files without one are ``clamp``."""
    if info is None:
        return "clamp"
    value = info.get("profile", "clamp") if isinstance(info, dict) else "clamp"
    return value if value in PROFILES else "clamp"


def is_tanh(info) -> bool:
    """Whether a target description is an SDF with the tanh profile (its values need :func:`to_distance`)."""
    return bool(info) and info.get("kind") == "sdf" and profile_of(info) == "tanh"


def to_signal(values, info):
    """Field values to the signal's units (``value * value_scale + value_offset``; an SDF's tanh profile
    first maps back to distance at the surface's slope)."""
    info = info or {}
    scale = np.float32(info.get("value_scale", 1.0))
    offset = np.float32(info.get("value_offset", 0.0))
    v = np.asarray(values)
    if is_tanh(info):
        v = to_distance(v, np.float32(1.0), "tanh").astype(v.dtype, copy=False)
    return v * scale + offset


def from_signal(level: float, info) -> float:
    """A level in the signal's units (e.g. an SDF offset in world units) as a field value."""
    info = info or {}
    scale = float(info.get("value_scale", 1.0)) or 1.0
    x = (float(level) - float(info.get("value_offset", 0.0))) / scale
    if is_tanh(info):
        return math.tanh(x)
    return x
