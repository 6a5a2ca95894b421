"""The add-on's link to finr3d: find it, call it, and move meshes across.

Nothing here imports ``bpy``. The module runs in two places:

- inside Blender, imported by the add-on (``from . import bridge``);
- as a script under an external interpreter that has finr3d, when finr3d is not
  importable in Blender's own Python (``python bridge.py preview MODEL.finr ...``).
  Each command prints one JSON object per line on stdout; the last line holds
  the result. User errors exit 2 with one line on stderr, like the finr3d CLI.

Where finr3d lives decides how each operation runs (:class:`Backend`):

========================  ==============================  ==============================
operation                 finr3d importable in Blender    only an external interpreter
========================  ==============================  ==============================
fit (+ measure ranks)     worker process                  worker process
preview, import, export   in Blender's process (fast)     one short process per call
========================  ==============================  ==============================

Meshes cross process boundaries as binary little-endian PLY files written and
read by :func:`write_ply` / :func:`read_ply` (numpy only: trimesh may be absent
in Blender).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = [
    "BridgeError",
    "Backend",
    "find_backend",
    "resolve_python",
    "fit_command",
    "finish_command",
    "write_ply",
    "read_ply",
    "read_summary",
    "preview",
    "export",
    "finish",
    "nearest_row",
    "format_info",
]

#: This file, run as a script by worker processes and external interpreters.
SCRIPT = Path(__file__).resolve()
#: Seconds a probe of an external interpreter may take (it imports finr3d lazily: no torch).
PROBE_SECONDS = 30.0
#: Seconds one external preview/export call may take (torch import plus marching cubes).
CALL_SECONDS = 300.0
_ERROR_PREFIX = "finr3d: error: "
#: Surface and volume samples per measured rank (finr3d's default, 100k, takes seconds per rank).
MEASURE_SAMPLES = 30_000
#: Scores kept per measured rank.
MEASURED = ("iou", "iou_near", "chamfer_l1", "hausdorff95", "fscore_1", "normal_consistency")


class BridgeError(Exception):
    """A problem the user can fix; the message says what happened and how to fix it."""


# --------------------------------------------------------------------------- backend


@dataclasses.dataclass(frozen=True)
class Backend:
    """How this Blender session reaches finr3d.

    Attributes
    ----------
    python : str
        Interpreter that runs worker processes (``-m finr3d fit`` and this script).
    inprocess : bool
        finr3d is importable in Blender's Python: previews, import and export run
        here, without a process start (about 3 s of torch import saved per call).
    env : dict
        Extra environment for worker processes (``PYTHONPATH`` so that the worker
        finds the same finr3d this process imports).
    version : str
        finr3d version the worker interpreter reports.
    """

    python: str
    inprocess: bool
    env: dict
    version: str

    def describe(self) -> str:
        where = "Blender's Python" if self.inprocess and self.python == sys.executable else self.python
        return f"finr3d {self.version} via {where}"


def finr3d_importable() -> bool:
    """finr3d can be imported in this process (cheap: no import happens)."""
    return importlib.util.find_spec("finr3d") is not None


def resolve_python(path: str) -> str:
    """An interpreter path from a preference value: the executable itself or a venv folder."""
    p = Path(os.path.expanduser(path))
    if p.is_dir():
        for rel in ("bin/python3", "bin/python", "Scripts/python.exe", "python.exe"):
            if (p / rel).is_file():
                return str(p / rel)
        raise BridgeError(f"{p} is a folder without bin/python (or Scripts\\python.exe); "
                          "set the Python interpreter or virtual environment that has finr3d installed")
    if not p.is_file():
        raise BridgeError(f"Python interpreter {p} does not exist; fix the path in the F-INR add-on preferences")
    if not os.access(p, os.X_OK):
        raise BridgeError(f"{p} is not executable; point the F-INR preferences at a Python interpreter")
    return str(p)


_PROBES: dict = {}
#: Seconds a failed probe is remembered: the panel redraws often, and a fix (pip install) should show soon.
PROBE_RETRY = 10.0


def _probe(python: str, env: dict) -> str:
    """finr3d's version under ``python``; cached per interpreter (failures for :data:`PROBE_RETRY` s)."""
    key = (python, os.stat(python).st_mtime_ns, tuple(sorted(env.items())))
    cached = _PROBES.get(key)
    if cached is not None and (cached[0] is not None or time.monotonic() - cached[2] < PROBE_RETRY):
        if cached[0] is None:
            raise BridgeError(cached[1])
        return cached[0]
    code = "import finr3d, sys; print(finr3d.__version__); sys.stdout.flush()"
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=PROBE_SECONDS,
                              env={**os.environ, **env})
        problem = None if done.returncode == 0 else (
            f"{python} cannot import finr3d; install it there (pip install finr3d) "
            "or choose another interpreter in the F-INR add-on preferences")
    except (OSError, subprocess.TimeoutExpired) as exc:
        done, problem = None, f"could not run {python} ({exc}); check the F-INR add-on preferences"
    if problem is not None:
        _PROBES[key] = (None, problem, time.monotonic())
        raise BridgeError(problem)
    lines = done.stdout.strip().splitlines()
    _PROBES[key] = (lines[-1] if lines else "?", "", time.monotonic())
    return _PROBES[key][0]


