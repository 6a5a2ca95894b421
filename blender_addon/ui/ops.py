"""Operators: thin wrappers that read ``scene.finr3d``, call session/bridge/objects and report.

Every user-facing failure is reported with ``self.report({'ERROR'}, msg)``
and returns ``{'CANCELLED'}``; nothing is raised through Blender. The last
message is also written to ``scene.finr3d.status`` so scripts can read it.

Called from a script (``bpy.ops.finr3d.fit_selected()``, execution context
EXEC_DEFAULT) or with Blender in background mode, Fit Selected runs to
completion before it returns. From the panel (INVOKE_DEFAULT) it runs as a
modal operator polling the worker with a timer; Esc or Cancel stops it.
"""

from __future__ import annotations

import bpy
import numpy as np
from bpy_extras.io_utils import ExportHelper, ImportHelper

from .. import bridge, objects, prefs, session

#: Errors an operator turns into a report.
USER_ERRORS = (bridge.BridgeError, objects.ObjectError, session.SessionError, OSError)
#: Seconds the rank slider must rest before the preview is re-extracted.
PREVIEW_DEBOUNCE = 0.3
_TIMER_STEP = 0.1


def _fail(op, context, msg: str):
    op.report({"ERROR"}, msg)
    if context.scene is not None and hasattr(context.scene, "finr3d"):
        context.scene.finr3d.status = msg
    return {"CANCELLED"}


def _redraw(context) -> None:
    wm = context.window_manager
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "PROPERTIES"):
                area.tag_redraw()


# --------------------------------------------------------------------------- fit


class FINR3D_OT_fit_selected(bpy.types.Operator):
    """Fit the selected mesh as a factorized neural field (in a worker process) and add the result as a new object"""

    bl_idname = "finr3d.fit_selected"
    bl_label = "Fit Selected"
    bl_options = {"REGISTER", "UNDO"}

    _timer = None
    _session = None

    def execute(self, context):
        try:
            job = session.start_fit(context)
        except USER_ERRORS as exc:
            return _fail(self, context, str(exc))
        job.wait(context.scene)
        return self._end(context, job)

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        try:
            self._session = session.start_fit(context)
        except USER_ERRORS as exc:
            return _fail(self, context, str(exc))
        wm = context.window_manager
        self._timer = wm.event_timer_add(_TIMER_STEP, window=context.window)
        wm.modal_handler_add(self)
        self._session.update(context.scene)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        job = self._session
        if event.type == "ESC" and event.value == "PRESS":
            job.cancel()
        if event.type == "TIMER" or job.finished:
            ended = job.update(context.scene)
            if context.workspace is not None:
                context.workspace.status_text_set(None if ended else f"F-INR: {context.scene.finr3d.status}"
                                                  f" ({context.scene.finr3d.progress:.0%}) - Esc to cancel")
            _redraw(context)
            if ended:
                context.window_manager.event_timer_remove(self._timer)
                return self._end(context, job)
        return {"PASS_THROUGH"}

    def _end(self, context, job):
        props = context.scene.finr3d
        try:
            obj = job.finish(context)
        except USER_ERRORS as exc:
            props.running = False
            return _fail(self, context, f"could not load the fitted field: {exc}")
        props.running = False
        if job.state == "cancelled":
            props.status = "Fit cancelled"
            props.progress = 0.0
            self.report({"WARNING"}, "Fit cancelled")
            return {"CANCELLED"}
        if obj is None:
            return _fail(self, context, job.status_text())
        props.status = f"{job.status_text()}: {obj.name}"
        self.report({"INFO"}, props.status)
        return {"FINISHED"}


class FINR3D_OT_cancel(bpy.types.Operator):
    """Stop the running fit; nothing is added to the scene"""

    bl_idname = "finr3d.cancel"
    bl_label = "Cancel Fit"

    def execute(self, context):
        if not session.cancel_active():
            self.report({"WARNING"}, "No fit is running")
            return {"CANCELLED"}
        context.scene.finr3d.status = "Fit cancelled"
        return {"FINISHED"}


# --------------------------------------------------------------------------- preview


def preview_object(context, obj):
    """Re-extract ``obj``'s mesh at the scene's preview rank and resolution; returns the info line."""
    props = context.scene.finr3d
    path = objects.finr_path(obj)
    backend = prefs.backend_for(context)
    verts, faces, info = bridge.preview(path, rank=props.preview_rank, resolution=props.resolution,
                                        quantization=props.quantization, backend=backend)
    objects.replace_mesh(obj, verts, faces)
    row = bridge.nearest_row(objects.sweep_of(obj), info["rank"])
    props.info = obj[objects.INFO_KEY] = bridge.format_info(info, row, objects.settings_of(obj).get("fit_seconds"))
    return props.info


class FINR3D_OT_preview_rank(bpy.types.Operator):
    """Show the active F-INR object at the preview rank (and resolution)"""

    bl_idname = "finr3d.preview_rank"
    bl_label = "Preview Rank"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        try:
            preview_object(context, context.view_layer.objects.active)
        except USER_ERRORS as exc:
            return _fail(self, context, str(exc))
        return {"FINISHED"}


_pending_preview = {"rank": None}


def schedule_preview() -> None:
    """Debounced preview for the slider: re-extract once the value has rested (UI only)."""
    if bpy.app.background:
        return  # scripts call bpy.ops.finr3d.preview_rank() themselves
    if not bpy.app.timers.is_registered(_preview_timer):
        bpy.app.timers.register(_preview_timer, first_interval=PREVIEW_DEBOUNCE)
    _pending_preview["rank"] = None


