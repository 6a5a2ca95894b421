"""Do fits honour ``--seconds``? The budget-honesty table per kind, and early image quality on Kodak.

Two parts (run each under the bench lock; each stays under about ten minutes on one core):

``--part honesty``
    For each kind (image kodim05, mesh bunny at a 64^3 ground truth, volume neghip 64^3, video carphone,
    frames 0:30) and each budget S in ``--budgets``: the elapsed time of ``finr3d.fit(target, seconds=S)``
    (the call's wall time, ground-truth preparation excluded: the target is built once per kind) against
    the bound ``1.1 S + 0.3 s``, and the fit's own ``history["seconds"]``.

``--part kodak``
    For each Kodak image and each budget S in ``--kodak-budgets``: the PSNR a fit with ``seconds=S``
    returns, against the PSNR the 120-s fit had at the same elapsed time (the best validation on its
    curve by then: what it would have returned had it been stopped there). The 120-s fit is stopped by
    its callback once it passes the largest budget, so the part costs about 2x the budgets, not 120 s.

    flock /tmp/finr3d-bench.lock python benchmarks/budget.py --part honesty
    flock /tmp/finr3d-bench.lock python benchmarks/budget.py --part kodak --images 12

Writes ``benchmarks/budget_<part>.json`` and prints markdown tables for RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import finr3d  # noqa: E402
from shared_assets import mesh_path, shared_assets  # noqa: E402
from finr3d.errors import FitCancelled  # noqa: E402
from finr3d.targets import ImageTarget  # noqa: E402
from finr3d.volume import VolumeTarget  # noqa: E402

REFERENCE_SECONDS = 120.0


def bound(seconds: float) -> float:
    return 1.1 * seconds + 0.3


def make_targets(kinds: list[str]) -> dict:
    assets = shared_assets()
    out = {}
    for kind in kinds:
        t0 = time.perf_counter()
        if kind == "image":
            out[kind] = ImageTarget(assets / "images" / "kodim05.png")
        elif kind == "volume":
            out[kind] = VolumeTarget(assets / "volumes" / "neghip_64x64x64_uint8.raw")
        elif kind == "sdf":
            from finr3d.sdf import SDFTarget

            out[kind] = SDFTarget(mesh_path("bunny"), resolution=64)
        elif kind == "video":
            from finr3d.video import VideoTarget

            out[kind] = VideoTarget(assets / "video" / "carphone.mp4", frames=(0, 30))
        print(f"# {kind}: target {out[kind].shape} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return out


def honesty(args) -> dict:
    targets = make_targets(args.kinds)
    rows = []
    for kind, target in targets.items():
        finr3d.fit(target, seconds=0.2, seed=0)  # the process's first fit pays torch's imports: not measured
        for s in args.budgets:
            t0 = time.perf_counter()
            field = finr3d.fit(target, seconds=s, seed=0)
            wall = time.perf_counter() - t0
            h = field.history
            row = {"kind": kind, "budget": s, "wall": wall, "fit_seconds": h["seconds"], "bound": bound(s),
                   "ok": wall <= bound(s), "steps": h["steps"], "metric": h["metric_name"],
                   "score": h[h["metric_name"]], "decomposition_samples": h.get("decomposition_samples"),
                   "als_sweeps": h.get("als_sweeps")}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return {"rows": rows}


def best_by(curve: list[dict], t: float, metric: str):
    seen = [c[metric] for c in curve if c["elapsed"] <= t]
    return max(seen) if seen else None


def kodak(args) -> dict:
    folder = shared_assets() / "images"
    images = sorted(folder.glob("kodim*.png"))[: args.images]
    budgets = sorted(args.kodak_budgets)
    rows = []
    for path in images:
        target = ImageTarget(path)
        finr3d.fit(target, seconds=0.2, seed=0)
        short = {}
        for s in budgets:
            field = finr3d.fit(target, seconds=s, seed=0)
            short[s] = (field.history["psnr"], field.history["seconds"])
        stop_at = budgets[-1] * 1.05

        def stop(info):
            return info.get("elapsed", 0.0) < stop_at

        try:
            long = finr3d.fit(target, seconds=REFERENCE_SECONDS, seed=0, callback=stop)
        except FitCancelled as exc:
            long = exc.field
        curve = long.history["curve"]
        for s in budgets:
            ref = best_by(curve, s, "psnr")
            psnr, used = short[s]
            row = {"image": path.stem, "budget": s, "psnr": psnr, "seconds": used, "reference_psnr": ref,
                   "gap": None if ref is None else psnr - ref}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return {"rows": rows, "reference_seconds": REFERENCE_SECONDS}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["honesty", "kodak"], required=True)
    p.add_argument("--kinds", nargs="+", default=["image", "sdf", "volume", "video"])
    p.add_argument("--budgets", nargs="+", type=float, default=[0.5, 1.2, 3, 10, 30, 60])
    p.add_argument("--kodak-budgets", nargs="+", type=float, default=[0.5, 1.2, 3, 10])
    p.add_argument("--images", type=int, default=12, help="the first N Kodak images")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    result = honesty(args) if args.part == "honesty" else kodak(args)
    result["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                         "torch": torch.__version__, "load": os.getloadavg()}
    (HERE / f"budget_{args.part}.json").write_text(json.dumps(result, indent=2))
    if args.part == "honesty":
        print("| kind | budget S (s) | elapsed (s) | bound 1.1 S + 0.3 (s) | within | steps | metric |")
        print("|---|---:|---:|---:|:-:|---:|---:|")
        for r in result["rows"]:
            print(f"| {r['kind']} | {r['budget']:g} | {r['wall']:.2f} | {r['bound']:.2f} | "
                  f"{'yes' if r['ok'] else '**no**'} | {r['steps']} | {r['metric']} {r['score']:.4g} |")
    else:
        print("| image | S (s) | PSNR at S (dB) | 120-s fit by S (dB) | gap (dB) |")
        print("|---|---:|---:|---:|---:|")
        for r in result["rows"]:
            ref = "—" if r["reference_psnr"] is None else f"{r['reference_psnr']:.2f}"
            gap = "—" if r["gap"] is None else f"{r['gap']:+.2f}"
            print(f"| {r['image']} | {r['budget']:g} | {r['psnr']:.2f} | {ref} | {gap} |")


if __name__ == "__main__":
    main()
