"""F-INR for Blender: fit meshes as factorized neural fields and preview their ranks.

The extension is thin (see ``docs/blender.md``): operators in ``ui/ops.py``
read ``scene.finr3d`` and call the non-UI modules ``bridge`` (finr3d calls and
mesh files), ``worker`` (worker processes read by a thread), ``session``
(Fit Selected as a job) and ``objects`` (Blender objects in and out).
"""

from __future__ import annotations

import bpy

from . import prefs, session
from .ui import ops, panel, props

#: Registered in this order, unregistered in reverse (the PropertyGroup comes first).
CLASSES = props.CLASSES + prefs.CLASSES + ops.CLASSES + panel.CLASSES


def register():
    # errors are raised, not swallowed: a half-registered add-on is worse than a clear failure
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.finr3d = bpy.props.PointerProperty(type=props.FINR3D_PG_settings)
    bpy.types.STATUSBAR_HT_header.append(panel.draw_status)
    bpy.app.handlers.load_pre.append(session.cancel_on_load)
    bpy.app.handlers.frame_change_post.append(ops.on_frame_change)


def unregister():
    session.cancel_active()
    if session.cancel_on_load in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(session.cancel_on_load)
    if ops.on_frame_change in bpy.app.handlers.frame_change_post:
        bpy.app.handlers.frame_change_post.remove(ops.on_frame_change)
    if bpy.app.timers.is_registered(ops._preview_timer):
        bpy.app.timers.unregister(ops._preview_timer)
    bpy.types.STATUSBAR_HT_header.remove(panel.draw_status)
    del bpy.types.Scene.finr3d
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
