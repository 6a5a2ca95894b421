"""Blender objects in and out: world-space meshes, result objects and their F-INR properties.

A result object carries, as custom properties saved in the .blend:

``finr3d_path``
    The ``.finr`` file (``//``-relative when it sits next to the .blend).
``finr3d_settings``
    JSON: the fit settings, source object, fit time and metrics.
``finr3d_matrix``
    16 floats: the object's world matrix when its mesh was made. Field meshes
    are in world units; local vertices are ``inverse(finr3d_matrix) @ world``,
    so moving the object moves the preview, and Export bakes the move into the
    field.
``finr3d_sweep``
    JSON: IoU/Chamfer/bytes per rank, measured after the fit (absent for
    imported files).
``finr3d_info``
    The info line of the mesh shown (rank, parameters, bytes, quality).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import bpy
import numpy as np

PATH_KEY = "finr3d_path"
SETTINGS_KEY = "finr3d_settings"
MATRIX_KEY = "finr3d_matrix"
SWEEP_KEY = "finr3d_sweep"
INFO_KEY = "finr3d_info"
KEYS = (PATH_KEY, SETTINGS_KEY, MATRIX_KEY, SWEEP_KEY, INFO_KEY)


class ObjectError(Exception):
    """A problem with the selection or the scene that the user can fix."""


# --------------------------------------------------------------------------- reading


def fit_source(context) -> bpy.types.Object:
    """The object Fit Selected works on: the active object if selected, else the only selected one."""
    selected = list(context.selected_objects)
    active = context.view_layer.objects.active
    obj = active if active is not None and active in selected else (selected[0] if len(selected) == 1 else None)
    if obj is None:
        raise ObjectError("select a mesh object to fit" if not selected else
                          "several objects are selected; make the one to fit active")
    if obj.type != "MESH":
        raise ObjectError(f"{obj.name} is a {obj.type.lower()}, not a mesh; select a mesh object to fit")
    return obj


def local_mesh(obj, depsgraph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The evaluated (modifiers applied) mesh of ``obj`` in its own coordinates, triangulated.

    Returns ((V, 3) float64 object coordinates, (T, 3) int32 triangles, (4, 4)
    world matrix). A fit in the object's own axes is as good however the object
    is turned; the world matrix then places the field (``finr3d.placement``).
    The object and its mesh are not modified.
    """
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    try:
        mesh.calc_loop_triangles()
        co = np.empty(len(mesh.vertices) * 3, np.float32)
        mesh.vertices.foreach_get("co", co)
        tris = np.empty(len(mesh.loop_triangles) * 3, np.int32)
        mesh.loop_triangles.foreach_get("vertices", tris)
        matrix = np.array(evaluated.matrix_world, np.float64)
    finally:
        evaluated.to_mesh_clear()
    return co.reshape(-1, 3).astype(np.float64), tris.reshape(-1, 3), matrix


def stored_matrix(obj) -> np.ndarray:
    values = obj.get(MATRIX_KEY)
    if values is None or len(values) != 16:
        return np.eye(4)
    return np.array(list(values), np.float64).reshape(4, 4)


def finr_path(obj) -> str:
    """The absolute ``.finr`` path of an F-INR object; ObjectError when ``obj`` is not one."""
    if obj is None or obj.get(PATH_KEY) is None:
        raise ObjectError("make an F-INR object active (a Fit Selected or Import .finr result)")
    path = bpy.path.abspath(obj[PATH_KEY])
    if not os.path.isfile(path):
        raise ObjectError(f"{obj.name}: its field file {path} is missing; re-import or re-fit it")
    return path


def settings_of(obj) -> dict:
    try:
        return json.loads(obj.get(SETTINGS_KEY, "{}"))
    except (TypeError, ValueError):
        return {}


def sweep_of(obj) -> list:
    try:
        rows = json.loads(obj.get(SWEEP_KEY, "[]"))
    except (TypeError, ValueError):
        return []
    return rows if isinstance(rows, list) else []


# --------------------------------------------------------------------------- writing


def new_mesh(name: str, world_vertices, faces, matrix=None) -> bpy.types.Mesh:
    """A mesh datablock from world-space arrays, expressed in the frame of ``matrix`` (4x4)."""
    v = np.asarray(world_vertices, np.float64).reshape(-1, 3)
    f = np.asarray(faces, np.int32).reshape(-1, 3)
    if matrix is not None:
        m = np.asarray(matrix, np.float64)
        inv = np.linalg.inv(m)
        v = v @ inv[:3, :3].T + inv[:3, 3]
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(v))
    mesh.vertices.foreach_set("co", v.astype(np.float32).ravel())
    mesh.loops.add(f.size)
    mesh.loops.foreach_set("vertex_index", f.ravel())
    mesh.polygons.add(len(f))
    mesh.polygons.foreach_set("loop_start", np.arange(0, f.size, 3, dtype=np.int32))
    mesh.update()
    mesh.validate()
    mesh.shade_smooth()
    return mesh


