"""F-INR against a monolithic SIREN on the Kodak images, at equal wall time, in one run.

For each image: fit a monolithic SIREN (width 256, 3 hidden layers, ω0 = 30,
Adam 1e-4, random-pixel batches; Sitzmann et al. 2020) for ``--siren-seconds``
and finr3d for ``--seconds``, both recording PSNR against elapsed time. Report
PSNR, SSIM, parameters, steps per second, PSNR at equal time and the
time-to-PSNR ratio: SIREN's time to its final PSNR divided by the time finr3d
needs to reach that PSNR (finr3d's time counts its closed-form start).

    python benchmarks/image_fit.py                       # all 12 images, 120 s SIREN, 120 s finr3d
    python benchmarks/image_fit.py --images kodim01 --siren-seconds 20 --seconds 20   # quick look

Writes ``benchmarks/image_fit.json`` and prints a markdown table for RESULTS.md.
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

import finr3d  # noqa: E402
from shared_assets import shared_assets  # noqa: E402
from finr3d.targets import ImageTarget, psnr, ssim  # noqa: E402


def time_to(curve: list[tuple[float, float]], level: float) -> float:
    """First time a (time, psnr) curve reaches ``level``, linearly interpolated; inf if never."""
    prev_t, prev_p = 0.0, -math.inf
    for t, p in curve:
        if p >= level:
            if prev_p == -math.inf or p == prev_p:
                return t
            return prev_t + (t - prev_t) * (level - prev_p) / (p - prev_p)
        prev_t, prev_p = t, max(prev_p, p)
    return math.inf


def best_at(curve: list[tuple[float, float]], t: float) -> float:
    vals = [p for s, p in curve if s <= t]
    return max(vals) if vals else -math.inf


def run_siren(image: np.ndarray, seconds: float, seed: int = 0) -> dict:
    from baselines.siren import SirenBaseline

    torch.manual_seed(seed)
    model = SirenBaseline()
    curve = model.fit(image, seconds=seconds)
    pred = model.predict_dense(image.shape)
    return {"curve": curve, "params": model.parameter_count(), "steps": model.steps,
            "psnr": psnr(np.clip(pred, 0, 1), image), "ssim": ssim(np.clip(pred, 0, 1), image)}


def run_finr(image: np.ndarray, seconds: float, args) -> dict:
    target = ImageTarget(image)
    t0 = time.perf_counter()
    field = finr3d.fit(target, decomposition=args.decomposition, rank=args.rank, width=args.width,
                       backbone=args.backbone, seconds=seconds, seed=args.seed, eval_every=args.eval_every)
    wall = time.perf_counter() - t0
    scores = target.evaluate(field)
    curve = [(c["elapsed"], c["psnr"]) for c in field.history["curve"]]
    return {"curve": curve, "params": field.parameter_count(), "steps": field.history["steps"], "wall": wall,
            "psnr": scores["psnr"], "ssim": scores["ssim"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", default=",".join(f"kodim{i:02d}" for i in range(1, 13)))
    p.add_argument("--siren-seconds", type=float, default=120.0)
    p.add_argument("--seconds", type=float, default=120.0, help="finr3d budget")
    p.add_argument("--decomposition", default="tucker")
    p.add_argument("--rank", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--backbone", default="siren")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE / "image_fit.json"))
    args = p.parse_args(argv)

    import imageio.v3 as iio

    # pay one-time imports and lazy initialisation before any clock starts
    warm = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    finr3d.fit(ImageTarget(warm), decomposition=args.decomposition, rank=8, width=16, steps=3)
    run_siren(warm, 0.5)
    rows = []
    for name in args.images.split(","):
        path = shared_assets() / "images" / f"{name}.png"
        image = iio.imread(path).astype(np.float32) / 255.0
        siren = run_siren(image, args.siren_seconds, args.seed)
        finr = run_finr(image, args.seconds, args)
        level = max(p for _, p in siren["curve"])  # SIREN's best PSNR within its budget
        t_siren = time_to(siren["curve"], level)
        t_finr = time_to(finr["curve"], level)
        row = {
            "image": name, "shape": list(image.shape),
            "siren_psnr": siren["psnr"], "siren_ssim": siren["ssim"], "siren_params": siren["params"],
            "siren_steps_per_s": siren["steps"] / args.siren_seconds,
            "finr_psnr": finr["psnr"], "finr_ssim": finr["ssim"], "finr_params": finr["params"],
            "finr_steps_per_s": finr["steps"] / args.seconds,
            "finr_psnr_at_siren_time": best_at(finr["curve"], args.siren_seconds),
            "t_siren_to_final": t_siren, "t_finr_to_siren_final": t_finr,
            "speedup": t_siren / t_finr if t_finr > 0 else math.inf,
            "siren_curve": siren["curve"], "finr_curve": finr["curve"],
        }
        rows.append(row)
        print(f"{name}: SIREN {siren['psnr']:.2f} dB @ {args.siren_seconds:.0f}s; finr3d {finr['psnr']:.2f} dB; "
              f"finr3d reaches {level:.2f} dB at {t_finr:.2f}s -> {row['speedup']:.0f}x sooner", flush=True)
    meta = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}",
        "settings": vars(args),
    }
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print()
    print("| image | SIREN PSNR / SSIM @%ds | finr3d PSNR / SSIM @%ds | params SIREN / finr3d | steps/s SIREN / finr3d | finr3d time to SIREN's PSNR | speed-up |"
          % (args.siren_seconds, args.seconds))
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['image']} | {r['siren_psnr']:.2f} / {r['siren_ssim']:.3f} | {r['finr_psnr']:.2f} / {r['finr_ssim']:.3f} | "
              f"{r['siren_params']:,} / {r['finr_params']:,} | {r['siren_steps_per_s']:.1f} / {r['finr_steps_per_s']:.1f} | "
              f"{r['t_finr_to_siren_final']:.2f} s | {r['speedup']:.0f}x |")
    speedups = [r["speedup"] for r in rows]
    gain = [r["finr_psnr"] - r["siren_psnr"] for r in rows]
    print(f"\nmean PSNR gain at equal time: {np.mean(gain):+.2f} dB; speed-up median {np.median(speedups):.0f}x, "
          f"min {np.min(speedups):.0f}x; {meta['machine']}; {meta['date']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
