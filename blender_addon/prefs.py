"""Add-on preferences: where finr3d lives when Blender's Python does not have it."""

from __future__ import annotations

import os

import bpy

from . import bridge

#: The add-on's module name: ``bl_ext.<repo>.finr3d`` when installed as an extension.
ADDON_ID = __package__


class FINR3D_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    python_path: bpy.props.StringProperty(
        name="Python with finr3d",
        description=("A Python interpreter (or virtual environment folder) that has finr3d installed. "
                     "Fits run there. Leave empty to use finr3d installed in Blender's own Python"),
        subtype="FILE_PATH",
        default="",
    )

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "python_path")
        try:
            backend = backend_for(context)
        except bridge.BridgeError as exc:
            col = layout.column(align=True)
            col.alert = True
            col.label(text=str(exc), icon="ERROR")
        else:
            layout.label(text=backend.describe(), icon="CHECKMARK")
            if not backend.inprocess:
                layout.label(text="Previews start a process each time (a few seconds); installing finr3d "
                                  "into Blender's Python makes them instant.", icon="INFO")


def get_preferences(context=None):
    """The add-on preferences, or None when the add-on was registered without being enabled."""
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_ID)
    return addon.preferences if addon is not None else None


def python_path(context=None) -> str:
    """The interpreter preference; ``$FINR3D_PYTHON`` when the preferences are unavailable."""
    prefs = get_preferences(context)
    if prefs is not None and prefs.python_path.strip():
        return bpy.path.abspath(prefs.python_path.strip())
    return os.environ.get("FINR3D_PYTHON", "")


def backend_for(context=None) -> bridge.Backend:
    """The backend for the current preferences; raises bridge.BridgeError when finr3d is unreachable."""
    return bridge.find_backend(python_path(context))


CLASSES = [FINR3D_AP_preferences]
