"""Signed distance ground truth for triangle meshes.

:class:`SDFTarget` turns a mesh file into a truncated signed distance grid on
the normalized cube ``[-1, 1]^3`` and serves it to the fit loop.
:func:`sdf_grid` computes a truncated SDF on a lattice with a coarse pass plus
narrow-band refinement, so that only voxels near the surface pay for an exact
query. The meshes and their distance / inside-outside queries
(:func:`load_mesh`, :class:`MeshQuery`, winding numbers) live in
:mod:`finr3d.mesh_query` and are re-exported here.

Sign convention: negative inside, positive outside (as open3d).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from finr3d.codec import jsonable
from finr3d.errors import InputError
from finr3d.files import atomic_write
from finr3d import profiles
from finr3d.mesh_query import _CHUNK, SIGN_METHODS, MeshQuery, _auto_sign, load_mesh, mesh_report, winding_number
from finr3d.targets import GridTarget, check_finite

__all__ = [
    "SDFTarget",
    "MeshQuery",
    "load_mesh",
    "mesh_report",
    "sdf_grid",
    "winding_number",
    "SIGN_METHODS",
]

#: Bumped whenever the ground truth algorithm changes, to invalidate disk caches.
_GT_VERSION = 2  # 2: sign islands flipped (flip_sign_islands)

_MIN_RESOLUTION = 8
_MAX_RESOLUTION = 1024
#: ``resolution="auto"``: the lattice tried first, and the finer one taken when it misplaces the surface
AUTO_RESOLUTIONS = (128, 256)
#: ``resolution="auto"`` takes the finer lattice when more than this share of the surface is off by more than
#: a quarter voxel in the coarse grid's trilinear interpolation (thin parts, tight detail). The six shared
#: meshes are at 0-0.6 %, ogre, suzanne and teapot at 2.1-3.3 % (benchmarks/RESULTS.md, "Finer ground truth").
AUTO_SURFACE_FRACTION = 0.01
_WINDING_MARGIN = 0.3  # |w| this close to 1/2 is re-tested on the finer level, not inherited
_LAYER_VALUES = 2 * 512**3  # grid values all layers may take together: 4 layers to 256^3, 2 at 512^3, 1 beyond


# --------------------------------------------------------------------------- SDF grid


def sdf_grid(query: MeshQuery, resolution: int, *, truncation: float | None = 0.1,
             coarse: int | None = None, band: float | None = None, keep: int | None = None,
             islands: bool = True) -> tuple[np.ndarray, dict]:
    """Truncated signed distance on the lattice ``linspace(-1, 1, resolution)^3``.

    Parameters
    ----------
    query : MeshQuery
        Built on the mesh in normalized coordinates.
    resolution : int
        Samples per axis; the array is indexed ``[x, y, z]``.
    truncation : float or None
        Values are ``sign * min(distance, truncation)``. ``None`` computes the
        exact signed distance everywhere (slow: every voxel is queried).
    coarse : int, optional
        Samples per axis of the coarsest pass; by default its spacing is about
        ``truncation / sqrt(3)``.
    band : float, optional
        Query exact distances on the finest level only within ``band`` (< the
        truncation) of the surface: an adaptive fine ground truth. Nodes
        farther out keep a lower bound of their distance (``>= band``), with
        the right sign.
    keep : int, optional
        Also return the complete truncated grid of the level with this many
        samples per axis (a coarser level, e.g. 128 under 255), as
        ``info["kept"]``; it equals ``sdf_grid(query, keep)`` there.
    islands : bool
        Flip sign islands: connected inside regions, and enclosed outside
        regions, that never come within a voxel diagonal of the mesh (see
        :func:`flip_sign_islands`).

    Returns
    -------
    grid : (R, R, R) float32
    info : dict
        ``band_fraction`` (fine voxels whose distance was queried),
        ``sign_fraction`` (fine voxels that needed their own inside test),
        ``levels``, ``seconds`` and ``islands`` (voxels whose sign was flipped).

    Notes
    -----
    Coarse to fine: the lattices of the levels double in resolution up to
    ``R``. Every node ``p`` carries a lower bound ``lb(p)`` of its distance:
    the exact distance where it was queried, else ``lb(c) - |p - c|`` from
    its nearest node ``c`` one level up (distance is 1-Lipschitz). A node is
    queried only if ``lb < truncation + h sqrt(3)/2`` (``h`` the level's
    spacing; the slack keeps it a usable parent) or, on the finest level,
    ``lb < truncation``. When ``lb(c) > |p - c|`` the segment ``pc`` cannot
    cross the surface and ``p`` inherits the sign of ``c``; only the rest (a
    shell about one coarse voxel thick) needs its own inside test. On open
    meshes the winding number also varies continuously near holes (its
    ``1/2`` level set spans them), so there a node inherits only when its
    parent's ``| |w| - 1/2 | >= 0.3``.
    """
    t0 = time.perf_counter()
    R = int(resolution)
    trunc = math.inf if truncation is None else float(truncation)
    if keep is not None:
        if not (_MIN_RESOLUTION <= keep < R and 2 * keep - 1 >= R):
            raise ValueError(f"keep must be a level below the resolution {R} (>= {(R + 1) // 2}), got {keep}")
        sizes = (sdf_grid_levels(keep, trunc, coarse) if keep > 24 and truncation is not None else [keep]) + [R]
    elif truncation is None or trunc >= 2 * math.sqrt(3) or R <= 24:
        sizes = [R]
    else:
        sizes = sdf_grid_levels(R, trunc, coarse)
    fine_need = trunc if band is None else min(trunc, float(band))
    closed = query.sign_method == "raycast"
    parent = None  # (axis, distance lower bound, winding value) of the previous level
    n_dist = n_sign = 0
    for level, n in enumerate(sizes):
        final = level == len(sizes) - 1
        axis = np.linspace(-1.0, 1.0, n)
        h = 2.0 / (n - 1)
        need = fine_need if final else trunc + h * math.sqrt(3) / 2
        lb = np.empty((n, n, n), np.float32)
        wind = np.empty((n, n, n), np.float16)
        if parent is not None:
            p_axis, p_lb, p_wind = parent
            p_idx = np.rint((axis + 1.0) / (p_axis[1] - p_axis[0])).astype(np.int64)
            off = (axis - p_axis[p_idx]) ** 2  # squared offset to the parent, per axis
        planes = max(1, _CHUNK // (n * n))
        for i in range(0, n, planes):
            sl = slice(i, min(n, i + planes))
            if parent is None:
                blb = np.full((sl.stop - i, n, n), -np.inf, np.float32)
                bw = np.zeros((sl.stop - i, n, n), np.float16)
            else:
                ix = np.ix_(p_idx[sl], p_idx, p_idx)
                step = np.sqrt(off[sl, None, None] + off[None, :, None] + off[None, None, :])
                blb = (p_lb[ix] - step).astype(np.float32)
                bw = p_wind[ix]
            blb, bw = blb.reshape(-1), bw.reshape(-1)
            own = blb <= 0  # the parent's empty ball does not reach this node
            if not closed:  # w varies continuously near holes: inherit only a clear decision
                own |= np.abs(np.abs(bw.astype(np.float32)) - 0.5) < _WINDING_MARGIN
            todo = np.flatnonzero(blb < need)
            if len(todo):
                bi, bj, bk = np.unravel_index(todo, (sl.stop - i, n, n))
                blb[todo] = query.distance(np.stack([axis[i + bi], axis[bj], axis[bk]], axis=1))
                n_dist += len(todo) if final else 0
            mine = np.flatnonzero(own)
            if len(mine):
                bi, bj, bk = np.unravel_index(mine, (sl.stop - i, n, n))
                bw[mine] = query.inside_value(np.stack([axis[i + bi], axis[bj], axis[bk]], axis=1))
                n_sign += len(mine) if final else 0
            lb[sl] = blb.reshape(-1, n, n)
            wind[sl] = bw.reshape(-1, n, n)
        parent = (axis, lb, wind)
        if keep is not None and n == keep:
            kept = np.minimum(lb, np.float32(trunc))
            kept[np.abs(wind) > 0.5] *= -1
    grid = np.minimum(lb, np.float32(trunc))
    grid[np.abs(wind) > 0.5] *= -1
    info = {"levels": sizes, "band_fraction": n_dist / R**3, "sign_fraction": n_sign / R**3}
    if islands:
        info["islands"] = flip_sign_islands(grid, 2.0 / (R - 1))
    if keep is not None:
        if islands:
            info["kept_islands"] = flip_sign_islands(kept, 2.0 / (keep - 1))
        info["kept"] = kept
    info["seconds"] = time.perf_counter() - t0
    return grid, info


def sdf_grid_levels(resolution: int, truncation: float, coarse: int | None = None) -> list[int]:
    """Samples per axis of :func:`sdf_grid`'s coarse-to-fine levels (each ``2n - 1``), ending at ``resolution``."""
    R = int(resolution)
    r = int(coarse) if coarse else int(np.clip(math.ceil(2 * math.sqrt(3) / truncation) + 1, 8, R))
    sizes = [r]
    while 2 * sizes[-1] - 1 < R:
        sizes.append(2 * sizes[-1] - 1)
    if sizes[-1] != R:
        sizes.append(R)
    return sizes


