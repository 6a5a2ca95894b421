"""Score a fitted field against its reference signal."""

from __future__ import annotations

import os

__all__ = ["evaluate"]


def evaluate(field, reference, *, rank=None, resolution: int = 256, **kwargs) -> dict:
    """Quality of ``field`` against ``reference``.

    Parameters
    ----------
    field : FactorizedField
    reference : path, trimesh.Trimesh or Target
        The input the field was fitted to (or any other signal of its kind).
    rank : int, optional
        Score the field truncated to this rank (``None``: full rank).
    resolution : int
        Marching-cubes resolution for SDF fields.
    **kwargs
        For SDF fields, passed to :func:`finr3d.geometry_metrics.mesh_metrics`
        (``n_samples``, ``n_volume``, ``seed``).

    Returns
    -------
    dict
        SDF fields: :func:`~finr3d.geometry_metrics.mesh_metrics` of the mesh
        extracted at ``resolution`` against the reference mesh, both in world
        units (lengths as fractions of the reference diagonal). Other kinds:
        the target's ``evaluate`` (PSNR, SSIM).
    """
    kind = getattr(field, "kind", None) or (getattr(field, "target_info", None) or {}).get("kind")
    if kind == "video" and isinstance(reference, (str, os.PathLike)):
        from finr3d.video import VideoTarget

        # re-read the clip with the fit's frame range, stride and size
        return VideoTarget.for_field(reference, field.target_info).evaluate(field, rank=rank)
    if kind == "volume" and isinstance(reference, (str, os.PathLike)):
        from finr3d.volume import VolumeTarget

        # re-read the reference with the axes the fit was given (a 4-D source needs them)
        axes = (getattr(field, "target_info", None) or {}).get("source_axes")
        return VolumeTarget(reference, axes=axes).evaluate(field, rank=rank)
    if kind != "sdf":
        from finr3d.sources import load_target

        return load_target(reference, kind=kind or "auto").evaluate(field, rank=rank)

    from finr3d.geometry_metrics import mesh_metrics
    from finr3d.meshing import extract_mesh
    from finr3d.mesh_query import load_mesh
    from finr3d.targets import Target

    if isinstance(reference, Target):
        ref_mesh = getattr(reference, "mesh", None)
        if ref_mesh is None:
            raise ValueError(f"the reference target is a {reference.kind} target; an SDF field needs a mesh reference")
    elif isinstance(reference, (str, os.PathLike)) or hasattr(reference, "faces") or hasattr(reference, "geometry"):
        ref_mesh, _ = load_mesh(reference)
    else:
        raise ValueError(f"reference must be a mesh path, a trimesh mesh or an SDFTarget, got {type(reference).__name__}")
    mesh = extract_mesh(field, resolution, rank=rank)
    out = mesh_metrics(mesh, ref_mesh, **kwargs)
    out["resolution"] = int(resolution)
    if rank is not None:
        out["rank"] = int(rank)
    return out
