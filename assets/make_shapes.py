"""Write the procedural shapes finr3d generates itself into ``assets/``.

The shapes live in :mod:`finr3d.shapes` (analytic SDFs meshed by marching
cubes) so that ``finr3d demo`` works from an installed package; this script
only writes them out for inspection and for tools that want a file.

    python assets/make_shapes.py                 # writes assets/gizmo.ply
    python assets/make_shapes.py --resolution 160 --out /tmp/gizmo.ply
"""

from __future__ import annotations

import argparse
from pathlib import Path

from finr3d.shapes import SHAPES, shape_mesh


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="gizmo", choices=sorted(SHAPES))
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    out = Path(args.out or Path(__file__).resolve().parent / f"{args.shape}.ply")
    mesh = shape_mesh(args.shape, args.resolution)
    mesh.export(out)
    print(f"wrote {out}: {len(mesh.faces):,} faces, watertight={mesh.is_watertight}, genus {1 - mesh.euler_number // 2}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