def flip_sign_islands(grid: np.ndarray, spacing: float) -> int:
    """Flip, in place, the sign of regions that no surface bounds: returns the voxels flipped.

    The winding number is harmonic off the mesh, so by the maximum principle
    every connected region of ``w > 1/2`` (inside) touches the mesh, and so does
    every region of ``w < 1/2`` (outside) that does not reach the border of the
    cube. A region whose voxels all lie farther than a voxel diagonal
    (``spacing * sqrt(3)``) from the mesh is therefore an artefact of the
    estimate (ray noise, or the ``1/2`` level set drifting off a hole of an
    open mesh), and would mesh as a floating component; it takes the sign of
    its surroundings. Regions are face-connected (6-connected): a voxel that
    meets a genuine region only across an edge or corner meshes as a separate
    blob, so it is judged on its own (a genuine thin part is near the mesh
    anyway).

    grid : (R, R, R) float32 truncated SDF, negative inside; ``|grid|`` is the
    distance to the mesh (or the truncation).
    """
    from scipy import ndimage

    near = np.float32(spacing * math.sqrt(3))
    flipped = 0
    structure = ndimage.generate_binary_structure(3, 1)
    for inside in (True, False):
        region = grid < 0 if inside else grid >= 0
        labels, n = ndimage.label(region, structure=structure)
        if n == 0 or (n == 1 and not inside):
            continue
        far = np.ones(n, bool)
        far[np.unique(labels[region & (np.abs(grid) <= near)]) - 1] = False
        if not inside:  # the exterior reaches the border of the cube
            border = np.unique(np.concatenate([labels[[0, -1]].ravel(), labels[:, [0, -1]].ravel(),
                                               labels[:, :, [0, -1]].ravel()]))
            far[border[border > 0] - 1] = False
        if far.any():
            bad = far[np.maximum(labels, 1) - 1] & (labels > 0)
            grid[bad] *= -1  # |grid| > 0 there, so the flip changes the sign
            flipped += int(bad.sum())
    return flipped


