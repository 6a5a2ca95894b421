"""Recommended settings per kind of signal: one table for the Python API, the CLI and the Blender panel.

A :class:`Preset` holds the field architecture and the fit settings that the
measurements in ``benchmarks/RESULTS.md`` recommend for one kind (mesh SDFs,
volumes, images, video). :func:`finr3d.fit` fills every setting the caller
left unset from the target's preset; ``finr3d fit --help`` prints the table;
the Blender add-on passes a setting to the fit only when the user changed it,
so a panel fit gets the mesh preset too.

This module needs the standard library alone (the Blender panel reads it
without torch).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

__all__ = ["Preset", "PRESETS", "GENERIC_PRESET", "TIMED_VOLUME_PRESET", "COMPACT_TIMED_VOLUME", "goal_structure", "VIDEO_LAYOUT_PRESETS", "KINDS", "preset_for", "field_settings", "fit_settings", "default_video_rank",
           "help_by_kind", "VIDEO_MAX_RANK", "VIDEO_MIN_RATIO"]

#: The kinds of signal, in the order help text lists them; "sdf" is a mesh's signed distance.
KINDS = ("sdf", "image", "volume", "video")
_KIND_NAMES = {"sdf": "meshes", "image": "images", "volume": "volumes", "video": "video"}

#: Largest default CP rank of a clip, and the least compression the default keeps (clip values per
#: parameter): the fp16 .finr file holds at most a quarter of the bytes of the 8-bit clip.
VIDEO_MAX_RANK = 1024
VIDEO_MIN_RATIO = 8


@dataclass(frozen=True)
class Preset:
    """The recommended settings of one kind of signal.

    ``field`` and ``fit`` hold :class:`finr3d.config.FieldConfig` and
    :class:`finr3d.config.FitConfig` values; a rank of ``None`` in ``field``
    means "from the signal's size" (:func:`default_video_rank`). The other
    attributes tune the closed-form start, which has no config field.
    """

    kind: str
    field: Mapping[str, object]
    fit: Mapping[str, object] = dataclasses.field(default_factory=dict)
    #: FitConfig values that hold only for the preset's own decomposition (``field["decomposition"]``): a fit
    #: that takes another one (``rank=8`` alone on a volume is the generic CP) keeps the generic values
    structure_fit: Mapping[str, object] = dataclasses.field(default_factory=dict)
    #: share of the budget the closed-form phase spends distilling its factors by gradient steps (a field
    #: that reads out exactly spends the target's ``sweep_fraction`` on CP-ALS sweeps instead)
    distill_fraction: float = 0.0
    #: learning rate of the mode networks' hidden layers after a closed-form start, as a fraction of lr
    hidden_lr: float = 1.0
    #: ridge of the closed-form readout as a fraction of the mean eigenvalue of the feature Gram matrix:
    #: strong keeps the output weights small for later end-to-end learning, weak fits the factors closely
    readout_ridge: float = 0.1
    #: most grid points the closed-form decomposition sees (an evenly spaced sub-lattice of larger signals)
    closed_form_samples: int = 256**3
    #: most grid points a Tucker/TT start (HOSVD, TT-SVD: one Gram matrix per mode, linear in the points) sees,
    #: when it may see more than a CP-ALS start (None: ``closed_form_samples``). A sub-lattice that skips
    #: frames leaves them to the networks' interpolation (RESULTS.md, 'Volumes': the smoke clip's skipped
    #: frames were 10 dB worse than the seen ones)
    hosvd_samples: Optional[int] = None
    #: where the numbers come from
    evidence: str = ""


PRESETS: dict[str, Preset] = {
    "sdf": Preset(
        "sdf", {"decomposition": "tucker", "rank": 64, "width": 128, "backbone": "siren"},
        {"init": "closed_form", "jitter": True},
        distill_fraction=0.9,
        evidence="benchmarks/sdf_fit.py: Tucker from a HOSVD start, 90 % of the budget distilling (RESULTS.md, "
                 "'SDF distillation share'); rank 64, not 48: benchmarks/file_accuracy.py (RESULTS.md, 'Tucker "
                 "rank 64 for meshes')"),
    "image": Preset(
        "image", {"decomposition": "tucker", "rank": 128, "width": 128, "backbone": "siren"},
        {"init": "closed_form", "lr": 1e-3},
        evidence="benchmarks/image_fit.py: Tucker r128 with the channel mode in its core; lr 1e-3"),
    # lr 2e-4 for the Tucker, not the generic 2e-3: Adam's first full-size steps on the 110k-value core (and the
    # readouts) shake the HOSVD start down by 10-15 dB; a tenth of the rate keeps it and reaches the same end
    "volume": Preset(
        "volume", {"decomposition": "tucker", "rank": 48, "width": 128, "backbone": "siren"},
        {"init": "closed_form"}, structure_fit={"lr": 2e-4},
        evidence="benchmarks/volume_preset.py: Tucker r48 w128 from a HOSVD start beats CP r64 by 1-12 dB on "
                 "every shared volume at 15 s (RESULTS.md, 'Volumes'); lr 2e-4 is ahead of 2e-3 at 1 and 5 s on "
                 "all four test volumes and within 0.1 dB or ahead at 15 s (RESULTS.md, 'The volume preset's "
                 "learning rate')"),
    # x+y+t: CP whose per-axis networks read out a cosine basis as long as each axis, fitted by CP-ALS sweeps
    # read out as they go (benchmarks/video_readout.py, RESULTS.md 'Video readout')
    "video": Preset(
        "video", {"decomposition": "cp", "rank": None, "width": 32, "basis": "grid", "backbone": "siren"},
        {"init": "closed_form", "lr": 5e-4},
        hidden_lr=0.1, readout_ridge=1e-3, closed_form_samples=1 << 24,
        evidence="benchmarks/video_readout.py and benchmarks/speed.py (RESULTS.md 'Video readout')"),
}

#: A time-varying volume with one network per axis (x+y+z+t), as for video: CP whose networks read out a cosine
#: basis as long as each axis, fitted by CP-ALS sweeps read out as they go, on a sub-lattice of at most 2^21
#: points (then Adam on every sample); rank 128 keeps a sweep of a 48 x 64^3 clip near a second on two cores.
TIMED_VOLUME_PRESET = Preset(
    "volume", {"decomposition": "cp", "rank": 128, "width": 32, "basis": "grid", "backbone": "siren"},
    {"init": "closed_form", "lr": 5e-4}, hidden_lr=0.1, readout_ridge=1e-3, closed_form_samples=1 << 21,
    hosvd_samples=1 << 24,
    evidence="benchmarks/volume_fit.py speed (RESULTS.md 'Volumes and time-varying volumes')")

#: The structure of a time-varying volume fitted for a file size or quality goal (``--budget-kb``,
#: ``--target-psnr``): a 4-D Tucker from an HOSVD of the whole clip (``hosvd_samples``). Its first validation
#: comes later than the CP preset's (after the HOSVD, about a second for a 48 x 64^3 clip on one core), so
#: plain fits keep CP for time-to-quality; for bytes the Tucker wins: its 40- and 45-dB files are 0.39x and
#: 0.88x SZ3's, where CP never reached 40 dB (benchmarks/volume_fit.py rd, RESULTS.md 'Volumes').
COMPACT_TIMED_VOLUME = {"decomposition": "tucker", "rank": 40}


def goal_structure(target) -> dict:
    """Field settings a fit with a byte or quality goal uses instead of ``target``'s preset ({} where the same)."""
    if getattr(target, "preset", None) is TIMED_VOLUME_PRESET:
        return dict(COMPACT_TIMED_VOLUME)
    return {}


