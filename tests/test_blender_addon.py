"""The Blender add-on, headless (bpy from PyPI): registration, fit, preview, files, errors.

One fit through ``bpy.ops.finr3d.fit_selected`` (a rotated, scaled, moved
ellipsoid; a few seconds) is saved as a .blend; the tests reopen it, so they
also check that the result's F-INR properties survive a save.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import tomllib
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

# Blender reads these when bpy is imported: keep its config, scripts and extensions out of the user's home.
_BLENDER_HOME = Path(tempfile.mkdtemp(prefix="finr3d-blender-home-"))
atexit.register(shutil.rmtree, _BLENDER_HOME, ignore_errors=True)
if "bpy" not in sys.modules:
    for _var, _sub in (("BLENDER_USER_RESOURCES", ""), ("BLENDER_USER_CONFIG", "config"),
                       ("BLENDER_USER_SCRIPTS", "scripts"), ("BLENDER_USER_DATAFILES", "datafiles"),
                       ("BLENDER_USER_EXTENSIONS", "extensions")):
        os.environ[_var] = str(_BLENDER_HOME / _sub)

bpy = pytest.importorskip("bpy")

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.blender

#: Fit settings small enough for a few seconds on 2 CPU cores. A step budget (seconds only caps it)
#: keeps the result the same on a loaded machine.
FAST = dict(decomposition="cp", rank=8, width=32, steps=100, seconds=300.0, resolution=32, preview_rank=8,
            quantization="int8", nested_ranks=True, measure_ranks=True, device="cpu")


@pytest.fixture(scope="module")
def addon():
    sys.path.insert(0, str(ROOT))
    try:
        import blender_addon
    finally:
        sys.path.remove(str(ROOT))
    blender_addon.register()
    yield blender_addon
    blender_addon.unregister()


#: Worker processes use one torch thread: on a busy 2-core machine, two spinning threads make a
#: fit up to 8x slower (measured: 100 steps in 4 s with one thread, 37 s with two, at load 6).
WORKER_ENV = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def fresh_blender(addon, monkeypatch):
    """An empty scene per test (registered classes survive a factory reset)."""
    for key, value in WORKER_ENV.items():
        monkeypatch.setenv(key, value)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    yield
    addon.session.cancel_active()


def call(op, **kwargs):
    """Run an operator; returns (result set, message).

    An ERROR report reaches a Python caller as RuntimeError("Error: <message>");
    an exception raised inside the operator would carry a traceback instead.
    """
    try:
        return op(**kwargs), ""
    except RuntimeError as exc:
        assert "Traceback" not in str(exc), f"the operator raised instead of reporting:\n{exc}"
        return {"CANCELLED"}, str(exc)


def configure(scene, folder, **overrides):
    for key, value in {**FAST, **overrides}.items():
        setattr(scene.finr3d, key, value)
    scene.finr3d.output_dir = str(folder)


def add_ellipsoid(name="Blob"):
    bpy.ops.mesh.primitive_ico_sphere_add(subdivisions=3, radius=1.0, location=(2.0, -1.0, 0.5),
                                          rotation=(0.4, 0.2, 0.7))
    obj = bpy.context.active_object
    obj.name = name
    obj.scale = (1.5, 0.7, 1.0)
    bpy.context.view_layer.update()
    return obj


def vertex_hash(obj) -> str:
    co = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.vertices.foreach_get("co", co)
    matrix = np.array(obj.matrix_world, np.float64)
    return hashlib.sha256(co.tobytes() + matrix.tobytes()).hexdigest()


def world_bounds(obj) -> np.ndarray:
    co = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.vertices.foreach_get("co", co)
    m = np.array(obj.matrix_world, np.float64)
    world = co.reshape(-1, 3) @ m[:3, :3].T + m[:3, 3]
    return np.stack([world.min(0), world.max(0)])


def assert_overlays(a, b, tolerance):
    """World bounding boxes agree within ``tolerance`` times the diagonal of ``b``."""
    ba, bb = world_bounds(a), world_bounds(b)
    diag = float(np.linalg.norm(bb[1] - bb[0]))
    err = float(np.abs(ba - bb).max())
    assert err <= tolerance * diag, f"bounds differ by {err:.4f} (> {tolerance:.0%} of diagonal {diag:.3f})"


def field_objects():
    return [o for o in bpy.data.objects if "finr3d_path" in o]


@pytest.fixture(scope="module")
def fitted(addon, tmp_path_factory):
    """One Fit Selected run, saved as a .blend; returns what the tests compare against."""
    folder = tmp_path_factory.mktemp("fitted")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    configure(bpy.context.scene, folder)
    src = add_ellipsoid()
    before = vertex_hash(src)
    workdirs = set(Path(tempfile.gettempdir()).glob("finr3d-fit-*"))
    t0 = time.perf_counter()
    # module scope runs before conftest's per-test cache isolation: isolate the worker's cache here
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FINR3D_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        for key, value in WORKER_ENV.items():
            mp.setenv(key, value)
        result, msg = call(bpy.ops.finr3d.fit_selected)
    seconds = time.perf_counter() - t0
    assert result == {"FINISHED"}, msg or bpy.context.scene.finr3d.status
    assert set(Path(tempfile.gettempdir()).glob("finr3d-fit-*")) <= workdirs, "temporary files were left behind"
    obj = bpy.context.active_object
    blend = folder / "fitted.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    return {"blend": blend, "folder": folder, "source": src.name, "result": obj.name, "hash": before,
            "seconds": seconds}


def open_fitted(fitted):
    bpy.ops.wm.open_mainfile(filepath=str(fitted["blend"]))
    return bpy.data.objects[fitted["source"]], bpy.data.objects[fitted["result"]]


# --------------------------------------------------------------------------- registration and packaging


def test_register_unregister_twice(addon):
    for _ in range(2):
        addon.unregister()
        assert not hasattr(bpy.types.Scene, "finr3d")
        assert not hasattr(bpy.types, "FINR3D_PT_fit")
        addon.register()
        assert hasattr(bpy.types.Scene, "finr3d")
        assert bpy.context.scene.finr3d.seconds > 0
        for op in ("fit_selected", "preview_rank", "import_field", "export_field", "apply_preview", "cancel"):
            assert hasattr(bpy.ops.finr3d, op)


def test_panel_quantization_default_is_the_api_default(addon):
    """The panel exports what ``save()`` and ``finr3d fit`` write by default (int8 had 2.9-4.7x the fit's Chamfer)."""
    import inspect

    from finr3d.field import FactorizedField

    default = inspect.signature(FactorizedField.save).parameters["quantization"].default
    assert bpy.context.scene.finr3d.quantization == default == "auto"


def test_extension_zip_installs(addon, tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import build_addon
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    build_addon.validate()  # Blender's own manifest validator, from the bpy wheel
    plain = build_addon.build(tmp_path / "plain", use_blender=False)
    zpath = build_addon.build(tmp_path)
    manifest = tomllib.loads((ROOT / "blender_addon" / "blender_manifest.toml").read_text())
    assert zpath.name == plain.name == f"finr3d-{manifest['version']}.zip"
    assert sorted(zipfile.ZipFile(plain).namelist()) == sorted(zipfile.ZipFile(zpath).namelist())
    assert manifest["schema_version"] == "1.0.0" and manifest["id"] == "finr3d" and manifest["type"] == "add-on"
    assert manifest["blender_version_min"] == "4.2.0" and manifest["license"] == ["SPDX:MIT"]
    assert "files" in manifest["permissions"]
    names = zipfile.ZipFile(zpath).namelist()
    assert {"blender_manifest.toml", "__init__.py", "ui/ops.py"} <= set(names)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)

    if not bpy.utils.user_resource("EXTENSIONS").startswith(str(_BLENDER_HOME)):
        pytest.skip("bpy was imported before this module could point Blender's user folders at a temp dir")
    # the installed copy registers the same classes: swap the test copy out meanwhile
    addon.unregister()
    try:
        assert bpy.ops.extensions.package_install_files(
            filepath=str(zpath), repo="user_default", enable_on_install=True) == {"FINISHED"}
        module = "bl_ext.user_default.finr3d"
        assert module in bpy.context.preferences.addons
        assert hasattr(bpy.types.Scene, "finr3d") and hasattr(bpy.ops.finr3d, "fit_selected")
        installed = Path(bpy.utils.user_resource("EXTENSIONS")) / "user_default" / "finr3d"
        assert (installed / "blender_manifest.toml").is_file()
        import addon_utils

        addon_utils.disable(module)
        assert not hasattr(bpy.types.Scene, "finr3d")
    finally:
        addon.register()


class LayoutRecorder:
    """A stand-in UILayout for calling panel ``draw()`` headless; checks the names it is given."""

    ICONS = set(bpy.types.UILayout.bl_rna.functions["label"].parameters["icon"].enum_items.keys())

    def __init__(self, calls):
        object.__setattr__(self, "calls", calls)

    def __getattr__(self, name):
        def method(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            if name == "prop":
                assert args[1] in args[0].bl_rna.properties.keys(), f"no property {args[1]!r}"
            if name == "operator":
                module, op = args[0].split(".")
                getattr(getattr(bpy.ops, module), op).get_rna_type()  # KeyError when it does not exist
            if "icon" in kwargs:
                assert kwargs["icon"] in self.ICONS, f"no icon {kwargs['icon']!r}"
            return LayoutRecorder(self.calls)

        return method


def draw_all(addon):
    calls = []
    context = bpy.context
    for panel in addon.ui.panel.CLASSES:
        panel.draw(types.SimpleNamespace(layout=LayoutRecorder(calls)), context)
    addon.ui.panel.draw_status(types.SimpleNamespace(layout=LayoutRecorder(calls)), context)
    prefs = addon.prefs.FINR3D_AP_preferences
    prefs.draw(types.SimpleNamespace(layout=LayoutRecorder(calls), python_path="", bl_rna=prefs.bl_rna), context)
    return calls


def test_panels_draw_in_every_state(fitted, addon, monkeypatch):
    texts = lambda calls: " | ".join(str(kw.get("text", "")) for name, _, kw in calls)  # noqa: E731
    assert "Make an F-INR object active" in texts(draw_all(addon))
    _, obj = open_fitted(fitted)
    bpy.context.view_layer.objects.active = obj
    calls = draw_all(addon)
    assert "IoU" in texts(calls) and any(args[:1] == ("finr3d.apply_preview",) for _, args, _ in calls)
    # a running fit: progress bar and cancel button instead of Fit Selected
    monkeypatch.setattr(addon.session, "ACTIVE", types.SimpleNamespace(finished=False))
    bpy.context.scene.finr3d.progress, bpy.context.scene.finr3d.eta = 0.4, 12
    calls = draw_all(addon)
    assert any(name == "progress" and "12 s left" in kw["text"] for name, _, kw in calls)
    assert any(args[:1] == ("finr3d.cancel",) for _, args, _ in calls)
    monkeypatch.setattr(addon.session, "ACTIVE", None)
    # finr3d unreachable: the panel says how to fix it
    monkeypatch.setattr(addon.bridge, "finr3d_importable", lambda: False)
    monkeypatch.setenv("FINR3D_PYTHON", "")
    assert "finr3d was not found" in texts(draw_all(addon))


# --------------------------------------------------------------------------- fit


def test_fit_selected_end_to_end(fitted):
    src, obj = open_fitted(fitted)
    assert obj.name == f"{src.name}_finr" and obj is not src
    assert vertex_hash(src) == fitted["hash"], "the original object was modified"
    assert len(obj.data.vertices) > 100
    assert_overlays(obj, src, 0.03)
    path = Path(bpy.path.abspath(obj["finr3d_path"]))
    assert path.is_file() and path.parent == fitted["folder"] and path.suffix == ".finr"
    settings = json.loads(obj["finr3d_settings"])
    assert settings["rank"] == FAST["rank"] and settings["source"] == src.name and settings["fit_seconds"] > 0
    sweep = json.loads(obj["finr3d_sweep"])
    assert [row["rank"] for row in sweep] == [2, 4, 8]
    assert all(0 <= row["iou"] <= 1 and row["chamfer_l1"] >= 0 for row in sweep)
    assert sweep[-1]["iou"] > 0.8
    assert bpy.context.scene.finr3d.progress == pytest.approx(1.0)
    assert obj["finr3d_info"].startswith("rank 8/8") and "IoU" in obj["finr3d_info"]


def test_second_fit_never_overwrites(fitted, addon):
    """A name already taken gets a numbered sibling: an existing .finr is never overwritten."""
    folder = fitted["folder"]
    first = addon.objects.unique_path(folder, f"{fitted['source']}_finr")
    assert first.name == f"{fitted['source']}_finr.001.finr"


def test_cancel_mid_fit_leaves_nothing(addon, tmp_path):
    configure(bpy.context.scene, tmp_path, steps=0, seconds=120.0)
    src = add_ellipsoid()
    before = vertex_hash(src)
    n_objects, n_meshes = len(bpy.data.objects), len(bpy.data.meshes)
    job = addon.session.start_fit(bpy.context)
    with pytest.raises(addon.session.SessionError, match="already running"):
        addon.session.start_fit(bpy.context)
    deadline = time.time() + 120
    while job.phase != "fitting" and not job.finished and time.time() < deadline:
        job.update(bpy.context.scene)
        time.sleep(0.1)
    assert job.phase == "fitting", f"the fit never started: {job.status_text()}"
    assert bpy.context.scene.finr3d.running
    assert bpy.ops.finr3d.cancel() == {"FINISHED"}
    assert job.state == "cancelled"
    props = bpy.context.scene.finr3d
    assert props.status == "Fit cancelled" and not props.running
    assert job.finish(bpy.context) is None
    assert len(bpy.data.objects) == n_objects and len(bpy.data.meshes) == n_meshes
    assert list(tmp_path.iterdir()) == []
    assert not job.workdir.exists()
    assert vertex_hash(src) == before
    result, msg = call(bpy.ops.finr3d.cancel)  # nothing left to cancel: a warning, not an error
    assert result == {"CANCELLED"} and not msg


def test_modal_fit_polls_and_escape_cancels(addon, tmp_path):
    """The panel's path: a modal operator polled by timer events; Esc kills the worker."""
    configure(bpy.context.scene, tmp_path, steps=0, seconds=120.0)
    add_ellipsoid()
    n_objects = len(bpy.data.objects)
    op = addon.ui.ops.FINR3D_OT_fit_selected
    reports = []
    # Blender runs no event loop headless: drive the operator's modal() with a stand-in for the operator
    stub = types.SimpleNamespace(report=lambda kind, msg: reports.append((kind, msg)))
    stub._end = lambda context, job: op._end(stub, context, job)
    stub._session = job = addon.session.start_fit(bpy.context)
    stub._timer = bpy.context.window_manager.event_timer_add(0.1, window=bpy.context.window)
    tick = types.SimpleNamespace(type="TIMER", value="NOTHING")
    deadline = time.time() + 120
    while job.phase == "starting" and time.time() < deadline:
        assert op.modal(stub, bpy.context, tick) == {"PASS_THROUGH"}
        time.sleep(0.1)
    assert job.phase != "starting" and bpy.context.scene.finr3d.running
    assert op.modal(stub, bpy.context, types.SimpleNamespace(type="ESC", value="PRESS")) == {"CANCELLED"}
    assert reports == [({"WARNING"}, "Fit cancelled")]
    assert job.state == "cancelled" and not bpy.context.scene.finr3d.running
    assert len(bpy.data.objects) == n_objects and list(tmp_path.iterdir()) == []
    assert addon.session.ACTIVE is None


# --------------------------------------------------------------------------- preview and files


def test_rank_slider_changes_mesh_and_info(fitted):
    _, obj = open_fitted(fitted)
    scene = bpy.context.scene
    bpy.context.view_layer.objects.active = obj
    full = len(obj.data.vertices)
    meshes = len(bpy.data.meshes)
    scene.finr3d.preview_rank = 1
    assert bpy.ops.finr3d.preview_rank() == {"FINISHED"}
    low_info = scene.finr3d.info
    assert len(obj.data.vertices) != full
    assert low_info.startswith("rank 1/8") and "params" in low_info and re.search(r"\d+(\.\d+)? K?B int8", low_info)
    assert "(r2)" not in low_info  # rank 1 is below every measured rank: no borrowed scores
    scene.finr3d.preview_rank = 8
    assert bpy.ops.finr3d.preview_rank() == {"FINISHED"}
    assert len(obj.data.vertices) == full
    assert scene.finr3d.info.startswith("rank 8/8") and "IoU" in scene.finr3d.info and "Chamfer" in scene.finr3d.info
    assert len(bpy.data.meshes) == meshes, "the replaced mesh datablock was not removed"
    scene.finr3d.preview_rank = 100  # clipped to the trained rank
    assert bpy.ops.finr3d.preview_rank() == {"FINISHED"}
    assert scene.finr3d.info.startswith("rank 8/8")


def test_export_import_round_trip_keeps_placement(fitted, tmp_path):
    _, obj = open_fitted(fitted)
    bpy.context.view_layer.objects.active = obj
    bpy.context.scene.finr3d.quantization = "fp16"
    out = tmp_path / "exported.finr"
    assert bpy.ops.finr3d.export_field(filepath=str(out)) == {"FINISHED"}
    assert out.is_file()
    assert bpy.ops.finr3d.import_field(filepath=str(out)) == {"FINISHED"}
    imported = bpy.context.active_object
    assert imported is not obj and Path(bpy.path.abspath(imported["finr3d_path"])).resolve() == out.resolve()
    assert_overlays(imported, obj, 0.01)

    # moving the F-INR object moves the exported field with it
    obj.location.x += 3.0
    obj.scale *= 1.5
    bpy.context.view_layer.update()
    bpy.context.view_layer.objects.active = obj
    moved = tmp_path / "moved.finr"
    assert bpy.ops.finr3d.export_field(filepath=str(moved)) == {"FINISHED"}
    assert bpy.ops.finr3d.import_field(filepath=str(moved)) == {"FINISHED"}
    assert_overlays(bpy.context.active_object, obj, 0.01)

    # never overwrite silently
    bpy.context.view_layer.objects.active = obj
    result, msg = call(bpy.ops.finr3d.export_field, filepath=str(out))
    assert result == {"CANCELLED"} and "exists" in msg
    assert bpy.ops.finr3d.export_field(filepath=str(out), overwrite=True) == {"FINISHED"}


def test_apply_preview_bakes_a_plain_mesh(fitted):
    _, obj = open_fitted(fitted)
    bpy.context.view_layer.objects.active = obj
    assert bpy.ops.finr3d.apply_preview() == {"FINISHED"}
    baked = bpy.context.active_object
    assert baked is not obj and baked.data is not obj.data
    assert not any(key.startswith("finr3d") for key in baked.keys())
    assert_overlays(baked, obj, 1e-6)


def test_preview_through_external_interpreter(fitted, addon, monkeypatch):
    """Without finr3d in Blender's Python, previews run ``bridge.py`` under the configured interpreter."""
    _, obj = open_fitted(fitted)
    bpy.context.view_layer.objects.active = obj
    props = bpy.context.scene.finr3d
    props.preview_rank = 4
    assert bpy.ops.finr3d.preview_rank() == {"FINISHED"}
    here, here_info = len(obj.data.vertices), props.info
    props.preview_rank = 1
    assert bpy.ops.finr3d.preview_rank() == {"FINISHED"}
    assert len(obj.data.vertices) != here
    monkeypatch.setattr(addon.bridge, "finr3d_importable", lambda: False)
    monkeypatch.setenv("FINR3D_PYTHON", sys.executable)
    backend = addon.prefs.backend_for(bpy.context)
    assert not backend.inprocess and backend.python == sys.executable
    props.preview_rank = 4
    assert bpy.ops.finr3d.preview_rank() == {"FINISHED"}
    assert len(obj.data.vertices) == here and props.info == here_info


# --------------------------------------------------------------------------- errors


def _corrupt(tmp_path):
    bad = tmp_path / "corrupt.finr"
    bad.write_bytes(b"FINR\x00\r\n\x1a" + b"\x01\x00" * 40)
    return bad


@pytest.mark.parametrize("case", ["no_selection", "camera", "no_faces", "missing_output_dir"])
def test_fit_errors_are_reported(case, addon, tmp_path):
    configure(bpy.context.scene, tmp_path)
    if case == "camera":
        bpy.ops.object.camera_add()
    elif case == "no_faces":
        mesh = bpy.data.meshes.new("empty")
        obj = bpy.data.objects.new("empty", mesh)
        bpy.context.scene.collection.objects.link(obj)
        obj.select_set(True)
        bpy.context.view_layer.objects.active = obj
    elif case == "missing_output_dir":
        add_ellipsoid()
        bpy.context.scene.finr3d.output_dir = str(tmp_path / "nope")
    n_objects = len(bpy.data.objects)
    result, msg = call(bpy.ops.finr3d.fit_selected)
    assert result == {"CANCELLED"} and msg
    expected = {"no_selection": "select a mesh", "camera": "not a mesh", "no_faces": "no faces",
                "missing_output_dir": "does not exist"}[case]
    assert expected in msg and expected in bpy.context.scene.finr3d.status
    assert len(bpy.data.objects) == n_objects
    assert addon.session.ACTIVE is None or addon.session.ACTIVE.finished


def test_missing_finr3d_is_reported(addon, monkeypatch, tmp_path):
    monkeypatch.setattr(addon.bridge, "finr3d_importable", lambda: False)
    monkeypatch.setenv("FINR3D_PYTHON", "")
    configure(bpy.context.scene, tmp_path)
    add_ellipsoid()
    result, msg = call(bpy.ops.finr3d.fit_selected)
    assert result == {"CANCELLED"} and "finr3d was not found" in msg
    monkeypatch.setenv("FINR3D_PYTHON", str(tmp_path / "no-python"))
    result, msg = call(bpy.ops.finr3d.fit_selected)
    assert result == {"CANCELLED"} and "does not exist" in msg


@pytest.mark.parametrize("case", ["corrupt", "missing", "not_a_finr"])
def test_import_errors_are_reported(case, tmp_path):
    path = {"corrupt": _corrupt(tmp_path), "missing": tmp_path / "missing.finr",
            "not_a_finr": tmp_path / "mesh.finr"}[case]
    if case == "not_a_finr":
        path.write_text("ply\nformat ascii 1.0\nend_header\n")
    result, msg = call(bpy.ops.finr3d.import_field, filepath=str(path))
    assert result == {"CANCELLED"} and msg
    assert len(bpy.data.objects) == 0


def test_preview_and_export_without_a_field_object_are_reported(tmp_path):
    add_ellipsoid()
    for op, kwargs in ((bpy.ops.finr3d.preview_rank, {}), (bpy.ops.finr3d.apply_preview, {}),
                       (bpy.ops.finr3d.export_field, {"filepath": str(tmp_path / "x.finr")})):
        result, msg = call(op, **kwargs)
        assert result == {"CANCELLED"} and "F-INR object" in msg


def test_export_to_unwritable_place_is_reported(fitted, tmp_path):
    _, obj = open_fitted(fitted)
    bpy.context.view_layer.objects.active = obj
    for target in (tmp_path / "no" / "such" / "dir" / "x.finr", Path("/proc/finr3d-test.finr"), tmp_path / "x.ply"):
        result, msg = call(bpy.ops.finr3d.export_field, filepath=str(target))
        assert result == {"CANCELLED"} and msg, target
        assert not target.exists()


def test_preview_of_a_corrupt_field_is_reported(fitted, tmp_path):
    _, obj = open_fitted(fitted)
    bpy.context.view_layer.objects.active = obj
    obj["finr3d_path"] = str(_corrupt(tmp_path))
    result, msg = call(bpy.ops.finr3d.preview_rank)
    assert result == {"CANCELLED"} and msg


# --------------------------------------------------------------------------- bridge (no bpy needed)


def test_ply_round_trip(addon, tmp_path):
    rng = np.random.default_rng(0)
    verts = rng.normal(size=(50, 3)).astype(np.float32)
    faces = rng.integers(0, 50, size=(80, 3))
    addon.bridge.write_ply(tmp_path / "m.ply", verts, faces)
    v, f = addon.bridge.read_ply(tmp_path / "m.ply")
    np.testing.assert_array_equal(v, verts)
    np.testing.assert_array_equal(f, faces)
    import trimesh

    mesh = trimesh.load(tmp_path / "m.ply", process=False)
    np.testing.assert_allclose(mesh.vertices, verts, rtol=1e-6)
    (tmp_path / "bad.ply").write_bytes((tmp_path / "m.ply").read_bytes()[:-5])
    with pytest.raises(addon.bridge.BridgeError, match="do not match"):
        addon.bridge.read_ply(tmp_path / "bad.ply")


def test_a_turned_object_fits_as_well_as_the_same_mesh_unturned(addon, tmp_path):
    """The panel's defaults are the mesh preset, and the fit runs in the object's own axes.

    A box turned and moved in the scene, fitted from the panel, scores the same world-space IoU as
    ``finr3d fit`` of the unturned box (before: CP r32 in world axes, 0.92 against 0.99).
    """
    import trimesh

    import finr3d
    from finr3d.cli import main as cli_main

    props = bpy.context.scene.finr3d
    assert (props.decomposition, props.rank, props.width, props.backbone) == ("preset", 0, 0, "preset")
    budget = dict(steps=60, seconds=600.0, resolution=32, preview_rank=8, measure_ranks=False, device="cpu")
    for key, value in budget.items():
        setattr(props, key, value)
    props.output_dir = str(tmp_path)
    bpy.ops.mesh.primitive_cube_add(size=2.0)
    box = bpy.context.active_object
    box.data.transform(np.diag([1.0, 0.55, 0.3, 1.0]).T.tolist())  # a 2 x 1.1 x 0.6 box in its own axes
    box.location, box.rotation_euler = (3.0, -2.0, 1.0), (0.5, 0.3, 0.8)
    bpy.context.view_layer.update()
    job = addon.session.start_fit(bpy.context)
    assert job.wait(bpy.context.scene) == "done", job.status_text()
    obj = job.finish(bpy.context)
    field = finr3d.load(bpy.path.abspath(obj["finr3d_path"]))
    # the mesh preset (Tucker); the compact file keeps at most one rank per stored sample (32 here)
    from finr3d.presets import PRESETS

    rank = PRESETS["sdf"].field["rank"]
    trained = finr3d.codec.describe_file(bpy.path.abspath(obj["finr3d_path"]))["trained"]
    assert field.config.decomposition == "tucker" and trained["ranks"] == [rank] * 3, trained
    assert field.max_rank == min(rank, budget["resolution"])

    local = np.array([v.co for v in box.data.vertices], np.float64)
    faces = np.array([p.vertices[:] for p in box.data.polygons])
    m = np.array(box.matrix_world, np.float64)
    quads = trimesh.Trimesh(local, [[f[0], f[1], f[2]] for f in faces] + [[f[0], f[2], f[3]] for f in faces])  # the quads split
    turned = quads.copy()
    turned.apply_transform(m)
    ply = tmp_path / "box.ply"
    quads.export(ply)
    cli_out = tmp_path / "box_cli.finr"
    assert cli_main(["fit", str(ply), "-o", str(cli_out), "--steps", "60", "--resolution", "32", "--nested-ranks",
                     "--seed", "0", "--device", "cpu", "--progress", "none", "--quantization", "fp32"]) == 0
    opts = dict(resolution=64, n_samples=30_000, n_volume=30_000)
    panel_iou = finr3d.evaluate(field, turned, **opts)["iou"]
    cli_iou = finr3d.evaluate(finr3d.load(cli_out), quads, **opts)["iou"]
    assert cli_iou > 0.9
    assert abs(panel_iou - cli_iou) <= 0.005, (panel_iou, cli_iou)


# --------------------------------------------------------------------------- volume fields


def _volume_finr(tmp_path, frames: int = 0):
    """A small fitted volume .finr: a blob (moving along x over ``frames`` frames when frames > 0)."""
    import finr3d
    from finr3d.volume import VolumeTarget

    n = 16
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n)] * 3, indexing="ij")
    shifts = np.linspace(-0.4, 0.4, frames) if frames else [0.0]
    vol = np.stack([np.exp(-4 * ((x - s) ** 2 + y**2 + z**2)) for s in shifts]).astype(np.float32)
    target = VolumeTarget(vol, axes="tzyx") if frames else VolumeTarget(vol[0])
    field = finr3d.fit(target, rank=8, width=16, steps=60, seed=0)
    path = tmp_path / ("clip.finr" if frames else "blob.finr")
    field.save(path)
    return path


