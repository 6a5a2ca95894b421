"""The F-INR sidebar tab in the 3D View: fit settings, progress, rank preview, files."""

from __future__ import annotations

import bpy

from .. import bridge, objects, prefs, session


def _active_field_object(context):
    obj = context.view_layer.objects.active if context.view_layer else None
    return obj if obj is not None and obj.get(objects.PATH_KEY) is not None else None


class _Sidebar:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "F-INR"


class FINR3D_PT_fit(_Sidebar, bpy.types.Panel):
    bl_idname = "FINR3D_PT_fit"
    bl_label = "F-INR Fit"

    def draw(self, context):
        layout = self.layout
        props = context.scene.finr3d
        try:
            prefs.backend_for(context)
        except bridge.BridgeError as exc:
            box = layout.box()
            box.alert = True
            for i, line in enumerate(_wrap(str(exc), 40)):
                box.label(text=line, icon="ERROR" if i == 0 else "BLANK1")
            box.operator("preferences.addon_show", text="Open Preferences", icon="PREFERENCES").module = prefs.ADDON_ID
        col = layout.column()
        col.use_property_split = True
        col.use_property_decorate = False
        col.prop(props, "decomposition")
        col.prop(props, "rank")
        col.prop(props, "backbone")
        preset = _mesh_preset_line(props)
        if preset:
            col.label(text=preset, icon="INFO")
        col.prop(props, "seconds")
        col.prop(props, "resolution")
        running = session.ACTIVE is not None and not session.ACTIVE.finished
        if running:
            row = layout.row(align=True)
            row.progress(factor=props.progress, type="BAR", text=_progress_text(props))
            row.operator("finr3d.cancel", text="", icon="CANCEL")
            layout.label(text=props.status)
        else:
            layout.operator("finr3d.fit_selected", icon="MOD_REMESH")
            if props.status:
                for line in _wrap(props.status, 48):
                    layout.label(text=line)


class FINR3D_PT_fit_advanced(_Sidebar, bpy.types.Panel):
    bl_idname = "FINR3D_PT_fit_advanced"
    bl_label = "Advanced"
    bl_parent_id = "FINR3D_PT_fit"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        props = context.scene.finr3d
        col = self.layout.column()
        col.use_property_split = True
        col.use_property_decorate = False
        col.prop(props, "width")
        col.prop(props, "steps")
        col.prop(props, "device")
        col.prop(props, "nested_ranks")
        col.prop(props, "measure_ranks")
        col.prop(props, "output_dir")


class FINR3D_PT_preview(_Sidebar, bpy.types.Panel):
    bl_idname = "FINR3D_PT_preview"
    bl_label = "Rank Preview"

    def draw(self, context):
        layout = self.layout
        props = context.scene.finr3d
        obj = _active_field_object(context)
        col = layout.column()
        col.use_property_split = True
        col.use_property_decorate = False
        col.prop(props, "preview_rank", slider=False)
        col.prop(props, "quantization")
        if obj is None:
            layout.label(text="Make an F-INR object active", icon="INFO")
            return
        layout.operator("finr3d.preview_rank", icon="FILE_REFRESH")
        box = layout.box()
        box.label(text=obj.name, icon="MESH_DATA")
        for part in (obj.get(objects.INFO_KEY) or "").split(" · "):
            if part:
                box.label(text=part)
        settings = objects.settings_of(obj)
        if settings.get("source"):
            box.label(text=f"from {settings['source']}: {settings.get('decomposition')} "
                           f"rank {settings.get('rank')}, {settings.get('backbone')}")
        row = layout.row(align=True)
        row.operator("finr3d.apply_preview", icon="CHECKMARK")
        row.operator("finr3d.export_field", icon="EXPORT", text="Export")


class FINR3D_PT_files(_Sidebar, bpy.types.Panel):
    bl_idname = "FINR3D_PT_files"
    bl_label = "Files"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        row = self.layout.row(align=True)
        row.operator("finr3d.import_field", icon="IMPORT", text="Import .finr")
        row.operator("finr3d.export_field", icon="EXPORT", text="Export .finr")


def _progress_text(props) -> str:
    eta = f" · {props.eta:.0f} s left" if props.eta >= 0 else ""
    return f"{props.progress:.0%}{eta}"


def _mesh_preset_line(props) -> str:
    """"Preset: tucker r48, width 128, siren" for the settings left to the mesh preset ("" when none is, or
    finr3d's preset table cannot be read in this Python)."""
    try:
        from finr3d.presets import PRESETS
    except ImportError:
        return ""
    field = PRESETS["sdf"].field
    left = [("decomposition", props.decomposition == "preset", str(field["decomposition"])),
            ("rank", not props.rank, f"r{field['rank']}"), ("width", not props.width, f"width {field['width']}"),
            ("backbone", props.backbone == "preset", str(field["backbone"]))]
    parts = [text for _, is_preset, text in left if is_preset]
    return "Preset: " + ", ".join(parts) if parts else ""


def _wrap(text: str, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return lines + ([line] if line else [])


def draw_status(self, context):
    """A progress bar in the status bar while a fit runs."""
    job = session.ACTIVE
    if job is None or job.finished or context.scene is None:
        return
    props = context.scene.finr3d
    self.layout.progress(factor=props.progress, type="RING", text=f"F-INR {_progress_text(props)}")


CLASSES = [FINR3D_PT_fit, FINR3D_PT_fit_advanced, FINR3D_PT_preview, FINR3D_PT_files]
