"""``finr3d mesh``: marching cubes on a fitted SDF field."""

from __future__ import annotations

import time
from pathlib import Path

HELP = "extract a triangle mesh (ply, obj, glb, stl) from a fitted SDF field"

DESCRIPTION = """\
Extract the zero level set of a fitted SDF field (MODEL.finr from `finr3d fit` on a mesh)
as a triangle mesh, in the world units of the mesh it was fitted to.

The field is sampled on a RESOLUTION^3 lattice over its fitting cube and meshed with
marching cubes, slab by slab, so memory stays bounded (1024^3 needs under 3 GB).
Higher resolutions show finer detail up to what the field learned; time grows about
8x per doubling. --rank previews a lower-rank (smaller, smoother) version of the
same field without refitting."""

EPILOG = """\
examples:
  finr3d mesh bunny.finr -o bunny.ply                        256^3, full rank
  finr3d mesh bunny.finr -o bunny_hi.obj --resolution 512
  finr3d mesh bunny.finr -o bunny_r8.glb --rank 8 --force    rank-8 preview, overwrite
  finr3d mesh bunny.finr -o thick.stl --level 0.01           surface pushed 0.01 world units outward
"""


def _finite_float(text: str) -> float:
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def add_arguments(parser) -> None:
    parser.add_argument("model", metavar="MODEL.finr", help="fitted SDF field (from `finr3d fit MESH`)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="mesh file to write; the suffix picks the format: .ply .obj .glb .stl")
    parser.add_argument("--resolution", type=int, default=256, metavar="N",
                        help="marching-cubes samples per axis, 2..4096 (default: 256)")
    parser.add_argument("--rank", type=int, default=None, metavar="R",
                        help="evaluate the field truncated to rank R (default: the full rank it was saved with)")
    parser.add_argument("--level", type=_finite_float, default=0.0, metavar="L",
                        help="iso-level as a signed distance in world units; >0 grows, <0 shrinks the "
                             "surface, within the fit's truncation band (default: 0, the surface)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")


def run(args) -> int:
    import finr3d
    from finr3d.cli._common import check_output, count_bar
    from finr3d.errors import InputError
    from finr3d.meshing import MESH_EXPORTS, extract_mesh, save_mesh

    out = check_output(args.output, set(MESH_EXPORTS), force=args.force)  # before any slow work
    if args.rank is not None and args.rank < 1:
        raise InputError(f"--rank must be at least 1, got {args.rank}")
    field = finr3d.load(args.model)
    kind = getattr(field, "kind", "sdf")
    if kind != "sdf":
        article = "an" if kind[:1] in "aeiou" else "a"
        raise InputError(f"{Path(args.model).name} is {article} {kind} field; `finr3d mesh` needs an SDF field "
                         "(fitted to a mesh); use `finr3d decode` for other kinds")
    matrix = (field.target_info or {}).get("world_from_normalized")
    if matrix is not None:  # STL/GLB store float32: refuse now if that would move the vertices, not after meshing
        import numpy as np

        from finr3d.meshing import check_precision

        corners = np.array([[x, y, z, 1.0] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]) @ np.asarray(
            matrix, np.float64).T
        check_precision(corners[:, :3].min(axis=0), corners[:, :3].max(axis=0), out.suffix, out.name)
    t0 = time.perf_counter()
    with count_bar(args.resolution, "planes", "meshing") as bar:
        mesh = extract_mesh(field, args.resolution, rank=args.rank, level=args.level,
                            callback=lambda info: bar.update(info["planes"] - bar.n))
    save_mesh(mesh, out, overwrite=args.force)
    lo, hi = mesh.bounds
    rank = "full" if args.rank is None else args.rank
    print(f"wrote {out}: {len(mesh.vertices):,} vertices, {len(mesh.faces):,} faces "
          f"(resolution {args.resolution}, rank {rank}, {time.perf_counter() - t0:.1f} s)")
    print(f"  bounds (world units): [{lo[0]:.4g}, {lo[1]:.4g}, {lo[2]:.4g}] .. [{hi[0]:.4g}, {hi[1]:.4g}, {hi[2]:.4g}]"
          f"  watertight: {'yes' if mesh.is_watertight else 'no'}")
    return 0