def find_backend(python_path: str = "") -> Backend:
    """Decide where finr3d runs.

    Parameters
    ----------
    python_path : str
        The add-on preference: an interpreter or venv that has finr3d. When set,
        worker processes use it (for example a CUDA build of torch); previews
        still run in-process when finr3d is importable here too.

    Raises
    ------
    BridgeError
        finr3d is neither importable here nor reachable through ``python_path``.
    """
    inprocess = finr3d_importable()
    if python_path.strip():
        python = resolve_python(python_path.strip())
        env = {}
    elif inprocess:
        import finr3d

        python = sys.executable
        # workers must find the same finr3d, even when it came from a path added at runtime
        root = str(Path(finr3d.__file__).resolve().parents[1])
        env = {"PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    else:
        raise BridgeError("finr3d was not found: install it into Blender's Python "
                          "(blender_python -m pip install finr3d) or set a Python interpreter that has it "
                          "in Preferences > Add-ons > F-INR")
    if inprocess and python == sys.executable:
        import finr3d

        return Backend(python, True, env, finr3d.__version__)
    return Backend(python, inprocess, env, _probe(python, env))


# --------------------------------------------------------------------------- commands


#: The panel's value of a setting left to the mesh preset (:mod:`finr3d.presets`).
PRESET = "preset"


def fit_command(backend: Backend, source, output, settings: dict) -> list[str]:
    """The worker's ``finr3d fit`` command line for ``settings`` (the panel's values).

    ``settings`` keys: seconds, resolution, and optionally decomposition,
    backbone (``"preset"``: the mesh preset's), rank, width, steps (0: the
    preset's, or none), nested_ranks, device, seed. Only the settings the user
    changed reach the command, so the fit takes everything else from the mesh
    preset, as ``finr3d fit`` does.
    """
    cmd = [backend.python, "-m", "finr3d", "fit", str(source), "-o", str(output), "--progress", "json",
           "--kind", "sdf", "--quantization", "fp32", "--seconds", f"{float(settings['seconds']):g}",
           "--resolution", str(int(settings["resolution"]))]
    for key in ("decomposition", "backbone"):
        if settings.get(key) not in (None, "", PRESET):
            cmd += [f"--{key}", str(settings[key])]
    for key in ("rank", "width", "steps"):
        if settings.get(key):
            cmd += [f"--{key}", str(int(settings[key]))]
    if settings.get("nested_ranks"):
        cmd += ["--nested-ranks"]
    if settings.get("device") and settings["device"] != "auto":
        cmd += ["--device", str(settings["device"])]
    if settings.get("seed") is not None:
        cmd += ["--seed", str(int(settings["seed"]))]
    return cmd


def finish_command(backend: Backend, model, *, reference, mesh, rank: int, resolution: int,
                   quantization: str, measure: bool, placement=None) -> list[str]:
    """The worker command run after a fit: measure ranks, place the field (4x4 ``placement``), extract the
    first preview mesh."""
    cmd = [backend.python, str(SCRIPT), "finish", str(model), "--mesh", str(mesh), "--rank", str(int(rank)),
           "--resolution", str(int(resolution)), "--quantization", quantization]
    if measure and reference:
        cmd += ["--reference", str(reference)]
    if placement is not None:
        cmd += ["--placement", json.dumps(np.asarray(placement, float).reshape(-1).tolist())]
    return cmd


# --------------------------------------------------------------------------- PLY


_PLY_HEADER = ("ply\nformat binary_little_endian 1.0\ncomment written by the finr3d Blender add-on\n"
               "element vertex {v}\nproperty float x\nproperty float y\nproperty float z\n"
               "element face {f}\nproperty list uchar int vertex_indices\nend_header\n")
_FACE = np.dtype([("n", "u1"), ("v", "<i4", (3,))])


def write_ply(path, vertices, faces) -> None:
    """Write a triangle mesh as binary little-endian PLY.

    vertices : (V, 3) float, stored as float32; faces : (F, 3) int.
    """
    v = np.ascontiguousarray(vertices, dtype="<f4").reshape(-1, 3)
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if len(f) and (f.min() < 0 or f.max() >= len(v)):
        raise BridgeError(f"face indices out of range for {len(v)} vertices")
    rows = np.empty(len(f), _FACE)
    rows["n"] = 3
    rows["v"] = f
    with open(path, "wb") as fh:
        fh.write(_PLY_HEADER.format(v=len(v), f=len(f)).encode("ascii"))
        fh.write(v.tobytes())
        fh.write(rows.tobytes())


def read_ply(path) -> tuple[np.ndarray, np.ndarray]:
    """Read a PLY written by :func:`write_ply`: ((V, 3) float32, (F, 3) int32).

    Only that layout is accepted (binary little-endian, float xyz, uchar/int
    triangle lists); anything else raises :class:`BridgeError`.
    """
    data = Path(path).read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise BridgeError(f"{path}: not a PLY file")
    header = data[:end].decode("ascii", "replace").splitlines()
    counts = {}
    for line in header:
        parts = line.split()
        if parts[:1] == ["format"] and parts[1] != "binary_little_endian":
            raise BridgeError(f"{path}: expected a binary little-endian PLY, got {parts[1]}")
        if parts[:1] == ["element"]:
            counts[parts[1]] = int(parts[2])
    nv, nf = counts.get("vertex", 0), counts.get("face", 0)
    body = data[end + len(b"end_header\n"):]
    if len(body) != nv * 12 + nf * _FACE.itemsize:
        raise BridgeError(f"{path}: {len(body)} bytes of data do not match {nv} vertices and {nf} triangles")
    verts = np.frombuffer(body[: nv * 12], "<f4").reshape(nv, 3)
    rows = np.frombuffer(body[nv * 12:], _FACE)
    if nf and (np.any(rows["n"] != 3)):
        raise BridgeError(f"{path}: only triangle faces are supported")
    faces = rows["v"].astype(np.int32)
    if nf and (faces.min() < 0 or faces.max() >= nv):
        raise BridgeError(f"{path}: face indices out of range")
    return verts.copy(), faces


# --------------------------------------------------------------------------- .finr summaries


def read_summary(path, backend: Backend | None = None) -> dict:
    """What the panel needs from a ``.finr`` header (``finr3d.codec``: numpy and zstandard only).

    Returns kind, decomposition, ranks, max_rank (what the rank slider can
    reach), backbone, parameters and the fit history (seconds, steps, metrics).
    Files that are not 3-D SDF fields raise BridgeError.
    """
    if backend is not None and not backend.inprocess:
        return _run_script(backend, ["summary", str(path)])
    try:
        from finr3d import codec
        from finr3d.errors import FormatError
    except ImportError as exc:
        raise BridgeError(f"finr3d cannot read .finr files in this Python ({exc})") from exc

    try:
        meta = codec.describe_file(path)  # verified, and a weights header checked in full
    except FileNotFoundError as exc:
        raise BridgeError(f"{path}: no such file") from exc
    except (FormatError, OSError) as exc:
        raise BridgeError(f"{Path(path).name}: {exc}") from exc
    return _summary(meta)


def _meshable(kind, ndim) -> bool:
    """SDF fields (3-D) and volume fields (3-D, or 4-D with time) are meshed; images and video are not."""
    return (kind == "sdf" and ndim == 3) or (kind == "volume" and ndim in (3, 4))


def _summary(meta: dict) -> dict:
    kind, ndim = meta.get("kind"), int(meta.get("ndim", 0))
    if not _meshable(kind, ndim):
        raise BridgeError(f"the file holds a {kind} field with {ndim} axes; "
                          "the add-on meshes SDF and volume fields (fit a mesh or a volume, not an image or video)")
    from finr3d.ranks import largest_rank

    ranks = [int(r) for r in meta.get("ranks") or [1]]
    top = largest_rank(str(meta.get("decomposition")), ranks)
    hist = meta.get("history") or {}
    target = meta.get("target") or {}
    shape = target.get("shape") or []
    lo, scale = float(target.get("value_offset", 0.0)), float(target.get("value_scale", 1.0))
    return {"kind": kind, "decomposition": meta.get("decomposition"), "ranks": ranks,
            "max_rank": top, "backbone": meta.get("backbone"), "parameters": meta.get("parameters"),
            "seconds": hist.get("seconds"), "steps": hist.get("steps"), "metrics": hist.get("metrics") or {},
            "world_from_normalized": target.get("world_from_normalized"),
            "source": target.get("source"),
            # volumes: frames of a time-varying field (0 for 3-D) and the value range the iso level spans
            "frames": int(shape[0]) if kind == "volume" and ndim == 4 and shape else 0,
            "value_range": [lo, lo + scale] if kind == "volume" else None}


# --------------------------------------------------------------------------- operations
#
# Each public operation takes an optional Backend. With ``backend=None`` or an
# in-process backend it calls finr3d here; otherwise it runs this file under
# the backend's interpreter. Both paths return the same values.

_USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
                NotADirectoryError, RuntimeError, OSError)
