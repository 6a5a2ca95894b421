"""Surface and volume metrics between a predicted mesh and a reference mesh.

Every length is a fraction of the reference mesh's bounding-box diagonal
``D`` (so scores compare across meshes of any size); squared lengths are in
units of ``D^2``. Distances are exact point-to-triangle distances (open3d),
not point-to-sample distances, so identical meshes score 0 whatever the sample
count.
"""

from __future__ import annotations

import numpy as np

__all__ = ["chamfer", "volumetric_iou", "mesh_metrics", "FSCORE_THRESHOLDS"]

#: F-score thresholds as fractions of the reference diagonal: 0.5% and 1%.
FSCORE_THRESHOLDS = (0.005, 0.01)


def _frame(ref_mesh):
    """Centre and diagonal of the reference bounding box (queries run centred, in float32)."""
    lo, hi = np.asarray(ref_mesh.bounds, np.float64)
    diag = float(np.linalg.norm(hi - lo))
    if not diag > 0:
        raise ValueError("the reference mesh has zero extent; metrics need a non-degenerate reference")
    return (lo + hi) / 2.0, diag


def _query(mesh, center, diag, sign="auto"):
    from finr3d.mesh_query import MeshQuery

    return MeshQuery((np.asarray(mesh.vertices, np.float64) - center) / diag, mesh.faces, sign=sign)


def _samples(mesh, n: int, seed: int, center, diag):
    import trimesh

    points, face = trimesh.sample.sample_surface(mesh, n, seed=seed)
    normals = np.asarray(mesh.face_normals)[face]
    return (points - center) / diag, normals


def _check_mesh(mesh, what: str) -> None:
    if mesh is None or len(getattr(mesh, "faces", ())) == 0:
        raise ValueError(f"the {what} mesh has no faces")


def chamfer(pred_mesh, ref_mesh, n_samples: int = 100_000, seed: int = 0) -> dict:
    """Two-sided surface distances from ``n_samples`` area-uniform samples per surface.

    Parameters
    ----------
    pred_mesh, ref_mesh : trimesh.Trimesh
        In the same (world) units.
    n_samples : int
        Samples on each surface.
    seed : int

    Returns
    -------
    dict
        With ``d_pr`` the distances of pred samples to the reference surface
        and ``d_rp`` the reverse, all over the reference diagonal ``D``:

        - ``chamfer_l1 = (mean d_pr + mean d_rp) / 2``
        - ``chamfer_l2 = (mean d_pr^2 + mean d_rp^2) / 2`` (units of ``D^2``)
        - ``accuracy = mean d_pr``, ``completeness = mean d_rp``
        - ``hausdorff95``: 95th percentile of ``d_pr`` and ``d_rp`` together
        - ``fscore_0.5``, ``fscore_1``: ``2PR / (P + R)`` with ``P`` the share of
          ``d_pr <= tau``, ``R`` the share of ``d_rp <= tau``, ``tau`` 0.5% and 1% of ``D``
        - ``normal_consistency``: mean of ``|n_sample . n_nearest_triangle|``
          over both directions (1 is perfect)
    """
    _check_mesh(pred_mesh, "predicted")
    _check_mesh(ref_mesh, "reference")
    if int(n_samples) < 1:
        raise ValueError(f"n_samples must be positive, got {n_samples}")
    center, diag = _frame(ref_mesh)
    q_pred = _query(pred_mesh, center, diag, sign="raycast")
    q_ref = _query(ref_mesh, center, diag, sign="raycast")
    p_pts, p_nrm = _samples(pred_mesh, int(n_samples), seed, center, diag)
    r_pts, r_nrm = _samples(ref_mesh, int(n_samples), seed + 1, center, diag)
    cp, ids = q_ref.closest(p_pts)
    d_pr = np.linalg.norm(p_pts - cp, axis=1)
    nc_pr = np.abs(np.einsum("ij,ij->i", p_nrm, np.asarray(ref_mesh.face_normals)[ids]))
    cp, ids = q_pred.closest(r_pts)
    d_rp = np.linalg.norm(r_pts - cp, axis=1)
    nc_rp = np.abs(np.einsum("ij,ij->i", r_nrm, np.asarray(pred_mesh.face_normals)[ids]))
    out = {
        "chamfer_l1": float((d_pr.mean() + d_rp.mean()) / 2),
        "chamfer_l2": float(((d_pr**2).mean() + (d_rp**2).mean()) / 2),
        "accuracy": float(d_pr.mean()),
        "completeness": float(d_rp.mean()),
        "hausdorff95": float(np.percentile(np.concatenate([d_pr, d_rp]), 95)),
        "normal_consistency": float((nc_pr.mean() + nc_rp.mean()) / 2),
    }
    for tau in FSCORE_THRESHOLDS:
        precision = float((d_pr <= tau).mean())
        recall = float((d_rp <= tau).mean())
        f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        out[f"fscore_{tau * 100:g}"] = f
    return out


