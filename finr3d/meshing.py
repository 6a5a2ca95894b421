"""Meshes from fields: slab-wise marching cubes and mesh export.

:func:`extract_mesh` evaluates a field slab by slab along x and runs
marching cubes (scikit-image, Lewiner) on each slab. Consecutive slabs share
their boundary plane, so the vertices on it are computed from identical values
in both slabs and are welded exactly by position: the chunked result equals a
one-shot extraction, while memory stays bounded by one slab (1024^3 fits in
well under 3 GB). Slabs without a sign change are skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from finr3d.errors import InputError, SurfaceError

__all__ = ["extract_mesh", "extract_arrays", "march_slabs", "save_mesh", "MESH_EXPORTS"]

#: Mesh file types :func:`save_mesh` writes, by suffix (trimesh file types).
MESH_EXPORTS = {".ply": "ply", ".obj": "obj", ".glb": "glb", ".stl": "stl"}

_MIN_RES, _MAX_RES = 2, 4096
_SLAB_VALUES = 1 << 24  # samples per slab (64 MiB of float32) unless slab= is given
_BLOCK = 32  # cells per side of the marching-cubes sub-blocks along y and z
_LIFT = 2.0**-12  # samples exactly at the level are moved this far above it (relative to max(1, |level|))
#: An SDF changes by at most one lattice step along a lattice edge (it is 1-Lipschitz). Where a field of an open
#: mesh (``target_info["trim"]``) changes by more than this many steps across a crossing edge, its
#: sign jumps without a surface (the winding number's 1/2 level spanning a hole): those faces are dropped.
TRIM_JUMP = 1.5


def extract_mesh(field, resolution=256, *, rank=None, level: float = 0.0, bounds=None, slab: int | None = None,
                 callback=None):
    """Extract the ``level`` iso-surface of a 3-D scalar field as a mesh.

    Parameters
    ----------
    field : FactorizedField
        Anything with ``grid(coords, rank=None, *, squeeze=False)`` returning a
        ``(n_x, n_y, n_z, C)`` array (channel 0 is meshed) and, optionally,
        ``target_info`` (a target's ``describe()``) for the world transform
        and value scaling.
    resolution : int or (3,) ints
        Samples per axis, 2..4096, over ``bounds``.
    rank : int, optional
        Evaluate the field truncated to this rank (``None``: full rank).
    level : float
        Iso-value in the target's value units (``value = field * value_scale +
        value_offset``, through the SDF profile of :mod:`finr3d.profiles`):
        for SDF fields a signed distance in world units, so ``level > 0``
        dilates the surface (within the band of exact distances only).
    bounds : (3, 2) or (2, 3) float, optional
        Sub-box in normalized coordinates; default the whole ``[-1, 1]^3``.
    slab : int, optional
        Planes per slab (>= 2). Default keeps one slab near 16M samples.
    callback : callable, optional
        ``callback({"phase": "mesh", "planes": done, "total": resolution})`` after each slab is evaluated.

    Returns
    -------
    trimesh.Trimesh
        In world units when ``field.target_info`` has ``world_from_normalized``
        (else normalized), faces wound outward for fields that are negative
        inside (SDFs), duplicate vertices welded.

    Raises
    ------
    ValueError
        Resolution, bounds or slab out of range.
    SurfaceError
        A ``RuntimeError``: no surface at ``level`` (the field is everywhere
        above or below it; the message gives its range), or NaN/Inf values.
    """
    import trimesh

    verts, faces = extract_arrays(field, resolution, rank=rank, level=level, bounds=bounds, slab=slab,
                                  callback=callback)
    return trimesh.Trimesh(verts, faces, process=False)


def extract_arrays(field, resolution=256, *, rank=None, level: float = 0.0, bounds=None, slab: int | None = None,
                   callback=None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`extract_mesh` without trimesh: the mesh as ``(verts (V, 3) float64, faces (F, 3) int64)`` arrays.

    Same parameters, transform, winding and errors; it needs only numpy,
    torch and scikit-image (a machine without trimesh, such as the GPU
    benchmark's, meshes with it).
    """
    import torch

    shape = _check_resolution(resolution)
    box = _check_bounds(bounds)
    if not np.isfinite(float(level)):
        raise ValueError(f"level must be a finite number, got {level!r}")
    if slab is not None and (isinstance(slab, bool) or not isinstance(slab, (int, np.integer)) or slab < 2):
        raise ValueError(f"slab must be an integer >= 2 (planes per slab), got {slab!r}")
    info = getattr(field, "target_info", None) or {}
    from finr3d.profiles import from_signal, to_signal

    iso = from_signal(float(level), info)
    axes = [np.linspace(box[i, 0], box[i, 1], shape[i]).astype(np.float32) for i in range(3)]
    yz = [torch.from_numpy(axes[1]), torch.from_numpy(axes[2])]
    sdf = info.get("kind") == "sdf"
    layers = int(getattr(field, "channels", info.get("channels", 1)) or 1) if sdf else 1
    trim = None
    if sdf and info.get("trim"):
        # distances in normalized units from the signal's (world) ones: a file without metadata has no
        # truncation, but always its value scale and placement
        from finr3d.placement import linear_scale

        matrix = info.get("world_from_normalized")
        unit = linear_scale(matrix) if matrix is not None else 1.0
        unit = unit if np.isfinite(unit) and unit > 0 else 1.0
        step = (box[:, 1] - box[:, 0]) / (np.asarray(shape) - 1)
        trim = (lambda v: to_signal(v, info) / unit, step, TRIM_JUMP)

    reader = field.plane_reader if hasattr(field, "plane_reader") else None
    if reader is not None:
        read = reader([torch.from_numpy(a) for a in axes], rank=rank)
    else:  # anything with grid(): evaluate each slab's planes
        def read(i0: int, i1: int, out):
            values = np.asarray(field.grid([torch.from_numpy(axes[0][i0:i1]), *yz], rank=rank, squeeze=False))
            out[...] = np.moveaxis(values.reshape(i1 - i0, shape[1], shape[2], -1)[..., :layers], -1, 0)
            return out

    def planes(i0: int, i1: int, out: np.ndarray) -> np.ndarray:
        if reader is not None and getattr(field, "channels", layers) != layers:  # meshed channels only
            out[...] = read(i0, i1)[:layers]
        else:
            read(i0, i1, out)
        if callback is not None:
            callback({"phase": "mesh", "planes": int(i1), "total": int(shape[0])})
        return out

    verts, faces, (vmin, vmax) = march_slabs(planes, shape, iso, slab=slab, trim=trim, channels=layers)
    if len(faces) == 0:
        lo, hi = sorted(float(v) for v in to_signal(np.array([vmin, vmax], np.float64), info))  # level's units
        if vmin > iso:
            what = "everywhere above it (positive: all outside for an SDF)"
        elif vmax < iso:
            what = "everywhere below it (negative: all inside for an SDF)"
        else:
            what = "touching it without crossing"
        if vmin == vmax:
            what += f", a constant field ({lo:.4g}: nothing was fitted, or the input was constant)"
        raise SurfaceError(
            f"No surface found at level {level}: the field is {what}; its values range over "
            f"{lo:.4g}..{hi:.4g}, so pick a level inside that range, a higher rank, or check the fit"
        )
    step = (box[:, 1] - box[:, 0]) / (np.asarray(shape) - 1)
    verts = box[:, 0] + verts * step
    matrix = info.get("world_from_normalized")
    if matrix is not None:
        m = np.asarray(matrix, np.float64)
        verts = verts @ m[:3, :3].T + m[:3, 3]
        if np.linalg.det(m[:3, :3]) < 0:
            faces = faces[:, ::-1]
    return verts, faces