_FIELDS: dict = {}


def _load(path):
    """A cached FactorizedField (key: path, size and modification time)."""
    import finr3d

    if not os.path.isfile(path):
        raise BridgeError(f"{path}: no such .finr file")
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    field = _FIELDS.get(key)
    if field is None:
        field = finr3d.load(path)
        if not _meshable(field.kind, field.ndim):
            raise BridgeError(f"{Path(path).name} holds a {field.kind} field with {field.ndim} axes; "
                              "the add-on meshes SDF and volume fields")
        _FIELDS.clear()  # one field at a time: a preview session works on one object
        _FIELDS[key] = field
    return field


def _guarded(fn, *args, **kwargs):
    """Call ``fn``; turn finr3d's user-facing errors into BridgeError with a one-line message."""
    from finr3d.errors import Finr3dError

    try:
        return fn(*args, **kwargs)
    except BridgeError:
        raise
    except ImportError as exc:
        raise BridgeError(f"finr3d cannot run in this Python ({exc}); reinstall finr3d with its dependencies "
                          "or set a Python interpreter that has it in the F-INR add-on preferences") from exc
    except (Finr3dError,) + _USER_ERRORS as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BridgeError(msg) from exc


def _preview_here(path, rank: int, resolution: int, quantization: str, level_fraction=None, frame=None):
    t0 = time.perf_counter()
    field = _load(path)
    top = field.max_rank
    r = max(1, min(int(rank), top))
    model = field.truncate(r)
    info = {}
    if field.kind == "volume":
        from finr3d.volume import iso_level, volume_mesh

        frames = int(field.target_info["shape"][0]) if field.ndim == 4 else 0
        t = None if not frames else max(0, min(int(frame or 0), frames - 1))
        mesh = volume_mesh(model, resolution=int(resolution), fraction=level_fraction, frame=t)
        info.update(level=iso_level(model, fraction=level_fraction), frame=t, frames=frames)
    else:
        mesh = model.to_mesh(resolution=int(resolution))
    info.update({"rank": r, "max_rank": top, "ranks": list(model.ranks), "params": model.parameter_count(),
                 "decomposition": field.config.decomposition, "backbone": field.config.backbone,
                 "width": field.config.width,
                 "bytes": model.file_bytes(quantization=quantization), "quantization": quantization,
                 "resolution": int(resolution), "vertices": len(mesh.vertices), "faces": len(mesh.faces)})
    info["seconds"] = round(time.perf_counter() - t0, 3)
    return np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int32), info