def test_volume_field_imports_as_an_isosurface_at_the_panel_level(addon, tmp_path):
    path = _volume_finr(tmp_path)
    scene = bpy.context.scene
    scene.finr3d.resolution = 24
    scene.finr3d.iso_level = 0.3
    assert bpy.ops.finr3d.import_field(filepath=str(path)) == {"FINISHED"}
    obj = bpy.context.active_object
    low = np.array([v.co for v in obj.data.vertices])
    assert "level" in scene.finr3d.info and "PSNR" in scene.finr3d.info
    scene.finr3d.iso_level = 0.7  # a higher level: a smaller surface around the blob's centre
    assert bpy.ops.finr3d.preview_rank() == {"FINISHED"}
    high = np.array([v.co for v in obj.data.vertices])
    assert np.ptp(high, axis=0).max() < np.ptp(low, axis=0).max()
    centre = high.mean(axis=0)
    np.testing.assert_allclose(centre, [7.5, 7.5, 7.5], atol=1.0)  # voxel units, the blob's centre (a short fit)


def test_time_varying_volume_follows_the_scene_frame(addon, tmp_path):
    path = _volume_finr(tmp_path, frames=4)
    scene = bpy.context.scene
    scene.finr3d.resolution = 24
    scene.finr3d.iso_level = 0.5
    scene.frame_set(scene.frame_start)
    assert bpy.ops.finr3d.import_field(filepath=str(path)) == {"FINISHED"}
    obj = bpy.context.active_object
    x0 = np.array([v.co for v in obj.data.vertices])[:, 0].mean()
    scene.frame_set(scene.frame_start + 3)  # the frame-change handler re-extracts at the last frame
    x3 = np.array([v.co for v in obj.data.vertices])[:, 0].mean()
    assert x3 - x0 > 3.0  # the blob moved +0.8 in normalized x: 6 voxels of 15
    assert "frame 3/3" in scene.finr3d.info