def march_slabs(planes, shape, level: float, *, slab: int | None = None, trim=None, channels: int = 1):
    """Marching cubes over x-slabs sharing boundary planes, welded exactly.

    Parameters
    ----------
    planes : callable ``(i0, i1, out)``
        Writes the field's values on x-planes ``i0..i1-1`` into ``out``, a
        ``(channels, i1 - i0, n_y, n_z)`` float32 view (channel first).
    shape : (3,) int
    level : float
        Iso-value in the units ``planes`` returns.
    slab : int, optional
        Planes per slab, at least 2.
    trim : (callable, (3,) float, float), optional
        ``(distance, step, limit)``: drop the faces with a vertex on a lattice
        edge whose two values, as ``distance(values)``, differ by more than
        ``limit`` times the edge's ``step`` (a sign jump of an SDF, not a surface).
    channels : int
        More than 1: ``planes`` returns that many channels (the layers of an
        SDF), each meshed and welded on its own; the result is their union.

    Returns
    -------
    verts : (V, 3) float64
        Index-space coordinates (``0..n-1`` per axis).
    faces : (F, 3) int64
        Wound so that normals point toward increasing values (outward for
        an SDF that is negative inside).
    value_range : (float, float)
        Minimum and maximum value seen.
    """
    nx, ny, nz = (int(s) for s in shape)
    channels = int(channels)
    if slab is None:
        slab = max(2, _SLAB_VALUES // max(1, ny * nz * channels))
    slab = int(min(slab, nx))
    verts, faces = [[] for _ in range(channels)], [[] for _ in range(channels)]
    n_verts = [0] * channels
    vmin, vmax = np.inf, -np.inf
    buffer = np.empty((channels, slab, ny, nz), np.float32)  # per channel: the shared plane, then the new ones
    x_planes = []
    i0 = 0
    while i0 < nx - 1:
        i1 = min(nx, i0 + slab)  # planes i0..i1-1
        if i0 == 0:
            planes(0, i1, buffer[:, :i1])
        else:
            buffer[:, 0] = last  # before any lift: this slab lifts the same samples itself
            planes(i0 + 1, i1, buffer[:, 1:i1 - i0])
        last = buffer[:, i1 - i0 - 1].copy()
        for c in range(channels):
            block = buffer[c, :i1 - i0]
            lo, hi = float(block.min()), float(block.max())  # NaN propagates into both
            if not np.isfinite(lo) or not np.isfinite(hi):
                raise SurfaceError(f"the field has NaN/Inf values in planes {i0}..{i1 - 1}; it cannot be meshed "
                                   "(a damaged file, or a diverged fit: refit it)")
            vmin, vmax = min(vmin, lo), max(vmax, hi)
            on_level = block == level
            if on_level.any():  # lift exact hits: marching cubes would put coincident vertices on a corner
                block[on_level] = np.float32(level + _LIFT * max(1.0, abs(level)))
                lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
            if lo <= level <= hi and lo < hi:
                for v, f in _march_blocks(block, level, trim=trim):
                    v[:, 0] += i0
                    verts[c].append(v)
                    faces[c].append(f + n_verts[c])
                    n_verts[c] += len(v)
        i0 = i1 - 1
        x_planes.append(i0)
    out_v, out_f, offset = [], [], 0
    for c in range(channels):  # each channel welded on its own: two layers' surfaces may touch
        if faces[c]:
            v, f = _weld(np.concatenate(verts[c]), np.concatenate(faces[c]), x_planes)
            out_v.append(v)
            out_f.append(f + offset)
            offset += len(v)
    if not out_f:
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64), (float(vmin), float(vmax))
    if len(out_f) == 1:
        return out_v[0], out_f[0], (float(vmin), float(vmax))
    return np.concatenate(out_v), np.concatenate(out_f), (float(vmin), float(vmax))