def preview(path, *, rank: int, resolution: int, quantization: str = "fp16", backend: Backend | None = None,
            level_fraction: float | None = None, frame: int | None = None):
    """The mesh of the rank-``rank`` prefix of a field, in world units.

    Returns
    -------
    vertices : (V, 3) float32, world units
    faces : (F, 3) int32
    info : dict
        rank (clipped to the trained rank), max_rank, params, bytes (file size
        at ``quantization``), vertices, faces, seconds.
    """
    if backend is None or backend.inprocess:
        return _guarded(_preview_here, path, rank, resolution, quantization, level_fraction, frame)
    with tempfile.TemporaryDirectory(prefix="finr3d-preview-") as tmp:
        out = Path(tmp) / "preview.ply"
        extra = [] if level_fraction is None else ["--level-fraction", str(float(level_fraction))]
        extra += [] if frame is None else ["--frame", str(int(frame))]
        info = _run_script(backend, ["preview", str(path), "--rank", str(int(rank)), "--resolution",
                                     str(int(resolution)), "--quantization", quantization, "--mesh", str(out),
                                     *extra])
        verts, faces = read_ply(out)
    return verts, faces, info


def _export_here(path, out, rank, quantization, overwrite, moved):
    import finr3d
    from finr3d.placement import move_info, placement_delta

    field = finr3d.load(path)  # a private copy: the placement change must not touch the cache
    if moved is not None:
        # the object was moved after the fit: the exported field lands where the object is now
        now, before = moved
        field.target_info = move_info(field.target_info, placement_delta(now, before))
    r = None if rank is None else max(1, min(int(rank), field.max_rank))
    nbytes = field.save(out, rank=r, quantization=quantization, overwrite=overwrite)
    return {"bytes": int(nbytes), "rank": r if r is not None else field.max_rank, "path": str(out)}


