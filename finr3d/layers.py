"""Layers of a multi-part mesh: the parts whose surfaces the union of the solids would hide.

A signed distance field describes one solid, the union of a mesh's parts.
Where parts interpenetrate (eyes set into a head, a spout pushed into a
teapot's body, the 44 pieces of a game character), the surfaces inside the
union have no zero crossing and are lost: marching cubes of even the exact
256^3 grid of such a mesh misses 3-6 % of its surface area, which alone puts
its Chamfer-L1 at about 2.5e-4 of the diagonal.

:func:`assign_layers` colours the mesh's face-connected parts so that no two
interpenetrating parts share a layer (greedy, largest part first); each layer
then gets its own SDF channel (:class:`finr3d.sdf.SDFTarget`, ``layers``) and
the extracted mesh is the union of the layers' meshes. A mesh whose parts do
not interpenetrate (one closed scan, or parts side by side) is one layer and
fits exactly as before.

Needs numpy, trimesh and open3d (through :class:`finr3d.mesh_query.MeshQuery`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["assign_layers", "MAX_LAYERS", "MAX_PARTS", "OVERLAP_FRACTION", "MIN_LAYER_SHARE"]

#: Most SDF channels a mesh is split into; parts beyond are put on the layer they overlap least.
MAX_LAYERS = 4
#: A part interpenetrates another when more than this share of its surface lies inside the other's solid.
OVERLAP_FRACTION = 0.01
#: A layer beyond the first with less than this share of the surface area is merged into the layer it overlaps
#: least: a channel costs model capacity and fit time, and such a layer hides at most that share of the surface.
MIN_LAYER_SHARE = 0.01
#: Parts, largest first, tested for interpenetration; smaller ones stay on layer 0 (the union).
MAX_PARTS = 256
_MIN_SAMPLES, _MAX_SAMPLES = 64, 4000


def assign_layers(vertices, faces, *, max_layers: int = MAX_LAYERS, threshold: float = OVERLAP_FRACTION,
                  min_share: float = MIN_LAYER_SHARE, samples: int = 20000, seed: int = 0) -> tuple[np.ndarray, dict]:
    """The layer of every face: interpenetrating parts go to different layers.

    Parameters
    ----------
    vertices : (V, 3) float
        Best centred and of order 1 (normalized coordinates): the inside tests run in float32.
    faces : (F, 3) int
    max_layers : int
        At least 1; 1 returns one layer at once.
    threshold : float
        Share of a part's surface (area-weighted samples) inside another part's
        solid (generalized winding number above 1/2) above which the two overlap.
    min_share : float
        A layer (beyond layer 0) with less than this share of the area joins
        the layer it overlaps least.
    samples : int
        Surface samples over the whole mesh, spread over the parts by area
        (each part gets 64..4000).
    seed : int

    Returns
    -------
    labels : (F,) int64
        Layer of each face, ``0..L-1``; layer 0 holds the largest part.
    info : dict
        ``layers`` (L), ``parts`` (face-connected parts), ``overlaps`` (pairs
        of parts found interpenetrating), ``area_share`` (per layer) and
        ``merged`` (parts put on a layer they overlap because ``max_layers``
        was reached or their layer was below ``min_share``) and
        ``tested_parts`` (the :data:`MAX_PARTS` largest parts are tested;
        smaller ones stay on layer 0, the union).
    """
    import trimesh

    from finr3d.mesh_query import MeshQuery

    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    if int(max_layers) < 1:
        raise ValueError(f"max_layers must be at least 1, got {max_layers}")
    if not 0.0 <= float(threshold) < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    n_faces = len(f)
    one = np.zeros(n_faces, np.int64), {"layers": 1, "parts": 1, "overlaps": 0, "area_share": [1.0], "merged": 0}
    if n_faces == 0 or int(max_layers) == 1:
        return one
    mesh = trimesh.Trimesh(v, f, process=False)
    part = trimesh.graph.connected_component_labels(mesh.face_adjacency, n_faces).astype(np.int64)
    n_parts = int(part.max()) + 1
    if n_parts == 1:
        return one
    area = np.bincount(part, weights=mesh.area_faces, minlength=n_parts)
    total = float(area.sum()) or 1.0
    order = np.argsort(-area, kind="stable")
    rng_seed = int(seed)
    # the largest parts only: beyond MAX_PARTS the rest stay on layer 0 (the union), and the pairwise tests and
    # the one search structure per part they need stay bounded
    tested = order[:MAX_PARTS]
    sort = np.argsort(part, kind="stable")
    starts = np.searchsorted(part[sort], np.arange(n_parts + 1))

    def part_mesh(p: int):
        faces_p = f[sort[starts[p]:starts[p + 1]]]
        used, local = np.unique(faces_p, return_inverse=True)
        return v[used], local.reshape(-1, 3)

    boxes = np.zeros((n_parts, 2, 3))
    points = {}
    for p in tested:
        pv, pf = part_mesh(p)
        boxes[p] = pv.min(axis=0), pv.max(axis=0)
        n = int(np.clip(area[p] / total * int(samples), _MIN_SAMPLES, _MAX_SAMPLES))
        if area[p] > 0:
            pts, _ = trimesh.sample.sample_surface(trimesh.Trimesh(pv, pf, process=False), n, seed=rng_seed)
        else:  # degenerate part: its vertices stand in for samples
            pts = pv
        points[p] = np.asarray(pts, np.float64)
    lo, hi = boxes[tested, 0], boxes[tested, 1]
    touch = np.all((lo[:, None] <= hi[None, :]) & (lo[None, :] <= hi[:, None]), axis=2)  # boxes that meet
    np.fill_diagonal(touch, False)
    t = len(tested)
    # overlap[i, j]: share of tested[i]'s surface inside tested[j]'s solid, symmetrised by max
    overlap = np.zeros((t, t), np.float64)
    for j, b in enumerate(tested):  # one part's search structure at a time (open3d scenes are not free)
        query = None
        for i in np.flatnonzero(touch[j]):
            pts = points[tested[i]]
            inside = pts[np.all((pts >= boxes[b, 0]) & (pts <= boxes[b, 1]), axis=1)]  # outside b's box: outside b
            if len(inside) == 0:
                continue
            if query is None:
                query = MeshQuery(*part_mesh(b), sign="winding", seed=rng_seed)
            share = float(np.sum(np.abs(query.winding(inside)) > 0.5)) / len(pts)
            overlap[i, j] = overlap[j, i] = max(overlap[i, j], share)
        del query
    clash = overlap > float(threshold)
    tested_area = area[tested]
    lay = -np.ones(t, np.int64)  # layer of each tested part (largest first)
    merged = 0

    def cost(i: int, k: int) -> float:  # how much of the parts on layer k tested part i overlaps
        return float(np.sum(overlap[i, lay == k] * tested_area[lay == k]))

    for i in range(t):
        taken = {int(k) for k in lay[clash[i]] if k >= 0}
        free = [k for k in range(int(max_layers)) if k not in taken]
        if free:
            lay[i] = free[0]
        else:  # every layer holds a part this one overlaps: the layer it overlaps least
            lay[i] = min(range(int(max_layers)), key=lambda k: cost(i, k))
            merged += 1
    while int(lay.max()) > 0:  # fold the smallest thin layer into the others, part by part
        shares = np.array([tested_area[lay == k].sum() for k in range(int(lay.max()) + 1)]) / total
        small = [k for k in range(1, len(shares)) if shares[k] < float(min_share)]
        if not small:
            break
        k = min(small, key=lambda j: shares[j])
        for i in np.flatnonzero(lay == k):
            lay[i] = min((j for j in range(len(shares)) if j != k), key=lambda j: cost(i, j))
            merged += 1
        lay[lay > k] -= 1
    layer = np.zeros(n_parts, np.int64)  # parts beyond MAX_PARTS stay on layer 0 (the union)
    layer[tested] = lay
    n_layers = int(layer.max()) + 1
    labels = layer[part]
    info = {"layers": n_layers, "parts": n_parts, "overlaps": int(np.triu(clash, 1).sum()),
            "area_share": [round(float(area[layer == k].sum()) / total, 4) for k in range(n_layers)],
            "merged": merged, "tested_parts": t}
    return labels, info