#: What a target of no listed kind starts from: the FieldConfig and FitConfig defaults.
GENERIC_PRESET = Preset("signal", {}, {"init": "closed_form"})

#: Presets of the other video layouts (``--layout``): (x, y) + (t) has no exact readout, so it starts at random.
VIDEO_LAYOUT_PRESETS: dict[str, Preset] = {
    "x+y+t": PRESETS["video"],
    "xy+t": Preset("video", {"decomposition": "tucker", "rank": 64, "width": 128, "backbone": "siren"},
                   {"init": "random"}, evidence="Tucker r64 from a random start"),
}


def preset_for(kind: str, layout: Optional[str] = None) -> Preset:
    """The preset of ``kind`` (sdf, image, volume, video), for a video in ``layout`` (x+y+t or xy+t)."""
    if kind == "video" and layout is not None:
        if layout not in VIDEO_LAYOUT_PRESETS:
            raise ValueError(f"unknown video layout {layout!r}; use one of {sorted(VIDEO_LAYOUT_PRESETS)}")
        return VIDEO_LAYOUT_PRESETS[layout]
    if kind not in PRESETS:
        raise ValueError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    return PRESETS[kind]


def default_video_rank(shape: Sequence[int], channels: int, width: int = 32) -> int:
    """The default CP rank of an x+y+t clip: 1024, or less where the field would hold more than
    1/:data:`VIDEO_MIN_RATIO` of the clip's values (each rank costs one readout weight per stored sample
    of every axis, per hidden feature and per channel)."""
    per_rank = sum(shape) + len(shape) * width + channels
    fit = math.prod(shape) * channels // (VIDEO_MIN_RATIO * per_rank)
    return int(max(16, min(VIDEO_MAX_RANK, fit)))


def field_settings(preset: Preset, shape: Sequence[int], channels: int) -> dict:
    """The preset's FieldConfig values for a signal of ``shape`` with ``channels``: a size-dependent rank resolved."""
    out = dict(preset.field)
    if out.get("rank", 0) is None:
        out["rank"] = default_video_rank(shape, channels, int(out.get("width", 32)))
    return out


def fit_settings(preset: Preset, decomposition: Optional[str] = None) -> dict:
    """The preset's FitConfig values for a field of ``decomposition`` (None: the preset's own), with
    :attr:`Preset.structure_fit` only where that is the preset's decomposition."""
    out = dict(preset.fit)
    if decomposition is None or decomposition == preset.field.get("decomposition"):
        out.update(preset.structure_fit)
    return out


def _format(value) -> str:
    return "by clip size, up to %d" % VIDEO_MAX_RANK if value is None else f"{value:g}" \
        if isinstance(value, float) else str(value)


def help_by_kind(key: str, generic=None) -> str:
    """``(default by kind: meshes tucker, images tucker, ...)`` for a FieldConfig or FitConfig key, for help text."""
    values = {kind: PRESETS[kind].field[key] if key in PRESETS[kind].field else
              fit_settings(PRESETS[kind]).get(key, generic) for kind in KINDS}
    if len({repr(v) for v in values.values()}) == 1:
        return f"(default {_format(values[KINDS[0]])})"
    return "(default by kind: " + ", ".join(f"{_KIND_NAMES[k]} {_format(v)}" for k, v in values.items()) + ")"