def export(path, out, *, rank=None, quantization: str = "fp16", overwrite: bool = False, moved=None,
           backend: Backend | None = None) -> dict:
    """Write the rank-``rank`` prefix of the field in ``path`` to ``out`` at ``quantization``.

    ``moved`` (optional): the object's (world matrix now, world matrix at the fit), 4x4 each; the exported
    field then lands where the object is now (:func:`finr3d.placement.placement_delta`). Returns bytes,
    rank and path. An existing ``out`` raises BridgeError unless ``overwrite``.
    """
    out = Path(out)
    if out.suffix.lower() != ".finr":
        raise BridgeError(f"{out.name}: export to a .finr file")
    if out.exists() and not overwrite:
        raise BridgeError(f"{out} exists; enable Overwrite or choose another name")
    if not out.parent.is_dir():
        raise BridgeError(f"{out.parent}: no such folder")
    if not os.access(out.parent, os.W_OK):
        raise BridgeError(f"{out.parent}: the folder is not writable; choose another one")
    if backend is None or backend.inprocess:
        return _guarded(_export_here, path, out, rank, quantization, overwrite, moved)
    args = ["export", str(path), "--out", str(out), "--quantization", quantization]
    if rank is not None:
        args += ["--rank", str(int(rank))]
    if overwrite:
        args.append("--overwrite")
    if moved is not None:
        args += ["--moved", json.dumps([np.asarray(m, float).reshape(-1).tolist() for m in moved])]
    return _run_script(backend, args)


def finish(path, *, mesh, rank: int, resolution: int, quantization: str, reference=None, placement=None,
           emit=print) -> dict:
    """After a fit (in the worker): measure rank prefixes, place the field, then write the preview mesh.

    Each power-of-two rank up to the trained one is scored against
    ``reference`` by :func:`finr3d.sweep.rank_sweep` at ``resolution`` (IoU,
    Chamfer as a fraction of the reference diagonal, ...), with its parameter
    count and file bytes at ``quantization``. ``placement`` (4x4, optional)
    moves the field from the frame it was fitted in (the object's own axes) to
    the world (:func:`finr3d.placement.move_info`); the ``.finr`` is rewritten
    in place. ``emit(dict)`` receives ``{"phase": "measure", "rank", "index",
    "count"}`` before each rank. Returns ``{"info": preview info, "sweep": rows}``.
    """
    rows = []
    if reference:
        from finr3d.sweep import rank_sweep

        sweep = rank_sweep(_load(path), str(reference), quantizations=(quantization,), resolution=int(resolution),
                           callback=emit, n_samples=MEASURE_SAMPLES, n_volume=MEASURE_SAMPLES)
        rows = [{"rank": row["rank"], "params": row["params"], "quantization": quantization,
                 "bytes": row[f"bytes_{quantization}"], **{k: row[k] for k in MEASURED if k in row}}
                for row in sweep]
    if placement is not None:
        from finr3d.placement import move_info

        field = _load(path)
        field.target_info = move_info(field.target_info, placement)
        field.save(path, quantization="fp32", overwrite=True)  # the worker's fit wrote fp32
    verts, faces, info = _preview_here(path, rank, resolution, quantization)
    write_ply(mesh, verts, faces)
    return {"info": info, "sweep": rows}


def nearest_row(rows, rank: int):
    """The measured row for ``rank``, else the closest measured rank below it (None when none)."""
    best = None
    for row in rows or []:
        if int(row.get("rank", 0)) <= rank and (best is None or row["rank"] > best["rank"]):
            best = row
    return best