def _march_blocks(block: np.ndarray, level: float, size: int = _BLOCK, trim=None):
    """Marching cubes on the ``size``-cell sub-blocks (sharing boundary planes) that cross ``level``.

    Skipping the rest saves most of the time on typical shapes, where the
    surface touches a small share of the cells. Neighbouring sub-blocks
    share the offsets of the axes along their common plane, so the vertices
    on it come out bit-identical and weld exactly.
    """
    from skimage.measure import marching_cubes

    ny, nz = block.shape[1:]
    col_min, col_max = block.min(axis=0), block.max(axis=0)  # one pass; blocks then reduce (ny, nz) maps
    for j0 in range(0, max(1, ny - 1), size):
        j1 = min(ny, j0 + size + 1)
        for k0 in range(0, max(1, nz - 1), size):
            k1 = min(nz, k0 + size + 1)
            lo, hi = col_min[j0:j1, k0:k1].min(), col_max[j0:j1, k0:k1].max()
            if not (lo <= level <= hi and lo < hi):
                continue
            try:
                v, f, _, _ = marching_cubes(np.ascontiguousarray(block[:, j0:j1, k0:k1]), level)
            except (RuntimeError, ValueError):  # no crossing inside this block
                continue
            if len(f) and trim is not None:
                f = f[~_jumps(block[:, j0:j1, k0:k1], v, trim)[f].any(axis=1)]
            if len(f):
                v = v.astype(np.float64)
                v[:, 1] += j0
                v[:, 2] += k0
                yield v, f.astype(np.int64)