def _preview_timer():
    context = bpy.context
    scene = context.scene
    if scene is None or not hasattr(scene, "finr3d"):
        return None
    rank = scene.finr3d.preview_rank
    if _pending_preview["rank"] != rank:  # still moving: look again shortly
        _pending_preview["rank"] = rank
        return PREVIEW_DEBOUNCE
    obj = context.view_layer.objects.active if context.view_layer else None
    if obj is not None and obj.get(objects.PATH_KEY) is not None:
        try:
            preview_object(context, obj)
        except USER_ERRORS as exc:
            scene.finr3d.status = str(exc)
        _redraw(context)
    _pending_preview["rank"] = None
    return None


# --------------------------------------------------------------------------- files


class FINR3D_OT_import_field(bpy.types.Operator, ImportHelper):
    """Import a .finr field as a mesh (world units) at the preview rank"""

    bl_idname = "finr3d.import_field"
    bl_label = "Import .finr"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".finr"
    filter_glob: bpy.props.StringProperty(default="*.finr", options={"HIDDEN"})

    def execute(self, context):
        props = context.scene.finr3d
        path = bpy.path.abspath(self.filepath)
        try:
            backend = prefs.backend_for(context)
            summary = bridge.read_summary(path, backend)
            verts, faces, info = bridge.preview(path, rank=props.preview_rank, resolution=props.resolution,
                                                quantization=props.quantization, backend=backend)
        except USER_ERRORS as exc:
            return _fail(self, context, str(exc))
        name = f"{bpy.path.display_name_from_filepath(path)}_finr"
        obj = objects.new_result_object(context, name, verts, faces)
        settings = {"decomposition": summary["decomposition"], "rank": summary["max_rank"],
                    "ranks": summary["ranks"], "backbone": summary["backbone"],
                    "fit_seconds": summary.get("seconds"), "steps": summary.get("steps"),
                    "metrics": summary.get("metrics"), "imported": True}
        props.info = bridge.format_info(info, None, summary.get("seconds"))
        objects.set_result_properties(obj, path, settings, info=props.info)
        objects.select_only(context, obj)
        props.status = f"Imported {obj.name}"
        return {"FINISHED"}


class FINR3D_OT_export_field(bpy.types.Operator, ExportHelper):
    """Write the active F-INR object's field at the preview rank and quantization"""

    bl_idname = "finr3d.export_field"
    bl_label = "Export .finr"

    filename_ext = ".finr"
    filter_glob: bpy.props.StringProperty(default="*.finr", options={"HIDDEN"})
    overwrite: bpy.props.BoolProperty(name="Overwrite", default=False,
                                      description="Replace the file if it exists")

    def invoke(self, context, event):
        obj = context.view_layer.objects.active
        if obj is None or obj.get(objects.PATH_KEY) is None:
            return _fail(self, context, "make an F-INR object active (a Fit Selected or Import .finr result)")
        if not self.filepath:
            props = context.scene.finr3d
            try:
                folder = objects.output_folder(context.scene)
            except USER_ERRORS:
                folder = objects.Path(bpy.app.tempdir or ".")
            self.filepath = str(objects.unique_path(folder, f"{obj.name}_r{props.preview_rank}_{props.quantization}"))
        return ExportHelper.invoke(self, context, event)

    def execute(self, context):
        props = context.scene.finr3d
        obj = context.view_layer.objects.active
        if not self.filepath:
            return _fail(self, context, "choose a file to export to")
        out = bpy.path.abspath(self.filepath)
        try:
            path = objects.finr_path(obj)
            if bpy.path.abspath(out) == path:
                raise objects.ObjectError("choose another file: this is the object's own field file")
            # moved since its mesh was made: bake the move into the exported placement
            moved = (np.array(obj.matrix_world, np.float64), objects.stored_matrix(obj))
            result = bridge.export(path, out, rank=props.preview_rank, quantization=props.quantization,
                                   overwrite=self.overwrite, moved=moved,
                                   backend=prefs.backend_for(context))
        except USER_ERRORS as exc:
            return _fail(self, context, str(exc))
        props.status = f"Exported rank {result['rank']} at {props.quantization}: {result['bytes']:,} bytes"
        self.report({"INFO"}, props.status)
        return {"FINISHED"}


class FINR3D_OT_apply_preview(bpy.types.Operator):
    """Bake the preview into a new regular mesh object (the F-INR object stays)"""

    bl_idname = "finr3d.apply_preview"
    bl_label = "Apply"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        obj = context.view_layer.objects.active
        if obj is None or obj.get(objects.PATH_KEY) is None or obj.type != "MESH":
            return _fail(self, context, "make an F-INR object active to bake its preview")
        new = objects.bake_copy(context, obj)
        objects.select_only(context, new)
        context.scene.finr3d.status = f"Baked {new.name}"
        return {"FINISHED"}


class FINR3D_OT_show_settings(bpy.types.Operator):
    """Print the active F-INR object's fit settings and metrics to the info log"""

    bl_idname = "finr3d.show_settings"
    bl_label = "Show Fit Settings"

    def execute(self, context):
        obj = context.view_layer.objects.active
        if obj is None or obj.get(objects.SETTINGS_KEY) is None:
            return _fail(self, context, "make an F-INR object active")
        self.report({"INFO"}, obj[objects.SETTINGS_KEY])
        return {"FINISHED"}


CLASSES = [
    FINR3D_OT_fit_selected,
    FINR3D_OT_cancel,
    FINR3D_OT_preview_rank,
    FINR3D_OT_import_field,
    FINR3D_OT_export_field,
    FINR3D_OT_apply_preview,
    FINR3D_OT_show_settings,
]
