"""Mesh -> SDF field -> mesh on the shared meshes: finr3d decompositions against a monolithic SIREN SDF.

For every mesh: build the ground truth once (reported separately), then give each
method the same optimisation budget (``--seconds``, default 60) on the same
128^3 truncated SDF, extract meshes, and score them against the input mesh with
``finr3d.evaluate`` (point-to-surface Chamfer, IoU, normal consistency, F-score;
lengths are fractions of the reference bounding-box diagonal).

The SIREN baseline is the monolithic network of Sitzmann et al. (width 256,
3 hidden layers, ω0 = 30, Adam 1e-4) trained on random voxels of the same
ground-truth grid, and extracted by evaluating the network on every voxel.

    python benchmarks/sdf_fit.py                                   # all six meshes
    python benchmarks/sdf_fit.py --meshes bunny --seconds 20 --configs tucker:32

Writes ``benchmarks/sdf_fit.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
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

import finr3d  # noqa: E402
from finr3d.geometry_metrics import mesh_metrics  # noqa: E402
from finr3d.meshing import extract_mesh  # noqa: E402
from finr3d.sdf import SDFTarget  # noqa: E402

MESHES = ["bunny", "spot", "cow", "fandisk", "rocker-arm", "kitten"]
KEYS = ["iou", "chamfer_l1", "normal_consistency", "fscore_0.5", "fscore_1", "hausdorff95"]


def run_finr(target, config: str, seconds: float, seed: int) -> dict:
    decomposition, rank = config.split(":")[:2]
    width = int(config.split(":")[2]) if config.count(":") >= 2 else 128
    field = finr3d.fit(target, decomposition=decomposition, rank=int(rank), width=width, seconds=seconds, seed=seed)
    row = {"method": f"finr3d {decomposition} r{rank} w{width}", "params": field.parameter_count(),
           "bytes_fp16": field.nbytes(2)["total"], "steps": field.history["steps"],
           "fit_seconds": field.history["seconds"]}
    meshes = {}
    for res in (256, 512):
        t0 = time.perf_counter()
        meshes[res] = extract_mesh(field, res)
        row[f"extract_{res}_s"] = time.perf_counter() - t0
    row.update({k: v for k, v in mesh_metrics(meshes[256], target.mesh).items() if k in KEYS})
    return row


class _SirenOnGrid:
    """Evaluate the trained SIREN baseline at any lattice of the normalized cube, in chunks."""

    def __init__(self, baseline, target):
        self.b, self.target_info = baseline, target.describe()
        self.kind, self.channels, self.ndim = "sdf", 1, 3

    @torch.no_grad()
    def grid(self, coords, rank=None, *, squeeze=True):
        axes = [torch.as_tensor(np.asarray(c), dtype=torch.float32) for c in coords]
        shape = [len(a) for a in axes]
        gx, gy, gz = torch.meshgrid(*axes, indexing="ij")
        pts = torch.stack([gx.reshape(-1), gy.reshape(-1), gz.reshape(-1)], -1)
        lo, hi = self.b.coord_range
        pts = lo + (pts + 1) * 0.5 * (hi - lo)
        out = torch.cat([self.b._from_model(self.b.model(pts[s:s + 65536])) for s in range(0, len(pts), 65536)])
        out = out.reshape(*shape, 1).numpy() * 2.0 - 1.0
        return out[..., 0] if squeeze else out


def run_siren(target, seconds: float, seed: int) -> dict:
    from baselines.siren import SirenBaseline

    torch.manual_seed(seed)
    # the baseline trains on values in [0, 1]: map the truncated SDF (field units, [-1, 1]) there and back
    grid = (target.data.numpy() + 1.0) * 0.5
    b = SirenBaseline()
    b.fit(grid, seconds=seconds)
    proxy = _SirenOnGrid(b, target)
    row = {"method": "SIREN (monolithic)", "params": b.parameter_count(), "bytes_fp16": 2 * b.parameter_count(),
           "steps": b.steps, "fit_seconds": seconds}
    t0 = time.perf_counter()
    try:
        mesh = extract_mesh(proxy, 256)
        row["extract_256_s"] = time.perf_counter() - t0
        row.update({k: v for k, v in mesh_metrics(mesh, target.mesh).items() if k in KEYS})
    except RuntimeError as exc:  # no surface: the baseline failed outright
        row["error"] = str(exc)
        row.update({"iou": 0.0, "chamfer_l1": math.inf})
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--meshes", default=",".join(MESHES))
    p.add_argument("--configs", default="tucker:48:128,cp:128:128,tt:48:128",
                   help="decomposition:rank[:width] list")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--resolution", type=lambda v: v if v == "auto" else int(v), default=128,
                   help="ground-truth grid per axis, or auto (SDFTarget: 128, or 256 where 128 misplaces the surface)")
    p.add_argument("--no-siren", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE / "sdf_fit.json"))
    args = p.parse_args(argv)
    # one-time imports and lazy initialisation before any clock starts
    warm = SDFTarget(mesh_path("spot"), resolution=24, cache=False)
    finr3d.fit(warm, rank=4, width=8, steps=2)
    rows = []
    for name in args.meshes.split(","):
        t0 = time.perf_counter()
        target = SDFTarget(mesh_path(name), resolution=args.resolution, cache=False)
        gt_seconds = time.perf_counter() - t0
        print(f"{name}: ground truth {gt_seconds:.1f} s, report {target.report}", flush=True)
        for config in args.configs.split(","):
            row = run_finr(target, config, args.seconds, args.seed)
            row.update(mesh=name, gt_seconds=gt_seconds, resolution=target.resolution,
                       resolution_probe=target.report.get("resolution_probe"))
            rows.append(row)
            print(json.dumps(row), flush=True)
        if not args.no_siren:
            row = run_siren(target, args.seconds, args.seed)
            row.update(mesh=name, gt_seconds=gt_seconds)
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "settings": vars(args),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores visible, torch {torch.__version__}, "
                       f"{torch.get_num_threads()} thread(s)"}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=float))
    print("\n| mesh | method | params | IoU | Chamfer-L1 | NC | F@0.5% | F@1% | HD95 | steps | extract 256³ / 512³ s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ext = f"{r.get('extract_256_s', float('nan')):.2f} / {r.get('extract_512_s', float('nan')):.2f}"
        print(f"| {r['mesh']} | {r['method']} | {r['params']:,} | {r.get('iou', float('nan')):.4f} | "
              f"{r.get('chamfer_l1', float('nan')):.2e} | {r.get('normal_consistency', float('nan')):.3f} | "
              f"{r.get('fscore_0.5', float('nan')):.3f} | {r.get('fscore_1', float('nan')):.3f} | "
              f"{r.get('hausdorff95', float('nan')):.2e} | {r['steps']} | {ext} |")
    print(f"\n{meta['machine']}; {meta['date']}; GT grid {args.resolution}^3; {args.seconds:.0f} s per fit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