def test_layered_field_imports_with_its_hidden_surfaces(addon, tmp_path):
    """A mesh of two interpenetrating boxes fits as two SDF layers; the imported object keeps the knob's face
    inside the body, which the union of the solids has no surface for."""
    import trimesh

    import finr3d
    from finr3d.sdf import SDFTarget

    body = trimesh.creation.box(extents=(1.0, 0.8, 0.8))
    knob = trimesh.creation.box(extents=(0.4, 0.4, 0.4))
    knob.apply_translation((0.5, 0.0, 0.0))
    target = SDFTarget(trimesh.util.concatenate([body, knob]), resolution=24, cache=False)
    assert target.layers == 2
    path = tmp_path / "knob.finr"
    finr3d.fit(target, rank=8, width=16, steps=60, seed=0).save(path)
    bpy.context.scene.finr3d.resolution = 48
    assert bpy.ops.finr3d.import_field(filepath=str(path)) == {"FINISHED"}
    co = np.array([v.co for v in bpy.context.active_object.data.vertices])
    hidden = (np.abs(co[:, 0] - 0.3) < 0.06) & (np.abs(co[:, 1]) < 0.12) & (np.abs(co[:, 2]) < 0.12)
    # the knob's inner face at x = 0.3, inside the body: ~100 lattice vertices in that window; the same short fit
    # with layers=1 puts 24 there (a wobbly union surface), this one 76
    assert hidden.sum() > 50
