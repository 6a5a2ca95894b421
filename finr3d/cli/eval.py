"""``finr3d eval``: score a fitted field against its reference."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

HELP = "score a fitted field against a reference (mesh: IoU, Chamfer, F-score; image/volume: PSNR, SSIM)"

DESCRIPTION = """\
Score MODEL.finr against the signal it approximates.

SDF fields: the mesh extracted at --resolution is compared with the reference mesh in
world units. Lengths are fractions of the reference bounding-box diagonal D:
  iou, iou_near        volume IoU on uniform / near-surface points (1 is perfect)
  chamfer_l1           mean two-sided surface distance, in D (0 is perfect)
  chamfer_l2           mean squared two-sided distance, in D^2
  hausdorff95          95th percentile of the surface distances, in D
  fscore_0.5, fscore_1 F-score of surface points within 0.5% / 1% of D (1 is perfect)
  normal_consistency   mean |cos| between matched normals (1 is perfect)
Images and video: PSNR in dB and SSIM (2-D, per frame for video).
Volumes: PSNR in dB on the source's value range (max - min of the reference), and
SSIM in 3-D (uniform 7x7x7 window, mean over voxels); a time-varying volume adds
psnr_mean (the mean of the per-frame PSNRs), psnr_per_frame and ssim_per_frame
(psnr itself is over every voxel of every frame)."""

EPILOG = """\
examples:
  finr3d eval bunny.finr --reference bunny.obj
  finr3d eval bunny.finr --reference bunny.obj --rank 8 --resolution 128 --json
  finr3d eval photo.finr --reference photo.png
"""

_ORDER = ("iou", "iou_near", "chamfer_l1", "chamfer_l2", "hausdorff95", "fscore_0.5", "fscore_1",
          "normal_consistency", "accuracy", "completeness", "psnr", "ssim")


def add_arguments(parser) -> None:
    parser.add_argument("model", metavar="MODEL.finr", help="fitted field")
    parser.add_argument("--reference", required=True, metavar="INPUT",
                        help="the signal to compare with: the mesh, image, volume or video the field was fitted to")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--resolution", type=int, default=256, metavar="N",
                        help="marching-cubes samples per axis for SDF fields (default: 256)")
    parser.add_argument("--rank", type=int, default=None, metavar="R",
                        help="score the field truncated to rank R (default: full rank)")


def run(args) -> int:
    import finr3d
    from finr3d.errors import InputError

    if args.rank is not None and args.rank < 1:
        raise InputError(f"--rank must be at least 1, got {args.rank}")
    reference = Path(args.reference)
    if not reference.exists():
        raise FileNotFoundError(f"{reference}: no such file; check the --reference path")
    field = finr3d.load(args.model)
    t0 = time.perf_counter()
    metrics = finr3d.evaluate(field, str(reference), rank=args.rank, resolution=args.resolution)
    seconds = time.perf_counter() - t0
    if args.json:
        payload = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        payload.update(model=str(args.model), reference=str(reference), seconds=round(seconds, 3))
        json.dump(payload, sys.stdout)
        sys.stdout.write("\n")
        return 0
    rank = "full" if args.rank is None else args.rank
    print(f"{Path(args.model).name} vs {reference.name} (rank {rank}, {seconds:.1f} s)")
    keys = [k for k in _ORDER if k in metrics] + [k for k in metrics if k not in _ORDER]
    width = max(len(k) for k in keys)
    for k in keys:
        v = metrics[k]
        if isinstance(v, list):
            v = " ".join(f"{x:.4g}" for x in v)
        print(f"  {k:<{width}}  {v:.6g}" if isinstance(v, float) else f"  {k:<{width}}  {v}")
    if getattr(field, "kind", None) == "sdf":
        print("  (lengths are fractions of the reference bounding-box diagonal)")
    elif getattr(field, "kind", None) == "volume":
        print("  (PSNR on the reference's value range; SSIM 3-D, 7x7x7 window)")
    return 0
