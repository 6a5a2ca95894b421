"""Scene settings (``scene.finr3d``): fit settings, the rank preview and the job's status.

The architecture settings default to "Preset" (rank and width 0): the fit then
takes them from the mesh preset (``finr3d.presets``), exactly as ``finr3d fit``
does, and only a setting the user changes reaches the fit command (the add-on
cannot import finr3d at registration: it may live in another interpreter). The
panel's own defaults are the budget, the preview and ``nested_ranks``, on here
because the rank slider is the point of the panel.
"""

from __future__ import annotations

import bpy

DECOMPOSITIONS = [
    ("preset", "Preset", "The mesh preset's decomposition (finr3d fit's default for meshes)"),
    ("cp", "CP", "Sum of rank-one products of the per-axis networks (smallest)"),
    ("tucker", "Tucker", "A learned core tensor contracted with every per-axis network"),
    ("tt", "Tensor train", "A chain of matrices, one per axis"),
]
BACKBONES = [
    ("preset", "Preset", "The mesh preset's per-axis network"),
    ("siren", "SIREN", "Sine networks"),
    ("finer", "FINER", "Sine networks with a variable-periodic activation"),
    ("wire", "WIRE", "Gabor wavelet networks"),
    ("relu", "ReLU", "Fourier features and ReLU"),
]
QUANTIZATIONS = [
    ("auto", "auto", "fp16's step, finer where the fit is accurate enough to show it: keeps the fit's accuracy "
                     "(a larger file; sizing it takes up to a second)"),
    ("fp32", "fp32", "32-bit floats (no loss)"),
    ("fp16", "fp16", "16-bit floats"),
    ("int8", "int8", "8-bit integers with per-row scales"),
    ("int6", "int6", "6-bit integers with per-block scales"),
    ("int4", "int4", "4-bit integers with per-block scales (smallest)"),
]
DEVICES = [
    ("auto", "Auto", "CUDA, then MPS, then CPU"),
    ("cpu", "CPU", "Fit on the CPU"),
    ("cuda", "CUDA", "Fit on an NVIDIA GPU"),
    ("mps", "MPS", "Fit on an Apple GPU"),
]


def _preview_rank_changed(self, context):
    # dragging the slider fires this for every value; ops debounces it with a timer
    from . import ops

    ops.schedule_preview()


class FINR3D_PG_settings(bpy.types.PropertyGroup):
    # ------------------------------------------------------------------ fit
    decomposition: bpy.props.EnumProperty(name="Decomposition", items=DECOMPOSITIONS, default="preset")
    rank: bpy.props.IntProperty(
        name="Rank", default=0, min=0, max=4096, soft_max=256,
        description="Components combining the per-axis networks: higher is more accurate, larger and slower "
                    "(0: the mesh preset's rank)")
    backbone: bpy.props.EnumProperty(name="Backbone", items=BACKBONES, default="preset")
    width: bpy.props.IntProperty(
        name="Width", default=0, min=0, max=1024,
        description="Hidden width of every per-axis network (0: the mesh preset's width)")
    seconds: bpy.props.FloatProperty(
        name="Seconds", default=60.0, min=0.5, max=24 * 3600.0, soft_max=600.0, precision=1,
        description="Time budget of the optimisation (ground-truth preparation and rank measurements come on top)")
    steps: bpy.props.IntProperty(
        name="Steps", default=0, min=0, max=10_000_000,
        description="Optimisation steps (0: no step limit); with Seconds, whichever budget ends first. "
                    "A step budget makes a fit reproducible whatever the machine's load")
    resolution: bpy.props.IntProperty(
        name="Resolution", default=128, min=16, max=1024, soft_max=256,
        description="Samples per axis of the signed-distance ground truth and of the preview mesh")
    quantization: bpy.props.EnumProperty(
        name="Quantization", items=QUANTIZATIONS, default="auto",
        description="How weights are stored when exporting (and for the size shown in the info line); auto, the "
                    "default of finr3d fit and save(), keeps the fit's accuracy")
    nested_ranks: bpy.props.BoolProperty(
        name="Nested ranks", default=True,
        description="Also train random rank prefixes, so that every rank on the slider is a good model")
    measure_ranks: bpy.props.BoolProperty(
        name="Measure ranks", default=True,
        description="After the fit, measure IoU and Chamfer distance of each power-of-two rank against the input")
    device: bpy.props.EnumProperty(name="Device", items=DEVICES, default="auto")
    output_dir: bpy.props.StringProperty(
        name="Folder", subtype="DIR_PATH", default="",
        description=".finr files go here; empty: next to the .blend file, or the temporary folder if unsaved")

    # -------------------------------------------------------------- preview
    preview_rank: bpy.props.IntProperty(
        name="Preview rank", default=32, min=1, max=4096, soft_max=128, update=_preview_rank_changed,
        description="Show the active F-INR object at this rank prefix (also the rank Export writes)")
    iso_level: bpy.props.FloatProperty(
        name="Iso level", default=0.5, min=0.0, max=1.0, subtype="FACTOR", update=_preview_rank_changed,
        description="Volume fields: the surface is drawn where the field crosses this fraction of the "
                    "source's value range (0: its minimum, 1: its maximum)")

    # ----------------------------------------------- status (written by the add-on)
    running: bpy.props.BoolProperty(name="Running", default=False)
    progress: bpy.props.FloatProperty(name="Progress", default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    eta: bpy.props.FloatProperty(name="ETA", default=-1.0, description="Seconds left, -1 when unknown")
    status: bpy.props.StringProperty(name="Status", default="")
    info: bpy.props.StringProperty(name="Info", default="")

    def fit_settings(self) -> dict:
        """The settings a fit runs with, as stored on the result object."""
        return {"decomposition": self.decomposition, "rank": self.rank, "backbone": self.backbone,
                "width": self.width, "seconds": self.seconds, "steps": self.steps, "resolution": self.resolution,
                "nested_ranks": self.nested_ranks, "device": self.device, "seed": 0}


CLASSES = [FINR3D_PG_settings]
