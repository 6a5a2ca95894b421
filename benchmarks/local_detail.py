"""Coding candidates for the sparse local detail (finr3d.local_detail), measured on one mesh.

Fits the global field once (``--seconds``, the SDF default architecture unless ``--config``), then codes the
residual against the fine ground truth in the band (``SDFTarget.fit_detail``) under each candidate and scores
``global + detail`` (marching cubes at ``--extract``, point-to-surface Chamfer-L1 as a fraction of the bbox
diagonal, volumetric IoU): bytes of the detail at each accuracy, so candidates compare at equal Chamfer.

Candidates: quantization step (normalized units; the fine voxel is 2/(F-1)), band, brick size, predictor on the
quantized integers (none / delta / Lorenzo), zstd level, dead zone. ``ans_bound`` is the order-0 entropy of the
coded integers, the size a static-model ANS coder (``constriction``) would approach, for comparison with zstd.

    python benchmarks/local_detail.py --mesh bunny --seconds 20 --out benchmarks/local_detail.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from shared_assets import mesh_path  # noqa: E402

import finr3d  # noqa: E402
from finr3d.geometry_metrics import mesh_metrics  # noqa: E402
from finr3d.local_detail import _unpack_ints, _decompress  # noqa: E402
from finr3d.meshing import extract_mesh  # noqa: E402
from finr3d.sdf import SDFTarget  # noqa: E402


class WithDetail:
    """``field + detail`` with the ``grid`` interface extract_mesh uses (until field.grid adds it itself)."""

    def __init__(self, field, detail):
        self.field, self.detail = field, detail
        self.target_info = field.target_info
        self.ndim, self.channels = field.ndim, field.channels

    def grid(self, coords, rank=None, *, squeeze=True):
        out = np.asarray(self.field.grid(coords, rank=rank, squeeze=False)).copy()
        if self.detail is not None:
            out[..., 0] += self.detail.grid([np.asarray(c, np.float64) for c in coords])
        return out[..., 0] if squeeze else out


def entropy_bytes(detail) -> float:
    """Order-0 entropy of the coded integers (all chunks), in bytes."""
    ints = []
    per = detail.brick ** detail.ndim
    for c in range(len(detail._chunks)):
        n = min(detail.chunk_bricks, detail.bricks - c * detail.chunk_bricks)
        raw = _decompress(detail._chunks[c], n * per * detail.int_bytes, "chunk")
        ints.append(_unpack_ints(raw, detail.int_bytes, n * per))
    if not ints:
        return 0.0
    _, counts = np.unique(np.concatenate(ints), return_counts=True)
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum() / 8)


def score(field, detail, target, extract: int) -> dict:
    mesh = extract_mesh(WithDetail(field, detail), extract)
    m = mesh_metrics(mesh, target.mesh)
    return {"iou": m["iou"], "chamfer_l1": m["chamfer_l1"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mesh", default="bunny")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--config", default=None, help="decomposition:rank:width of the global field (default: SDF default)")
    ap.add_argument("--extract", type=int, default=256)
    ap.add_argument("--part", default="all", choices=["all", "step", "coding"])
    ap.add_argument("--out", default=str(HERE / "local_detail.json"))
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    target = SDFTarget(mesh_path(args.mesh))
    gt_s = time.perf_counter() - t0
    opts = {}
    if args.config:
        d, r, w = args.config.split(":")
        opts = dict(decomposition=d, rank=int(r), width=int(w))
    field = finr3d.fit(target, seconds=args.seconds, seed=0, **opts)
    h = 2.0 / (target.detail_resolution - 1)
    rows = []
    base = score(field, None, target, args.extract)
    base_bytes = field.nbytes(2)["total"]
    print(f"{args.mesh}: GT {gt_s:.1f} s (fine {target.detail_resolution}^3, band {target.detail_band:.4f}), "
          f"global {field.parameter_count()} params ({base_bytes} B fp16): IoU {base['iou']:.4f} "
          f"Chamfer {base['chamfer_l1']:.3e}", flush=True)

    def run(name, **kw):
        t = time.perf_counter()
        detail = target.fit_detail(field, **kw)
        code_s = time.perf_counter() - t
        row = {"candidate": name, **{k: v for k, v in kw.items()}, "bytes": detail.nbytes if detail else 0,
               "bricks": detail.bricks if detail else 0, "code_s": code_s,
               "ans_bound": entropy_bytes(detail) if detail else 0.0}
        t = time.perf_counter()
        row.update(score(field, detail, target, args.extract))
        row["score_s"] = time.perf_counter() - t
        rows.append(row)
        print(f"  {name:34s} {row['bytes']:8d} B  (ans bound {row['ans_bound']:8.0f})  IoU {row['iou']:.4f}  "
              f"Chamfer {row['chamfer_l1']:.3e}  code {code_s:.1f} s", flush=True)
        return row

    if args.part in ("all", "step"):
        for f in (0.05, 0.1, 0.2, 0.4, 0.8):
            run(f"step {f} voxel", step=f * h)
        for b in (1.5, 2.5, 4.0):
            run(f"band {b} voxel, step 0.2", step=0.2 * h, band=b * h)
    if args.part in ("all", "coding"):
        for pred in ("none", "delta", "lorenzo"):
            run(f"predictor {pred}", step=0.2 * h, predictor=pred)
        for brick in (4, 6, 8, 12, 16):
            run(f"brick {brick}", step=0.2 * h, brick=brick)
        for level in (3, 9, 19):
            run(f"zstd level {level}", step=0.2 * h, level=level)
        for dz in (0.75, 1.0):
            run(f"deadzone {dz}", step=0.2 * h, deadzone=dz)

    out = {"mesh": args.mesh, "seconds": args.seconds, "config": args.config or "default",
           "global_params": field.parameter_count(), "global_bytes_fp16": base_bytes, "global": base,
           "gt_seconds": gt_s, "fine_resolution": target.detail_resolution, "band": target.detail_band,
           "extract": args.extract, "machine": platform.platform(), "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
