"""Open scans: a shared mesh with its bottom cut away (as a scanner leaves it), fitted by default, meshed with and
without the trim of sign jumps.

A scan is rarely closed. The SDF of an open mesh takes its sign from the generalized winding number, whose 1/2
level set spans every hole, so marching cubes puts a cap over it that the scan does not have. Meshing a field
fitted from an open mesh (``target_info["trim"]``) drops the faces where the distance jumps by more than
``finr3d.meshing.TRIM_JUMP`` lattice steps across an edge; this measures what that does to one default 60-s fit.

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/open_scans.py --meshes bunny:0.12,kitten:0.1

``NAME:FRACTION`` drops the faces whose centre lies in the lowest FRACTION of the mesh's height (y). Writes
``benchmarks/open_scans.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from shared_assets import mesh_path  # noqa: E402

import finr3d  # noqa: E402
from finr3d.geometry_metrics import mesh_metrics  # noqa: E402
from finr3d.meshing import extract_mesh  # noqa: E402
from finr3d.sdf import SDFTarget  # noqa: E402


def open_scan(name: str, fraction: float) -> Path:
    import trimesh

    mesh = trimesh.load(mesh_path(name), force="mesh")
    lo, hi = mesh.bounds
    keep = mesh.triangles_center[:, 1] > lo[1] + fraction * (hi[1] - lo[1])
    cut = trimesh.Trimesh(mesh.vertices, mesh.faces[keep])
    cut.remove_unreferenced_vertices()
    path = Path(tempfile.gettempdir()) / f"finr3d-open-{name}-{fraction:g}.ply"
    cut.export(path)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--meshes", default="bunny:0.12,kitten:0.1")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE / "open_scans.json"))
    args = p.parse_args(argv)
    finr3d.fit(SDFTarget(mesh_path("spot"), resolution=24, cache=False), rank=4, width=8, steps=2)  # warm-up
    rows = []
    for spec in args.meshes.split(","):
        name, fraction = spec.split(":")
        target = SDFTarget(open_scan(name, float(fraction)), cache=False)
        field = finr3d.fit(target, seconds=args.seconds, seed=args.seed)
        for trim in (True, False):
            field.target_info["trim"] = trim
            m = mesh_metrics(extract_mesh(field, 256), target.mesh)
            row = {"mesh": name, "cut": float(fraction), "boundary_edges": target.report["boundary_edges"],
                   "layers": target.layers, "resolution": target.resolution, "trim": trim,
                   **{k: m[k] for k in ("iou", "chamfer_l1", "accuracy", "completeness")}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "settings": vars(args),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores visible, torch {torch.__version__}, "
                       f"{torch.get_num_threads()} thread(s)"}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print("\n| mesh (cut) | boundary edges | trim | IoU | Chamfer-L1 | accuracy | completeness |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mesh']} ({r['cut']:g}) | {r['boundary_edges']} | {r['trim']} | {r['iou']:.4f} | "
              f"{r['chamfer_l1']:.2e} | {r['accuracy']:.2e} | {r['completeness']:.2e} |")
    print(f"\n{meta['machine']}; {meta['date']}; default fit, {args.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
