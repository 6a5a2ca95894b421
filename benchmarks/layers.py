"""What the union of a mesh's solids loses, and what layers and trimming give back, on exact ground truth.

For every mesh: the exact truncated SDF grid as one solid (``SDFTarget(layers=1)``) and as layers
(``layers="auto"``: interpenetrating parts on separate SDF channels), each meshed by ``finr3d.extract_mesh``
(so an open mesh's sign jumps are trimmed as in a fitted field; ``--no-trim`` meshes every crossing) and scored
against the input mesh. No fit is involved: this bounds what a field of either kind can reach.

    python benchmarks/layers.py --meshes suzanne,teapot,ogre --resolution 256

Writes ``benchmarks/layers.json`` and prints a markdown table. Chamfer-L1 is split into accuracy (predicted
surface to input) and completeness (input surface to predicted): a surface the union hides counts in the latter.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from shared_assets import mesh_path  # noqa: E402

from finr3d.geometry_metrics import mesh_metrics  # noqa: E402
from finr3d.meshing import extract_mesh  # noqa: E402
from finr3d.sdf import SDFTarget  # noqa: E402


class ExactField:
    """A target's own ground truth, every layer, in the field interface ``extract_mesh`` reads."""

    kind = "sdf"

    def __init__(self, target, trim: bool):
        self.target = target
        self.channels = target.channels
        self.target_info = dict(target.describe(), trim=bool(trim and target.trim))

    def grid(self, coords, rank=None, *, squeeze=True):
        coords = [torch.as_tensor(np.asarray(c), dtype=torch.float32) for c in coords]
        out = self.target.sample(coords).numpy()
        return out[..., 0] if squeeze and out.shape[-1] == 1 else out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--meshes", default="suzanne,teapot,ogre")
    p.add_argument("--resolution", type=int, default=256, help="ground-truth grid per axis")
    p.add_argument("--extract", type=int, default=256, help="marching-cubes lattice per axis")
    p.add_argument("--no-trim", action="store_true", help="mesh every sign change, open meshes included")
    p.add_argument("--out", default=str(HERE / "layers.json"))
    args = p.parse_args(argv)
    rows = []
    for name in args.meshes.split(","):
        for layers in (1, "auto"):
            t0 = time.perf_counter()
            target = SDFTarget(mesh_path(name), resolution=args.resolution, layers=layers, cache=False)
            gt = time.perf_counter() - t0
            mesh = extract_mesh(ExactField(target, not args.no_trim), args.extract)
            m = mesh_metrics(mesh, target.mesh)
            row = {"mesh": name, "layers_option": layers, "layers": target.layers, "trim": bool(target.trim),
                   "layer_info": target.report.get("layers"), "gt_seconds": round(gt, 2),
                   **{k: m[k] for k in ("iou", "chamfer_l1", "accuracy", "completeness")}}
            rows.append(row)
            print(json.dumps(row, default=str), flush=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "settings": vars(args),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores visible, torch {torch.__version__}, "
                       f"{torch.get_num_threads()} thread(s)"}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    print("\n| mesh | layers | trim | IoU | Chamfer-L1 | accuracy | completeness | ground truth s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mesh']} | {r['layers']} | {r['trim']} | {r['iou']:.4f} | {r['chamfer_l1']:.2e} | "
              f"{r['accuracy']:.2e} | {r['completeness']:.2e} | {r['gt_seconds']:.1f} |")
    print(f"\n{meta['machine']}; {meta['date']}; exact {args.resolution}^3 grid, meshed at {args.extract}^3")
    return 0


if __name__ == "__main__":
    sys.exit(main())