def _jumps(block: np.ndarray, verts: np.ndarray, trim) -> np.ndarray:
    """``(V,)`` bool: the vertices (block index space) on a lattice edge across which the distance jumps."""
    distance, step, limit = trim
    base = np.floor(verts).astype(np.int64)
    frac = verts - base
    axis = np.argmax(frac, axis=1)  # a marching-cubes vertex lies on one lattice edge: one fractional coordinate
    on_edge = frac[np.arange(len(verts)), axis] > 0
    top = np.asarray(block.shape) - 1
    base = np.minimum(base, top)
    other = base.copy()
    other[np.arange(len(verts)), axis] += 1
    other = np.minimum(other, top)
    a = distance(block[base[:, 0], base[:, 1], base[:, 2]].astype(np.float64))
    b = distance(block[other[:, 0], other[:, 1], other[:, 2]].astype(np.float64))
    return on_edge & (np.abs(a - b) > limit * np.asarray(step, np.float64)[axis])


def _weld(verts: np.ndarray, faces: np.ndarray, x_planes, size: int = _BLOCK):
    """Merge vertices at identical positions, drop collapsed faces and unused vertices.

    Only vertices that can have a twin are compared: those on a shared slab
    plane (x in ``x_planes``) or block plane (y or z a multiple of ``size``),
    and those exactly on a lattice point (a corner value equal to the level,
    where several edges yield the same vertex).
    """
    x, y, z = verts[:, 0], verts[:, 1], verts[:, 2]
    corner = (x == np.floor(x)) & (y == np.floor(y)) & (z == np.floor(z))
    shared = np.isin(x, np.asarray(x_planes, np.float64)) | (y % size == 0) | (z % size == 0) | corner
    cand = np.flatnonzero(shared)
    cv = verts[cand]
    order = np.lexsort((cv[:, 2], cv[:, 1], cv[:, 0]))
    sv = cv[order]
    first = np.ones(len(sv), bool)
    first[1:] = np.any(sv[1:] != sv[:-1], axis=1)
    leader = cand[order][np.maximum.accumulate(np.where(first, np.arange(len(sv)), 0))]
    remap = np.arange(len(verts))
    remap[cand[order]] = leader  # every twin points at the first of its group
    faces = remap[faces]
    keep = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    faces = faces[keep]
    used = np.zeros(len(verts), bool)
    used[faces.ravel()] = True
    index = np.cumsum(used) - 1
    return verts[used], index[faces]


def _check_resolution(resolution) -> tuple[int, int, int]:
    values = [resolution] * 3 if np.ndim(resolution) == 0 else list(resolution)
    if len(values) != 3:
        raise ValueError(f"resolution must be an int or 3 ints, got {resolution!r}")
    out = []
    for r in values:
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)):
            raise ValueError(f"resolution must be an integer, got {r!r}")
        if not _MIN_RES <= r <= _MAX_RES:
            raise ValueError(f"resolution must be between {_MIN_RES} and {_MAX_RES}, got {r}")
        out.append(int(r))
    return tuple(out)


def _check_bounds(bounds) -> np.ndarray:
    if bounds is None:
        return np.array([[-1.0, 1.0]] * 3)
    box = np.asarray(bounds, np.float64)
    if box.shape == (2, 3):
        box = box.T
    if box.shape != (3, 2) or not np.isfinite(box).all() or np.any(box[:, 1] <= box[:, 0]):
        raise ValueError(f"bounds must be [[xmin, xmax], [ymin, ymax], [zmin, zmax]] with min < max "
                         f"(normalized coordinates), got {np.asarray(bounds).tolist()}")
    return box


