"""Fit Selected as a job: export the selection, fit in a worker, build the result object.

:func:`start_fit` is the non-blocking API the operators (and scripts) use:

>>> session = start_fit(bpy.context)      # returns at once; the worker runs
>>> while not session.update(bpy.context.scene): time.sleep(0.1)
>>> obj = session.finish(bpy.context)     # the new "<name>_finr" object

One fit runs at a time (:data:`ACTIVE`). Cancelling kills the worker, removes
the half-written ``.finr`` and temporary files, and creates nothing.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from pathlib import Path

import bpy
import numpy as np

from . import bridge, objects, prefs
from .worker import Job

#: Share of the progress bar for the fit itself; the rest is measuring ranks and meshing.
FIT_SHARE = 0.85
#: The running session, if any.
ACTIVE: "FitSession | None" = None


class SessionError(Exception):
    """Fit Selected cannot start; the message says why."""


class FitSession:
    """One Fit Selected job. Create it with :func:`start_fit`."""

    def __init__(self, context, source, backend: bridge.Backend):
        scene = context.scene
        props = scene.finr3d
        self.scene_name = scene.name
        self.source_name = source.name
        self.source_matrix = np.array(source.matrix_world, np.float64)
        self.collections = [c.name for c in source.users_collection]
        self.settings = props.fit_settings()
        self.preview_rank = min(props.preview_rank, props.rank) if props.rank else props.preview_rank
        self.quantization = props.quantization
        self.backend = backend
        self.output = objects.unique_path(objects.output_folder(scene), f"{source.name}_finr")
        # fitted in the object's own axes, then placed by its world matrix: a turned object fits as well
        verts, faces, placement = objects.local_mesh(source, context.evaluated_depsgraph_get())
        if len(faces) == 0:
            raise SessionError(f"{source.name} has no faces to fit")
        self.workdir = Path(tempfile.mkdtemp(prefix="finr3d-fit-"))
        self.reference = self.workdir / "source.ply"
        self.mesh_file = self.workdir / "preview.ply"
        bridge.write_ply(self.reference, verts, faces)
        commands = [
            bridge.fit_command(backend, self.reference, self.output, self.settings),
            bridge.finish_command(backend, self.output, reference=self.reference, mesh=self.mesh_file,
                                  rank=self.preview_rank, resolution=self.settings["resolution"],
                                  quantization=self.quantization, measure=props.measure_ranks,
                                  placement=placement),
        ]
        self.job = Job(commands, self.workdir, env=backend.env)
        self.started = time.perf_counter()
        self.phase = "starting"
        self.progress = 0.0
        self.eta = -1.0
        self.fit_summary: dict = {}
        self.result_object = None

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> str:
        return self.job.state

    @property
    def finished(self) -> bool:
        return self.job.finished

    def update(self, scene=None) -> bool:
        """Drain worker events into progress/status (and ``scene.finr3d``); True once the job ended."""
        for index, event in self.job.drain():
            if index == 0:
                self._on_fit_event(event)
            else:
                self._on_finish_event(event)
        if scene is not None:
            props = scene.finr3d
            props.running = not self.finished
            props.progress = self.progress
            props.eta = self.eta
            props.status = self.status_text()
        return self.finished

    def _on_fit_event(self, event: dict) -> None:
        phase = event.get("phase")
        if event.get("done"):
            self.fit_summary = event
            self.phase, self.progress, self.eta = "measuring", FIT_SHARE, -1.0
        elif phase == "prepare":
            self.phase = "preparing"
        elif phase in ("distill", "fit"):
            self.phase = "fitting"
            elapsed, eta = event.get("elapsed") or 0.0, event.get("eta")
            if eta is not None and elapsed + eta > 0:
                self.progress = FIT_SHARE * min(1.0, elapsed / (elapsed + eta))
                self.eta = float(eta)

    def _on_finish_event(self, event: dict) -> None:
        if event.get("phase") == "measure":
            count = max(1, int(event.get("count", 1)))
            self.phase = f"measuring rank {event.get('rank')}"
            self.progress = FIT_SHARE + (1 - FIT_SHARE) * 0.9 * int(event.get("index", 0)) / count
        elif event.get("done"):
            self.progress = 1.0

    def status_text(self) -> str:
        state = self.job.state
        if state == "failed":
            return f"Fit failed: {self.job.error}"
        if state == "cancelled":
            return "Fit cancelled"
        if state == "done":
            return f"Fitted {self.source_name} in {time.perf_counter() - self.started:.0f} s"
        if self.phase == "fitting":
            eta = f", {self.eta:.0f} s left" if self.eta >= 0 else ""
            return f"Fitting {self.source_name}{eta}"
        if self.phase == "preparing":
            return f"Preparing the distance field of {self.source_name}"
        return f"{self.phase.capitalize()}..."

    # ---------------------------------------------------------------- control
    def start(self) -> "FitSession":
        global ACTIVE
        ACTIVE = self
        self.job.start()
        return self

    def cancel(self) -> None:
        """Stop the worker; the scene's status then says so (not the last "Fitting..., N s left")."""
        self.job.cancel()
        self.job.wait(10.0)
        scene = bpy.data.scenes.get(self.scene_name)
        if scene is not None:
            self.update(scene)

    def wait(self, scene=None, poll: float = 0.1) -> str:
        """Block until the job ends, updating ``scene.finr3d`` as it goes; returns the final state."""
        while not self.update(scene):
            time.sleep(poll)
        self.update(scene)
        return self.state

    def discard(self) -> None:
        """Remove the temporary files and, unless the job succeeded, the ``.finr`` file."""
        global ACTIVE
        if ACTIVE is self:
            ACTIVE = None
        if self.state != "done" and self.output.exists():
            self.output.unlink()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def finish(self, context):
        """Build the result object after a successful job; None after a failed or cancelled one.

        Always discards the temporary files (and the ``.finr`` of a job that did
        not succeed), so nothing half-made is left behind.
        """
        try:
            if self.state != "done":
                return None
            finish = self.job.results[-1]
            verts, faces = bridge.read_ply(self.mesh_file)
            scene = bpy.data.scenes.get(self.scene_name) or context.scene
            name = f"{self.source_name}_finr"
            collections = [bpy.data.collections.get(n) for n in self.collections]
            collections = [c for c in collections if c is not None] or [scene.collection]
            obj = objects.new_result_object(context, name, verts, faces, matrix=self.source_matrix,
                                            collections=collections)
            info = finish.get("info") or {}
            # what the fit used: the preset's architecture unless the user changed it
            used = {k: info[k] for k in ("decomposition", "backbone", "width") if k in info}
            if "max_rank" in info:
                used["rank"] = info["max_rank"]
            settings = dict(self.settings, **used, source=self.source_name, quantization=self.quantization,
                            fit_seconds=self.fit_summary.get("seconds"), steps=self.fit_summary.get("steps"),
                            metrics={k: v for k, v in self.fit_summary.items()
                                     if k in ("iou", "sdf_mae", "psnr", "loss")},
                            finr3d=self.backend.version)
            sweep = finish.get("sweep") or []
            line = bridge.format_info(info, bridge.nearest_row(sweep, info["rank"]), settings["fit_seconds"]) \
                if info else ""
            objects.set_result_properties(obj, str(self.output), settings, sweep, info=line)
            objects.select_only(context, obj)
            scene.finr3d.info = line
            self.result_object = obj
            return obj
        finally:
            self.discard()


def start_fit(context) -> FitSession:
    """Start fitting the selected mesh; returns the running session at once.

    Raises
    ------
    SessionError, objects.ObjectError, bridge.BridgeError
        Nothing selected, not a mesh, a fit already running, finr3d missing,
        unwritable output folder.
    """
    if ACTIVE is not None and not ACTIVE.finished:
        raise SessionError("a fit is already running; cancel it first")
    source = objects.fit_source(context)
    backend = prefs.backend_for(context)
    try:
        session = FitSession(context, source, backend)
    except OSError as exc:
        raise SessionError(f"could not prepare the fit: {exc}") from exc
    context.scene.finr3d.info = ""
    return session.start()


def cancel_active() -> bool:
    """Cancel the running fit, if any, and discard its files; True when one was running."""
    session = ACTIVE
    if session is None or session.finished:
        return False
    session.cancel()
    session.discard()
    return True


@bpy.app.handlers.persistent
def cancel_on_load(*_args) -> None:
    """Opening another file ends the modal operator: stop its worker too."""
    cancel_active()


# Blender can quit mid-fit without unregistering add-ons; never leave a worker running.
atexit.register(cancel_active)