def volumetric_iou(pred_mesh, ref_mesh, n: int = 100_000, *, near_surface: bool = False, seed: int = 0,
                   sign: str = "auto") -> float:
    """Intersection over union of the solids, by point sampling.

    Parameters
    ----------
    n : int
        Sample points.
    near_surface : bool
        ``False``: uniform in the reference bounding box padded by 5% of
        ``D`` per side. ``True``: surface samples (half on each mesh) moved by
        Gaussian noise of ``sigma = 1%`` of ``D``, which scores the surface
        placement rather than the bulk.
    sign : {"auto", "raycast", "winding"}
        Inside test (see :class:`finr3d.mesh_query.MeshQuery`); ``auto`` uses the
        generalized winding number for open or multi-part meshes.

    Returns
    -------
    float
        ``|inside_pred & inside_ref| / |inside_pred | inside_ref|`` (1 if both are empty).
    """
    import trimesh

    _check_mesh(pred_mesh, "predicted")
    _check_mesh(ref_mesh, "reference")
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    center, diag = _frame(ref_mesh)
    rng = np.random.default_rng(seed)
    if near_surface:
        half = n // 2
        a, _ = trimesh.sample.sample_surface(ref_mesh, n - half, seed=seed)
        b, _ = trimesh.sample.sample_surface(pred_mesh, half, seed=seed + 1) if half else (np.zeros((0, 3)), None)
        points = (np.concatenate([a, b]) - center) / diag
        points += rng.normal(0.0, 0.01, points.shape)
    else:
        lo, hi = (np.asarray(ref_mesh.bounds) - center) / diag
        points = rng.uniform(lo - 0.05, hi + 0.05, (n, 3))
    inside_pred = _query(pred_mesh, center, diag, sign=sign).inside(points)
    inside_ref = _query(ref_mesh, center, diag, sign=sign).inside(points)
    union = int((inside_pred | inside_ref).sum())
    return float((inside_pred & inside_ref).sum()) / union if union else 1.0


def mesh_metrics(pred_mesh, ref_mesh, *, n_samples: int = 100_000, n_volume: int = 100_000, seed: int = 0) -> dict:
    """All geometry scores of ``pred_mesh`` against ``ref_mesh`` (same units).

    Returns
    -------
    dict
        ``iou`` (uniform points), ``iou_near`` (near-surface points),
        ``chamfer_l1``, ``chamfer_l2``, ``accuracy``, ``completeness``,
        ``hausdorff95``, ``normal_consistency``, ``fscore_0.5``, ``fscore_1``
        (see :func:`chamfer` and :func:`volumetric_iou`; lengths over the
        reference diagonal), plus ``faces`` and ``vertices`` of the prediction.
    """
    out = {
        "iou": volumetric_iou(pred_mesh, ref_mesh, n_volume, seed=seed),
        "iou_near": volumetric_iou(pred_mesh, ref_mesh, n_volume, near_surface=True, seed=seed),
    }
    out.update(chamfer(pred_mesh, ref_mesh, n_samples, seed=seed))
    out["faces"] = int(len(pred_mesh.faces))
    out["vertices"] = int(len(pred_mesh.vertices))
    return out