def save_mesh(mesh, path, *, overwrite: bool = False) -> Path:
    """Write ``mesh`` to ``path`` (ply, obj, glb or stl by suffix), atomically.

    Raises
    ------
    InputError
        Unsupported suffix.
    FileExistsError
        ``path`` exists and ``overwrite`` is false.
    FileNotFoundError
        The folder does not exist.
    """
    path = Path(path)
    file_type = MESH_EXPORTS.get(path.suffix.lower())
    if file_type is None:
        raise InputError(f"{path.name}: cannot write {path.suffix or 'a file without suffix'!r}; "
                         f"use one of {' '.join(sorted(MESH_EXPORTS))}")
    if path.is_dir():
        raise InputError(f"{path} is a directory; give a file name such as {path / 'mesh.ply'}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --force (CLI) or overwrite=True to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"{parent}: no such folder; create it first")
    data = _export(mesh, file_type, path.name)
    if isinstance(data, str):
        data = data.encode()
    from finr3d.files import atomic_write_bytes

    atomic_write_bytes(path, data)
    return path


def float32_error(lo, hi) -> float:
    """Rounding error of float32 coordinates in the box ``lo..hi``, as a fraction of its largest extent.

    ``max|x| * 2^-24 / extent``: about 6e-8 for a box around the origin, 0.5 for
    a unit sphere at an offset of 1e8.
    """
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    extent = float(np.max(hi - lo))
    reach = float(np.max(np.abs(np.concatenate([lo, hi]))))
    if extent <= 0:
        return 0.0 if reach == 0 else np.inf
    return reach * 2.0**-24 / extent


#: Largest float32 rounding error (fraction of the mesh size) accepted in formats that store float32.
MAX_FLOAT32_ERROR = 1e-5


def check_precision(lo, hi, suffix: str, name: str = "the mesh") -> None:
    """Refuse STL and glTF output (float32 by their specs) where float32 would visibly move the vertices."""
    error = float32_error(lo, hi)
    if suffix.lower() in (".stl", ".glb") and error > MAX_FLOAT32_ERROR:
        raise InputError(f"{name}: {suffix} stores float32 coordinates, which would move vertices by "
                         f"{error:.2g} of the mesh size (it lies far from the origin for its size); "
                         "write .ply or .obj, which keep double precision")


def _export(mesh, file_type: str, name: str):
    """The file's bytes, keeping float64 coordinates wherever float32 would lose them."""
    lo, hi = mesh.bounds if len(mesh.vertices) else (np.zeros(3), np.zeros(3))
    check_precision(lo, hi, "." + file_type, name)
    lossy = float32_error(lo, hi) > MAX_FLOAT32_ERROR
    if file_type == "ply" and lossy:
        return _ply_double(mesh)
    if file_type == "obj":
        # trimesh writes a fixed number of decimals: enough for 9 significant digits of the mesh size
        extent = float(np.max(hi - lo)) if len(mesh.vertices) else 1.0
        digits = int(np.clip(9 - np.floor(np.log10(extent)) if extent > 0 else 8, 8, 30))
        return mesh.export(file_type="obj", digits=digits)
    return mesh.export(file_type=file_type)


def _ply_double(mesh) -> bytes:
    """Binary little-endian PLY with double-precision vertices (trimesh's exporter writes float32)."""
    verts = np.ascontiguousarray(mesh.vertices, dtype="<f8")
    faces = np.asarray(mesh.faces, dtype="<i4")
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment written by finr3d (double precision)\n"
        f"element vertex {len(verts)}\nproperty double x\nproperty double y\nproperty double z\n"
        f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    rows = np.empty(len(faces), dtype=[("n", "u1"), ("v", "<i4", (3,))])
    rows["n"] = 3
    rows["v"] = faces
    return header.encode("ascii") + verts.tobytes() + rows.tobytes()