def invertible(matrix) -> bool:
    m = np.asarray(matrix, np.float64)
    return bool(np.isfinite(m).all() and abs(np.linalg.det(m[:3, :3])) > 1e-12)


def new_result_object(context, name: str, world_vertices, faces, *, matrix=None, collections=()) -> bpy.types.Object:
    """A new object showing a field mesh, placed so that it overlays the world-space vertices.

    ``matrix`` (4x4, e.g. the source object's world matrix) becomes the object's
    transform, so the result shares the source's origin, rotation and scale; it
    falls back to identity when singular.
    """
    m = np.asarray(matrix, np.float64) if matrix is not None and invertible(matrix) else np.eye(4)
    mesh = new_mesh(name, world_vertices, faces, m)
    obj = bpy.data.objects.new(name, mesh)
    targets = [c for c in collections if c is not None] or [context.collection or context.scene.collection]
    for coll in targets:
        coll.objects.link(obj)
    obj.matrix_world = _to_matrix(m)
    obj[MATRIX_KEY] = [float(x) for x in m.reshape(-1)]
    return obj


def replace_mesh(obj, world_vertices, faces) -> None:
    """Give ``obj`` a new mesh datablock from world-space arrays; the old one is removed if unused."""
    old = obj.data
    mesh = new_mesh(old.name, world_vertices, faces, stored_matrix(obj))
    for mat in old.materials:
        mesh.materials.append(mat)
    obj.data = mesh
    if old.users == 0:
        bpy.data.meshes.remove(old)


def bake_copy(context, obj) -> bpy.types.Object:
    """A new regular object with a copy of ``obj``'s mesh and transform, without F-INR properties."""
    base = re.sub(r"_finr(\.\d+)?$", "", obj.name)
    mesh = obj.data.copy()
    mesh.name = f"{base}_baked"
    for key in KEYS:
        if key in mesh:
            del mesh[key]
    new = bpy.data.objects.new(f"{base}_baked", mesh)
    for coll in obj.users_collection or [context.scene.collection]:
        coll.objects.link(new)
    new.matrix_world = obj.matrix_world.copy()
    return new


def select_only(context, obj) -> None:
    for other in context.selected_objects:
        other.select_set(False)
    obj.select_set(True)
    context.view_layer.objects.active = obj


def set_result_properties(obj, path: str, settings: dict, sweep=None, info: str = "") -> None:
    obj[PATH_KEY] = _blend_relative(path)
    obj[SETTINGS_KEY] = json.dumps(settings, sort_keys=True)
    obj[INFO_KEY] = info
    if sweep:
        obj[SWEEP_KEY] = json.dumps(sweep)


def _blend_relative(path: str) -> str:
    if bpy.data.filepath:
        try:
            return bpy.path.relpath(path)
        except ValueError:  # another drive on Windows
            pass
    return os.path.abspath(path)


def _to_matrix(m):
    from mathutils import Matrix

    return Matrix([list(row) for row in np.asarray(m, np.float64)])


# --------------------------------------------------------------------------- files


def output_folder(scene) -> Path:
    """Where new ``.finr`` files go: the scene's folder setting, else next to the .blend, else a temp folder."""
    chosen = scene.finr3d.output_dir.strip()
    if chosen:
        folder = Path(bpy.path.abspath(chosen))
        if not folder.is_dir():
            raise ObjectError(f"the output folder {folder} does not exist; create it or clear the Folder setting")
        if not os.access(folder, os.W_OK):
            raise ObjectError(f"the output folder {folder} is not writable; choose another Folder")
        return folder
    if bpy.data.filepath:
        folder = Path(bpy.data.filepath).parent
        if os.access(folder, os.W_OK):
            return folder
    folder = Path(tempfile.gettempdir()) / "finr3d"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def unique_path(folder: Path, stem: str, suffix: str = ".finr") -> Path:
    """``folder/stem.finr``, or ``stem.001.finr``, ... : never an existing file."""
    stem = re.sub(r"[^\w.\-]+", "_", stem).strip("._") or "field"
    candidate = folder / f"{stem}{suffix}"
    n = 0
    while candidate.exists():
        n += 1
        candidate = folder / f"{stem}.{n:03d}{suffix}"
    return candidate