# --------------------------------------------------------------------------- cache


def _cache_dir() -> Path:
    env = os.environ.get("FINR3D_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "finr3d"


def _cache_key(mesh, **params) -> str:
    from finr3d import __version__

    h = hashlib.sha256()
    h.update(np.ascontiguousarray(mesh.vertices, np.float64).tobytes())
    h.update(np.ascontiguousarray(mesh.faces, np.int64).tobytes())
    h.update(json.dumps({**params, "finr3d": __version__, "gt": _GT_VERSION}, sort_keys=True).encode())
    return h.hexdigest()[:40]


def _read_cache(path: Path, resolution: int, truncation: float | None, fine: int | None = None):
    """``(grid, meta, fine_grid or None)`` from a cache file, or None when absent or damaged."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            grid = np.asarray(z["grid"])
            meta = json.loads(bytes(z["meta"]).decode())
            fine_grid = np.asarray(z["fine"]) if fine else None
        bound = math.inf if truncation is None else truncation * (1 + 1e-5)
        layered = grid.ndim == 4 and 2 <= grid.shape[3] <= 4  # one SDF per layer (_layer_grids)
        for g, n in [(grid, resolution)] + ([(fine_grid, fine)] if fine else []):
            if (g.shape[:3] != (n,) * 3 or g.ndim != (4 if layered and g is grid else 3)
                    or g.dtype != np.float32 or not np.isfinite(g).all() or np.abs(g).max() > bound):
                raise ValueError("unexpected contents")
        if not isinstance(meta, dict):
            raise ValueError("unexpected contents")
        return grid, meta, fine_grid
    except Exception as exc:  # any damage means recompute, never a crash
        warnings.warn(f"ignoring unreadable SDF cache file {path.name} ({type(exc).__name__}); recomputing",
                      stacklevel=3)
        return None


def _write_cache(path: Path, grid: np.ndarray, meta: dict, fine: np.ndarray | None = None) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta_bytes = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        extra = {} if fine is None else {"fine": fine}
        atomic_write(path, lambda tmp: np.savez_compressed(tmp, grid=grid, meta=meta_bytes, **extra))
    except OSError as exc:  # a read-only cache must not stop a fit
        warnings.warn(f"could not write the SDF cache {path} ({exc})", stacklevel=3)


# --------------------------------------------------------------------------- target


class SDFTarget(GridTarget):
    """A triangle mesh as a truncated signed distance field on ``[-1, 1]^3``.

    Parameters
    ----------
    source : path or trimesh.Trimesh or trimesh.Scene
        obj, ply, stl, off, glb or gltf; see :func:`load_mesh`.
    resolution : int or "auto"
        Ground-truth lattice samples per axis (8..1024). Between samples the
        target interpolates trilinearly, exactly at the samples. ``"auto"``:
        128, or 256 when the 128 grid misplaces more than
        :data:`AUTO_SURFACE_FRACTION` of the surface by a quarter voxel
        (:meth:`surface_error`; thin parts), at about 4x the ground-truth time;
        with ``detail_resolution`` set, 128 (the detail is the finer band).
    sign : {"auto", "raycast", "winding"}
        Inside test. ``raycast`` (ray parity, open3d) is exact and fast on one
        watertight, consistently oriented part; ``winding`` (generalized
        winding number) is robust on open, multi-part and self-intersecting
        meshes. ``auto`` picks by :func:`mesh_report`.
    margin : float
        Empty fraction of the half-width kept around the mesh: its bounding box
        is centred and scaled uniformly into ``[-1 + margin, 1 - margin]``.
    truncation : float or None
        Distance scale of the field's profile in normalized units: the field
        predicts ``tanh(sdf / truncation)`` from distances exact up to twice
        it (``profile="tanh"``), or ``clip(sdf / truncation, -1, 1)``
        (``profile="clamp"``). ``None``: no clamp and no profile, every voxel
        computed exactly (slow).
    profile : {"tanh", "clamp"}
        The value profile (:mod:`finr3d.profiles`). ``tanh``, the default, is
        smooth: its Tucker model codes 23-48 % smaller at equal Chamfer than
        the clamp's kinked offset surfaces, and fits closer.
    cache : bool
        Also cache the grid on disk in ``$FINR3D_CACHE`` (default
        ``~/.cache/finr3d``), keyed by the mesh content and these settings.
    layers : "auto" or int
        ``"auto"`` (the default): the mesh's parts that interpenetrate go to
        different layers (:func:`finr3d.layers.assign_layers`, at most 4; 2 at
        512^3, 1 above, to bound memory), each
        an SDF channel of its own, so that the surfaces inside the union of the
        solids (eyes set into a head, a spout pushed into a body) survive; a
        mesh of one part, or of parts side by side, is one layer. An integer
        caps the layers (1: the union alone). Local detail (``detail_resolution``)
        codes one channel, so it fits the union.
    detail_resolution : int, "auto" or None
        Lattice of the finer ground truth in the narrow band that the fit's
        local detail is coded on (:meth:`fit_detail`). ``auto``: ``2 R - 1``
        (255 for ``R = 128``; its even nodes are the ``R`` lattice) for
        ``R <= 160``, else none; ``None`` (the default): no fine ground truth
        and no detail. Detail buys accuracy, not bytes: on bunny it takes the
        Chamfer-L1 from ~2e-4 to 7.5e-5 for ~240 KB more (benchmarks/RESULTS.md,
        "Compression"), so it is opt-in (``finr3d fit --detail``).
    detail_band : float
        Half-width, in normalized units, of the band where the fine ground
        truth is exact and the detail is kept (default 2.5 fine voxels).
    detail_step : float or None
        Quantization step of the detail in normalized units (a node is off by
        at most half of it). ``None``: 0.1 fine voxel, i.e. at the accuracy of
        the fine lattice. Larger steps make a smaller file.

    Attributes
    ----------
    mesh : trimesh.Trimesh
        The cleaned mesh in world units.
    report : dict
        :func:`mesh_report` plus ``sign_method``, ``removed_faces``,
        ``gt_seconds``, ``band_fraction`` and ``cache``.
    center, scale : (3,) float, float
        ``world = normalized * scale + center``.
    sdf : (R, R, R) float32
        The signed distance in normalized units, indexed ``[x, y, z]``,
        clamped at :attr:`clip` (``truncation`` for the clamp profile, twice
        it for tanh); of a layered mesh, the union's (the minimum over layers).
    layers : int
        SDF channels (:attr:`channels`); 1 unless parts interpenetrate.
    sdf_layers : (R, R, R, L) float32 or None
        Each layer's signed distance, when ``layers > 1``.
    trim : bool
        The mesh is open: meshing drops the faces where the field jumps sign
        without a surface (:data:`finr3d.meshing.TRIM_JUMP`; FIELD flag bit 4).
    sdf_fine : (F, F, F) float32 or None
        The finer ground truth on ``detail_resolution`` nodes: exact within
        ``detail_band`` of the surface, a lower bound of the distance (with the
        right sign) farther out.

    Notes
    -----
    The field predicts ``tanh(sdf / truncation)`` (or the clamp) in
    ``[-1, 1]``, negative inside; :meth:`to_values` maps it back to signed
    distance in world units (``value_scale = truncation * scale`` is the world
    distance of one field unit at the surface).
    """

    #: best-state tracking and early stop follow the sub-grid IoU
    main_metric = "iou"

    def __init__(self, source, *, resolution="auto", sign: str = "auto", margin: float = 0.1,
                 truncation: float | None = 0.1, cache: bool = True, detail_resolution=None,
                 detail_band: float | None = None, detail_step: float | None = None,
                 profile: str = profiles.DEFAULT_PROFILE, layers="auto"):
        if isinstance(resolution, str) and resolution == "auto":
            self._auto(source, sign=sign, margin=margin, truncation=truncation, cache=cache,
                       detail_resolution=detail_resolution, detail_band=detail_band, detail_step=detail_step,
                       profile=profile, layers=layers)
            return
        if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
            raise ValueError(f"resolution must be an integer or 'auto', got {resolution!r}")
        if not _MIN_RESOLUTION <= resolution <= _MAX_RESOLUTION:
            raise ValueError(f"resolution must be between {_MIN_RESOLUTION} and {_MAX_RESOLUTION}, got {resolution}")
        if sign not in SIGN_METHODS:
            raise ValueError(f"sign must be one of {', '.join(SIGN_METHODS)}, got {sign!r}")
        if not 0.0 <= margin < 0.5:
            raise ValueError(f"margin must be in [0, 0.5), got {margin}")
        if truncation is not None and not (truncation > 0 and math.isfinite(truncation)):
            raise ValueError(f"truncation must be a positive number or None, got {truncation}")
        profiles.check(profile)
        max_layers = _check_layers(layers)
        fine = _detail_resolution(detail_resolution, int(resolution))
        if detail_band is not None and not (0 < detail_band and math.isfinite(detail_band)):
            raise ValueError(f"detail_band must be a positive number (normalized units), got {detail_band}")
        if detail_step is not None and not (0 < detail_step and math.isfinite(detail_step)):
            raise ValueError(f"detail_step must be a positive number (normalized units), got {detail_step}")
        t0 = time.perf_counter()
        name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "<mesh>"
        mesh, removed = load_mesh(source)
        report = mesh_report(mesh)
        sign_method = _auto_sign(report) if sign == "auto" else sign

        lo, hi = mesh.bounds
        self.center = (lo + hi) / 2.0
        self.scale = float(np.max(hi - lo)) / 2.0 / (1.0 - margin)
        self.mesh = mesh
        self.margin = float(margin)
        self.truncation = None if truncation is None else float(truncation)
        self.profile = "clamp" if truncation is None else profile
        self.clip = None if truncation is None else self.truncation * profiles.reach(self.profile)
        self.resolution = int(resolution)
        self.sign = sign

        if self.truncation is None:
            fine = None  # the exact, untruncated grid has no band
        if fine or self.truncation is None:
            max_layers = 1  # the local detail codes one channel
        # every layer is a full R^3 grid (and its float32 field copy): at most _LAYER_VALUES values in all
        max_layers = max(1, min(max_layers, _LAYER_VALUES // self.resolution**3))
        self.detail_resolution = fine
        fine_h = 2.0 / (fine - 1) if fine else 0.0
        self.detail_band = float(detail_band) if detail_band is not None else 2.5 * fine_h
        if fine and self.truncation is not None:
            self.detail_band = min(self.detail_band, self.truncation)
        self.detail_step = float(detail_step) if detail_step is not None else 0.1 * fine_h
        params = dict(resolution=self.resolution, sign=sign_method, margin=self.margin, truncation=self.clip)
        if fine:
            params.update(fine=fine, band=self.detail_band)
        if max_layers > 1:
            params.update(layers=max_layers)
        cache_path = _cache_dir() / f"sdf-{_cache_key(mesh, **params)}.npz" if cache else None
        cached = _read_cache(cache_path, self.resolution, self.clip, fine) if cache_path else None
        if cached is not None:
            grid, info, fine_grid = cached
            cache_state = "hit"
        else:
            normalized = (np.asarray(mesh.vertices) - self.center) / self.scale
            labels, layer_info = (None, None)
            if max_layers > 1:
                from finr3d.layers import assign_layers

                t_layers = time.perf_counter()
                labels, layer_info = assign_layers(normalized, mesh.faces, max_layers=max_layers)
                layer_info["seconds"] = round(time.perf_counter() - t_layers, 3)
            if labels is not None and layer_info["layers"] > 1:
                grid, info = _layer_grids(mesh, normalized, labels, layer_info, self.resolution, self.clip, sign)
                fine_grid = None
            elif fine:
                query = MeshQuery(normalized, mesh.faces, sign=sign_method)
                fine_grid, info = sdf_grid(query, fine, truncation=self.clip, band=self.detail_band,
                                           keep=self.resolution)
                grid = info["kept"]
            else:
                query = MeshQuery(normalized, mesh.faces, sign=sign_method)
                fine_grid = None
                grid, info = sdf_grid(query, self.resolution, truncation=self.clip)
            if layer_info is None or layer_info["layers"] == 1:
                info = {"band_fraction": float(info["band_fraction"]), "sign_fraction": float(info["sign_fraction"]),
                        "levels": [int(n) for n in info["levels"]], "winding_refined": int(query.stats["refined"]),
                        "islands": int(info.get("kept_islands", info.get("islands", 0))),
                        "seconds": round(float(info["seconds"]), 3)}
            if layer_info is not None:
                info["layers"] = layer_info
            cache_state = "off"
            if cache_path:
                _write_cache(cache_path, grid, info, fine_grid)
                cache_state = "miss"
        self.sdf_layers = grid if grid.ndim == 4 else None
        self.sdf = grid.min(axis=3) if grid.ndim == 4 else grid  # the union of the layers' solids
        self.sdf_fine = fine_grid
        self.layers = 1 if grid.ndim == 3 else int(grid.shape[3])
        self.report = {**report, "sign_method": sign_method, "removed_faces": removed,
                       "band_fraction": info.get("band_fraction", 1.0),
                       "sign_fraction": info.get("sign_fraction", 1.0),
                       "gt_seconds": round(time.perf_counter() - t0, 3), "cache": cache_state}
        if "layers" in info:
            self.report["layers"] = info["layers"]
        # an open mesh: where the field jumps sign without a surface (the winding number's 1/2 level spanning
        # a hole) there is no surface of the input; meshing drops those faces (finr3d.meshing.TRIM_JUMP)
        self.trim = bool(report.get("boundary_edges", 0) > 0 and self.truncation is not None)

        norm_scale = self.truncation if self.truncation is not None else max(float(np.abs(grid).max()), 1e-6)
        self._norm_scale = norm_scale  # normalized SDF units per field unit (at the surface)
        self.saturation = profiles.saturation(self.profile)
        # the GridTarget attributes, set directly: the grid is already in field units after one division
        self.kind = "sdf"
        self.axis_names = ("x", "y", "z")
        self.shape = (self.resolution,) * 3
        self.channels = self.layers
        self.value_offset = 0.0
        self.value_scale = norm_scale * self.scale  # field unit -> world distance
        self.bounds = np.stack([self.center - self.scale, self.center + self.scale], axis=1)
        self.source = name
        stacked = grid if grid.ndim == 4 else grid[..., None]
        self.data = torch.from_numpy(profiles.to_field(stacked, np.float32(norm_scale), self.profile)
                                     .astype(np.float32))

    def _auto(self, source, **options) -> None:
        """``resolution="auto"``: the coarse lattice, or the fine one where the coarse misplaces the surface."""
        t0 = time.perf_counter()
        coarse, fine = AUTO_RESOLUTIONS
        if options.get("detail_resolution") is not None:
            # local detail brings its own finer ground truth in the band, defined over the coarse lattice (a
            # 256 lattice has none): keep the coarse one rather than drop the detail that was asked for
            self.__init__(source, resolution=coarse, **options)
            probe = {"resolution": coarse, "chosen": coarse, "skipped": "detail_resolution"}
        else:
            first = SDFTarget(source, resolution=coarse, **options)
            off = first.surface_error()
            if off > AUTO_SURFACE_FRACTION:
                self.__init__(source, resolution=fine, **options)
            else:
                self.__dict__.update(first.__dict__)
            probe = {"resolution": coarse, "off_quarter_voxel": round(float(off), 5),
                     "threshold": AUTO_SURFACE_FRACTION, "chosen": self.resolution}
        self.report = {**self.report, "gt_seconds": round(time.perf_counter() - t0, 3), "resolution_probe": probe}

    def surface_error(self, samples: int = 20000, seed: int = 0, tolerance: float = 0.25) -> float:
        """Share of the mesh surface the ground-truth grid misplaces by more than ``tolerance`` voxels.

        ``samples`` points on the mesh (area-weighted, seeded) are looked up in :attr:`sdf` by trilinear
        interpolation, as the fit sees the target between samples; on the surface the true distance is 0.
        """
        import trimesh
        from scipy.ndimage import map_coordinates

        if self.mesh is None:
            raise ValueError("surface_error needs the mesh (a target from a stored grid has none)")
        points, _ = trimesh.sample.sample_surface(self.mesh, int(samples), seed=seed)
        x = (np.asarray(points, np.float64) - self.center) / self.scale
        index = (x + 1.0) * ((self.resolution - 1) / 2.0)
        grids = [self.sdf] if self.sdf_layers is None else [self.sdf_layers[..., k] for k in range(self.layers)]
        # a sample lies on its own layer's surface (a surface inside another layer's solid is not in the union)
        d = np.min([np.abs(map_coordinates(g.astype(np.float64), index.T, order=1, mode="nearest")) for g in grids],
                   axis=0)
        h = 2.0 / (self.resolution - 1)
        return float(np.mean(np.abs(d) > tolerance * h))

    @classmethod
    def from_grid(cls, sdf, *, center, scale: float, truncation: float | None = 0.1, margin: float = 0.1,
                  source: str = "", report: dict | None = None,
                  profile: str = profiles.DEFAULT_PROFILE) -> "SDFTarget":
        """A target from a stored truncated SDF grid, without the mesh (no trimesh or open3d needed).

        ``sdf`` is a cubic ``(R, R, R)`` grid in normalized units indexed
        ``[x, y, z]`` (:attr:`sdf` of a target built from a mesh; it is
        clamped at the profile's reach, twice ``truncation`` for tanh),
        ``center`` and ``scale`` its world transform. Such a target fits like the one it
        came from; :attr:`mesh` is None, so :meth:`evaluate` (which scores
        against the mesh) is not available.
        """
        grid = np.ascontiguousarray(np.asarray(sdf, np.float32))
        if grid.ndim != 3 or len(set(grid.shape)) != 1:
            raise InputError(f"expected a cubic (R, R, R) SDF grid, got shape {grid.shape}")
        if not _MIN_RESOLUTION <= grid.shape[0] <= _MAX_RESOLUTION:
            raise InputError(f"the grid resolution must be between {_MIN_RESOLUTION} and {_MAX_RESOLUTION}, "
                             f"got {grid.shape[0]}")
        check_finite(grid, "the SDF grid")
        if not (float(scale) > 0 and math.isfinite(float(scale))):
            raise InputError(f"scale must be a positive number, got {scale!r}")
        profiles.check(profile)
        self = cls.__new__(cls)
        self.center = np.asarray(center, np.float64).reshape(3)
        self.scale = float(scale)
        self.mesh = None
        self.margin = float(margin)
        self.truncation = None if truncation is None else float(truncation)
        self.profile = "clamp" if truncation is None else profile
        self.clip = None if truncation is None else self.truncation * profiles.reach(self.profile)
        if self.clip is not None:
            grid = np.clip(grid, -self.clip, self.clip)
        self.resolution = int(grid.shape[0])
        self.sign = "stored"
        self.layers, self.sdf_layers, self.trim = 1, None, False
        self.detail_resolution, self.sdf_fine = None, None
        self.detail_band, self.detail_step = 0.0, 0.0
        self.sdf = grid
        self.report = dict(report or {}, cache="stored grid")
        norm_scale = self.truncation if self.truncation is not None else max(float(np.abs(grid).max()), 1e-6)
        self._norm_scale = norm_scale
        self.saturation = profiles.saturation(self.profile)
        self.kind = "sdf"
        self.axis_names = ("x", "y", "z")
        self.shape = (self.resolution,) * 3
        self.channels = 1
        self.value_offset = 0.0
        self.value_scale = norm_scale * self.scale
        self.bounds = np.stack([self.center - self.scale, self.center + self.scale], axis=1)
        self.source = str(source)
        self.data = torch.from_numpy(profiles.to_field(grid[..., None], np.float32(norm_scale), self.profile)
                                     .astype(np.float32))
        return self

    # -- transform

    @property
    def world_from_normalized(self) -> np.ndarray:
        """(4, 4) float: ``world = normalized * scale + center``."""
        m = np.eye(4)
        m[:3, :3] *= self.scale
        m[:3, 3] = self.center
        return m

    def describe(self) -> dict:
        out = super().describe()
        out.update(
            world_from_normalized=self.world_from_normalized.tolist(),
            mesh_report=jsonable(self.report),
            resolution=self.resolution,
            detail_resolution=self.detail_resolution,
            truncation=self.truncation,
            profile=self.profile,
            margin=self.margin,
            sign=self.sign,
            layers=self.layers,
            trim=self.trim,
        )
        return out

    # -- training signal

    # sample: GridTarget's (trilinear, ``(n_x, n_y, n_z, 1)`` in field units ``sdf / truncation``), so that
    # GridTarget.sampler interpolates on the fitting device

    def loss(self, pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        """Near-surface weighted, truncation-aware L1.

        In field units (truth in ``[-s, s]``, ``s`` the profile's saturation: 1
        for clamp, tanh(2) for tanh)::

            e = pred - truth
            e = min(e, 0) where truth >= s       (far outside: only too-small pred is wrong)
            e = max(e, 0) where truth <= -s      (far inside: only too-large pred is wrong)
            w = 1 + 4 exp(-|truth| / 0.25)
            loss = sum(w |e|) / sum(w)

        The one-sided error replaces clamping ``pred``: it lets the field
        exceed the truncation freely but still pulls back a prediction of the
        wrong sign (a clamp would give it zero gradient).
        """
        e = pred - truth
        sat = self.saturation * (1.0 - 1e-6)
        e = torch.where(truth >= sat, e.clamp(max=0.0), e)
        e = torch.where(truth <= -sat, e.clamp(min=0.0), e)
        w = profiles.surface_weight(truth)
        return (w * e.abs()).sum() / w.sum()

    def metric(self, pred: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
        """Sub-grid scores: occupancy IoU of ``pred < 0`` vs ``truth < 0``; distance MAE in the band of
        exact distances (``|truth|`` below the saturation) in normalized units; PSNR of the clamped values
        (range 2)."""
        pred = pred.detach().float()
        truth = truth.detach().float()
        if self.layers > 1:  # the solid is the union of the layers' solids (the distance band: every layer)
            p_in, t_in = pred.amin(-1) < 0, truth.amin(-1) < 0
        else:
            p_in, t_in = pred < 0, truth < 0
        union = int((p_in | t_in).sum())
        iou = float((p_in & t_in).sum()) / union if union else 1.0
        sat = self.saturation * (1.0 - 1e-6)
        band = truth.abs() < sat
        if self.profile == "tanh":  # compare distances, not squashed values
            dist = lambda v: torch.atanh(v.clamp(-sat, sat))  # noqa: E731
            mae = float((dist(pred) - dist(truth)).abs()[band].mean()) * self._norm_scale if band.any() else 0.0
        else:
            mae = float((pred - truth).abs()[band].mean()) * self._norm_scale if band.any() else 0.0
        mse = float(torch.mean((pred.clamp(-1, 1) - truth) ** 2))
        return {"iou": iou, "sdf_mae": mae, "psnr": 10 * math.log10(4.0 / max(mse, 1e-20))}

    def fit_detail(self, field, rank=None, *, step: float | None = None, band: float | None = None,
                   brick: int = 8, **kwargs):
        """The sparse local residual that brings ``field`` to the fine ground truth near the surface.

        On the :attr:`sdf_fine` lattice, keeps ``truth - field`` on the nodes
        within ``band`` of the surface or of the field's own zero level set
        (where a spurious surface would be removed), quantized with ``step``
        (both in normalized units; defaults :attr:`detail_step`,
        :attr:`detail_band`), and codes it with
        :func:`finr3d.local_detail.fit_local_detail` (``brick`` and ``kwargs``
        go there). Returns a :class:`~finr3d.local_detail.LocalDetail` in field
        units (``sdf / truncation``, the units of ``field.grid``), or None when
        this target has no fine ground truth or the field needs no detail.
        """
        if self.sdf_fine is None or self.layers > 1:
            return None
        from finr3d.local_detail import fit_local_detail  # needs zstandard: only when there is detail to code

        step = self.detail_step if step is None else float(step)
        band = self.detail_band if band is None else float(band)
        if not (step > 0 and band > 0 and math.isfinite(step) and math.isfinite(band)):
            raise ValueError(f"step and band must be positive numbers (normalized units), got {step}, {band}")
        n = self.detail_resolution
        pred = _stored_grid(field, rank, n)
        norm = np.float32(self._norm_scale)
        dist = profiles.to_distance(pred, norm, self.profile)  # normalized units
        truth = self.sdf_fine
        mask = (np.abs(truth) < band) | (np.abs(dist) < band)
        # in field units; at the surface one field unit is _norm_scale of distance for either profile
        residual = np.where(mask, profiles.to_field(truth, norm, self.profile) - pred, 0.0).astype(np.float32)
        detail = fit_local_detail(residual, mask=mask, step=step / self._norm_scale, brick=brick, **kwargs)
        return detail if detail.bricks else None

    def evaluate(self, field, rank=None, resolution: int = 256, **kwargs) -> dict[str, float]:
        """Extract the field's mesh (world units) and score it against :attr:`mesh`.

        Returns :func:`finr3d.geometry_metrics.mesh_metrics` plus ``grid_iou``
        and ``grid_sdf_mae`` on this target's lattice.
        """
        from finr3d.geometry_metrics import mesh_metrics
        from finr3d.meshing import extract_mesh

        coords = [self.axis_coords(i) for i in range(3)]
        pred = torch.as_tensor(np.asarray(field.grid(coords, rank=rank, squeeze=False), np.float32))
        grid_scores = self.metric(pred.reshape(self.data.shape), self.data)
        try:
            mesh = extract_mesh(field, resolution, rank=rank)
        except RuntimeError as exc:  # no surface at all: the worst score, not a crash
            warnings.warn(str(exc), stacklevel=2)
            out = {"iou": 0.0, "iou_near": 0.0}
        else:
            out = mesh_metrics(mesh, self.mesh, **kwargs)
        out["grid_iou"] = grid_scores["iou"]
        out["grid_sdf_mae"] = grid_scores["sdf_mae"]
        return out


def _stored_grid(field, rank, n: int) -> np.ndarray:
    """``field`` on the ``n^3`` lattice as its compact file decodes it (the cosine interpolant of the networks'
    samples, which differs from the networks between samples), else as the network computes it."""
    from finr3d import codec, compact_io

    model = field if rank is None else field.truncate(rank)
    if compact_io.can_compact(model) is None:
        blob = compact_io.encode_field(model, quantization="fp32", detail=False, metadata=False)
        return np.asarray(codec.decode_grid(blob, resolution=n, detail=False), np.float32)
    axis = torch.linspace(-1.0, 1.0, n)
    return np.asarray(model.grid([axis] * 3, squeeze=False), np.float32)[..., 0]


def _detail_resolution(value, resolution: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"detail_resolution must be an integer, 'auto' or None, got {value!r}")
        return 2 * resolution - 1 if resolution <= 160 else None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"detail_resolution must be an integer, 'auto' or None, got {value!r}")
    if not resolution < value <= 2 * resolution - 1 or value > _MAX_RESOLUTION:
        raise ValueError(f"detail_resolution must be in {resolution + 1}..{min(2 * resolution - 1, _MAX_RESOLUTION)} "
                         f"(finer than resolution={resolution}, at most one level finer), got {value}")
    return int(value)


def _check_layers(value) -> int:
    """Most layers ``layers=`` allows: ``"auto"`` is :data:`finr3d.layers.MAX_LAYERS`, 1 turns layering off."""
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"layers must be 'auto' or an integer 1..4, got {value!r}")
        return 4
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= 4:
        raise ValueError(f"layers must be 'auto' or an integer 1..4, got {value!r}")
    return int(value)


def _layer_grids(mesh, normalized, labels, layer_info, resolution: int, clip, sign: str):
    """``(R, R, R, L)`` truncated SDF grids, one per layer of :func:`finr3d.layers.assign_layers`, and their info."""
    t0 = time.perf_counter()
    n_layers = int(layer_info["layers"])
    grids = np.empty((resolution,) * 3 + (n_layers,), np.float32)
    band = signs = islands = 0.0
    methods = []
    for k in range(n_layers):
        query = MeshQuery(normalized, mesh.faces[labels == k], sign=sign)  # "auto": by the layer's own report
        methods.append(query.sign_method)
        grids[..., k], info = sdf_grid(query, resolution, truncation=clip)
        band += info["band_fraction"]
        signs += info["sign_fraction"]
        islands += info.get("islands", 0)
    layer_info["sign_methods"] = methods
    return grids, {"band_fraction": float(band), "sign_fraction": float(signs), "islands": int(islands),
                   "levels": [int(n) for n in info["levels"]], "seconds": round(time.perf_counter() - t0, 3)}
