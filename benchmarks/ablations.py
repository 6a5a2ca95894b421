"""Core options measured at equal step budgets: channel factor, closed-form start, nested ranks.

Equal *steps* (not seconds) make the comparison independent of machine load;
wall time is reported beside it. Images are centre crops of the Kodak set.

    python benchmarks/ablations.py                    # kodim01..04, 256x256 crops, 300 steps
    python benchmarks/ablations.py --images kodim05 --crop 384 --steps 500

Writes ``benchmarks/ablations.json`` and prints markdown tables.
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

import finr3d  # noqa: E402
from shared_assets import shared_assets  # noqa: E402
from finr3d.targets import ImageTarget  # noqa: E402


def load_crop(name: str, crop: int) -> np.ndarray:
    import imageio.v3 as iio

    root = shared_assets() / "images"
    img = iio.imread(root / f"{name}.png").astype(np.float32) / 255.0
    h, w = img.shape[:2]
    y0, x0 = (h - crop) // 2, (w - crop) // 2
    return img[y0:y0 + crop, x0:x0 + crop]


def run(target, steps, **opts) -> dict:
    t0 = time.perf_counter()
    field = finr3d.fit(target, steps=steps, seed=0, eval_every=max(1, steps // 10), **opts)
    wall = time.perf_counter() - t0
    out = {"psnr": field.history["psnr"], "params": field.parameter_count(), "wall": wall}
    ranks = field.ranks
    if opts.get("decomposition", "cp") == "cp":
        out["psnr_quarter_rank"] = target.evaluate(field, rank=max(1, ranks[0] // 4))["psnr"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", default="kodim01,kodim02,kodim03,kodim04")
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rank", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--out", default=str(HERE / "ablations.json"))
    args = p.parse_args(argv)
    base = dict(decomposition="cp", rank=args.rank, width=args.width)
    variants = {
        "channel factor (default)": dict(base, init="random"),
        "independent per-channel blocks": dict(base, init="random", channel_factor=False),
        "closed-form start (default)": dict(base, init="closed_form"),
        "random start": dict(base, init="random"),
        "nested ranks": dict(base, init="random", nested_ranks=True),
        "tucker closed-form": dict(base, decomposition="tucker", rank=64, init="closed_form"),
        "tucker random": dict(base, decomposition="tucker", rank=64, init="random"),
    }
    results: dict[str, list[dict]] = {k: [] for k in variants}
    for name in args.images.split(","):
        target = ImageTarget(load_crop(name, args.crop))
        for label, opts in variants.items():
            r = run(target, args.steps, **opts)
            r["image"] = name
            results[label].append(r)
            print(f"{name} {label}: {r['psnr']:.2f} dB ({r['wall']:.1f} s)", flush=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}", "settings": vars(args)}
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"\n| variant | mean PSNR @ {args.steps} steps | PSNR at rank/4 (cp) | params | mean wall s |")
    print("|---|---|---|---|---|")
    for label, rows in results.items():
        q = [r.get("psnr_quarter_rank") for r in rows if r.get("psnr_quarter_rank") is not None]
        print(f"| {label} | {np.mean([r['psnr'] for r in rows]):.2f} | "
              f"{np.mean(q):.2f} | {rows[0]['params']:,} | {np.mean([r['wall'] for r in rows]):.1f} |"
              if q else f"| {label} | {np.mean([r['psnr'] for r in rows]):.2f} | - | {rows[0]['params']:,} | "
              f"{np.mean([r['wall'] for r in rows]):.1f} |")
    print(f"\n{meta['machine']}; {meta['date']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