def format_info(info: dict, row: dict | None = None, fit_seconds=None) -> str:
    """One info line: rank, parameters, bytes, IoU/Chamfer at the rank, fit time."""
    parts = [f"rank {info['rank']}/{info['max_rank']}", f"{info['params']:,} params",
             f"{_human_bytes(info['bytes'])} {info.get('quantization', '')}".strip()]
    if info.get("level") is not None:
        parts.append(f"level {info['level']:.4g}")
    if info.get("frames"):
        parts.append(f"frame {info['frame']}/{info['frames'] - 1}")
    if row is None and info.get("psnr") is not None:
        parts.append(f"PSNR {info['psnr']:.2f} dB (value range)")
    if row is not None:
        where = "" if int(row["rank"]) == int(info["rank"]) else f" (r{row['rank']})"
        if row.get("iou") is not None:
            parts.append(f"IoU {row['iou']:.3f}{where}")
        if row.get("chamfer_l1") is not None:
            parts.append(f"Chamfer {100 * row['chamfer_l1']:.2f}% of diagonal{where}")
    if fit_seconds:
        parts.append(f"fit {fit_seconds:.0f} s")
    return " · ".join(parts)


def _human_bytes(n) -> str:
    n = float(n)
    for unit in ("B", "KB", "MB"):
        if n < 1000 or unit == "MB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} MB"


# --------------------------------------------------------------------------- external calls


def _run_script(backend: Backend | None, args: list[str]) -> dict:
    """Run this file under the backend's interpreter; return its last JSON line."""
    if backend is None:
        raise BridgeError("finr3d is not importable here; set a Python interpreter in the F-INR preferences")
    try:
        done = subprocess.run([backend.python, str(SCRIPT), *args], capture_output=True, text=True,
                              timeout=CALL_SECONDS, env={**os.environ, **backend.env})
    except subprocess.TimeoutExpired as exc:
        raise BridgeError(f"finr3d took longer than {CALL_SECONDS:.0f} s for {args[0]}; "
                          "try a lower resolution") from exc
    except OSError as exc:
        raise BridgeError(f"could not run {backend.python} ({exc})") from exc
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        msg = lines[-1] if lines else f"finr3d {args[0]} failed with exit code {done.returncode}"
        raise BridgeError(msg.removeprefix(_ERROR_PREFIX))
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise BridgeError(f"finr3d {args[0]} printed no result")
    return json.loads(lines[-1])


def main(argv=None) -> int:
    """``python bridge.py COMMAND ...``: the operations above for another process."""
    import argparse

    # this file's folder holds the add-on's modules; keep them from shadowing installed packages
    here = str(SCRIPT.parent)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    parser = argparse.ArgumentParser(prog="bridge.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("summary")
    p.add_argument("model")
    p = sub.add_parser("preview")
    p.add_argument("model")
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--resolution", type=int, required=True)
    p.add_argument("--quantization", default="fp16")
    p.add_argument("--mesh", required=True)
    p.add_argument("--level-fraction", type=float)
    p.add_argument("--frame", type=int)
    p = sub.add_parser("export")
    p.add_argument("model")
    p.add_argument("--out", required=True)
    p.add_argument("--rank", type=int)
    p.add_argument("--quantization", default="fp16")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--moved")
    p = sub.add_parser("finish")
    p.add_argument("model")
    p.add_argument("--mesh", required=True)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--resolution", type=int, required=True)
    p.add_argument("--quantization", default="fp16")
    p.add_argument("--reference")
    p.add_argument("--placement")
    args = parser.parse_args(argv)

    def emit(obj):
        print(json.dumps(obj), flush=True)

    try:
        if args.command == "summary":
            result = read_summary(args.model)
        elif args.command == "preview":
            verts, faces, result = preview(args.model, rank=args.rank, resolution=args.resolution,
                                           quantization=args.quantization, level_fraction=args.level_fraction,
                                           frame=args.frame)
            write_ply(args.mesh, verts, faces)
        elif args.command == "export":
            moved = json.loads(args.moved) if args.moved else None
            result = export(args.model, args.out, rank=args.rank, quantization=args.quantization,
                            overwrite=args.overwrite, moved=moved)
        else:
            result = _guarded(finish, args.model, mesh=args.mesh, rank=args.rank, resolution=args.resolution,
                              quantization=args.quantization, reference=args.reference, emit=emit,
                              placement=json.loads(args.placement) if args.placement else None)
    except BridgeError as exc:
        print(f"{_ERROR_PREFIX}{exc}", file=sys.stderr)
        return 2
    emit({"done": True, **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
