"""finr3d against monolithic and discrete baselines at equal wall time, in one run.

Every method fits the same data for the same budget (``--seconds``), one after
another in one process, and records PSNR against its own elapsed time:

- ``finr3d``: one or more factorized fields (``--finr3d tucker:32:xy+t,cp:64``);
  the first is the one the others are compared with. Its time includes its
  closed-form start and its own validation passes.
- ``siren``, ``siren_eq`` (SIREN widened to finr3d's parameter count),
  ``relu_ff``, ``hashgrid`` (T = 2^19, the paper's) and
  ``hashgrid_eq`` (the table shrunk to finr3d's parameter count): neural
  baselines with their papers' settings (``benchmarks/baselines``); their
  time excludes the periodic scoring on 2^16 random pixels.
- ``cp_als``, ``cp_als_torch``, ``tucker``, ``tt_svd``: discrete decompositions of the data with
  finr3d's parameter count. Iterative ones check the clock between sweeps, so
  their last point may land one sweep past the budget; equal-time columns
  only count points within the time.

Reported: PSNR-versus-time curves (running best, PNG plot), PSNR at equal
times, each baseline's final PSNR and the time finr3d needs to reach it
(linear interpolation between curve points; speed-up = baseline's time to
its final PSNR / finr3d's time to the same PSNR), parameters, steps, and the
PSNR/SSIM of the final reconstruction on the whole grid.

    python benchmarks/speed.py --data video                      # carphone, all frames, 300 s a method
    python benchmarks/speed.py --data video --frames 32 --seconds 60 --methods finr3d,siren
    python benchmarks/speed.py --data image --images kodim01,kodim02 --seconds 120
    python benchmarks/speed.py --smoke                           # 16 frames, 10 s a method: checks the pipeline

Writes ``benchmarks/speed_results.json`` and ``benchmarks/speed_{video,image}.png``
(``speed_smoke_*`` with ``--smoke``) and prints a markdown table. Run it on an
otherwise idle machine: every method's time is wall time. On a busy machine
pass ``--threads 1``: OpenMP threads that wait on each other make torch 10-100x
slower there. One-time costs (lazy imports) are paid before any clock starts.
"""

from __future__ import annotations

import argparse
import datetime
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
from curves import jsonable as _jsonable, psnr_at, running_best, time_to  # noqa: E402,F401
from finr3d.targets import ImageTarget, psnr, ssim  # noqa: E402
from finr3d.video import VideoTarget  # noqa: E402

ALL_METHODS = ("finr3d", "siren", "siren_eq", "relu_ff", "hashgrid", "hashgrid_eq", "cp_als", "cp_als_torch", "tucker",
               "tt_svd")
#: finr3d settings per data kind, decomposition:rank[:layout], or ``default``: the target's own defaults
#: (finr3d/video.py: CP over x+y+t at a rank from the clip's size; finr3d/targets.py). The studies that chose
#: them are in benchmarks/RESULTS.md.
DEFAULT_FINR3D = {"video": "default", "image": "tucker:128"}
EQUAL_TIME_FRACTIONS = (0.1, 0.25, 0.5, 1.0)


def shared_dir() -> Path:
    return shared_assets().parent


# --------------------------------------------------------------------------- curves (benchmarks/curves.py)
# --------------------------------------------------------------------------- scoring
def score(recon: np.ndarray, data: np.ndarray) -> dict:
    """Whole-grid PSNR (one MSE over everything), mean per-frame PSNR and mean SSIM, values clipped to [0, 1]."""
    recon = np.clip(np.asarray(recon, np.float32).reshape(data.shape), 0, 1)
    out = {"psnr": psnr(recon, data)}
    if data.ndim == 4:
        out["psnr_frame_mean"] = float(np.mean([psnr(r, d) for r, d in zip(recon, data)]))
        out["ssim"] = float(np.mean([ssim(r, d) for r, d in zip(recon, data)]))
    else:
        out["ssim"] = ssim(recon, data)
    return out


def parse_finr3d_spec(spec: str, kind: str) -> dict:
    """``decomposition:rank[:layout]``, e.g. ``tucker:48:xy+t``, ``cp:128``, ``tt:32,32:x+y+t``, or
    ``default[:layout]`` (the target's defaults)."""
    parts = spec.split(":")
    if parts[0] == "default":
        out = {"default": True}
        if kind == "video":
            out["layout"] = parts[1] if len(parts) > 1 else "x+y+t"
        return out
    if len(parts) < 2 or parts[0] not in ("cp", "tucker", "tt"):
        raise SystemExit(f"--finr3d {spec!r}: use decomposition:rank[:layout], e.g. tucker:48:xy+t")
    ranks = [int(r) for r in parts[1].replace("x", "/").replace("/", ",").split(",") if r]
    out = {"decomposition": parts[0], "rank": ranks[0] if len(ranks) == 1 else ranks}
    if len(parts) > 2:
        if kind != "video":
            raise SystemExit(f"--finr3d {spec!r}: a layout applies to video only")
        out["layout"] = parts[2]
    elif kind == "video":
        out["layout"] = "x+y+t"
    return out


def run_finr3d(data: np.ndarray, kind: str, spec: dict, args) -> dict:
    if kind == "video":
        target = VideoTarget(data, layout=spec["layout"])
    else:
        target = ImageTarget(data)
    options = dict(backbone=args.backbone, seconds=args.seconds, seed=args.seed, device=args.device)
    if not spec.get("default"):
        options.update(decomposition=spec["decomposition"], rank=spec["rank"])
    if args.width:
        options["width"] = args.width
    if args.init:
        options["init"] = args.init
    t0 = time.perf_counter()
    field = finr3d.fit(target, **options)
    wall = time.perf_counter() - t0
    curve = [(c["elapsed"], c["psnr"]) for c in field.history["curve"]]
    recon = field.grid(list(data.shape[:-1]), squeeze=False)
    return {"curve": curve, "params": field.parameter_count(), "steps": field.history["steps"], "wall": wall,
            "settings": {**spec, "decomposition": field.config.decomposition, "backbone": field.config.backbone,
                         "width": field.config.width, "depth": field.config.depth, "basis": field.config.basis,
                         "ranks": list(field.ranks), "modes": field.modes,
                         "init": field.history.get("fit_config", {}).get("init")},
            **score(recon, data)}


def make_method(name: str, finr_params: int, data: np.ndarray, args):
    from baselines import HashGridBaseline, SirenBaseline, make_baseline

    common = {"seed": args.seed}
    if name in ("siren", "siren_eq", "relu_ff", "hashgrid", "hashgrid_eq"):
        common["device"] = args.device
    if name == "siren_eq":
        return SirenBaseline.for_parameters(finr_params, data.ndim - 1, data.shape[-1], **common)
    if name == "hashgrid":
        return make_baseline("hashgrid", log2_table_size=args.hash_log2_table, batch=args.hash_batch, **common)
    if name == "hashgrid_eq":
        return HashGridBaseline.for_parameters(finr_params, data.shape[:-1], data.shape[-1],
                                               batch=args.hash_batch, **common)
    if name in ("cp_als", "cp_als_torch", "tucker", "tt_svd"):
        return make_baseline(name, parameters=finr_params, seed=args.seed)
    return make_baseline(name, **common)


def run_baseline(name: str, data: np.ndarray, finr_params: int, args) -> dict:
    model = make_method(name, finr_params, data, args)
    t0 = time.perf_counter()
    curve = model.fit(data, seconds=args.seconds)
    wall = time.perf_counter() - t0
    recon = model.predict_dense()
    return {"curve": curve, "params": model.parameter_count(), "steps": model.steps, "wall": wall,
            "settings": model.settings(), "reference": model.reference, **score(recon, data)}


# --------------------------------------------------------------------------- data
def load_items(args) -> list[tuple[str, np.ndarray]]:
    if args.data == "video":
        path = Path(args.video) if args.video else shared_dir() / "assets" / "video" / "carphone.mp4"
        stop = None if args.frames is None else args.frame_start + args.frames
        target = VideoTarget(path, frames=(args.frame_start, stop), resize=args.resize)
        return [(f"{path.stem}[{args.frame_start}:{args.frame_start + target.shape[0]}]", target.data.numpy())]
    items = []
    for name in args.images.split(","):
        path = Path(name) if name.endswith(".png") else shared_dir() / "assets" / "images" / f"{name}.png"
        target = ImageTarget(path)
        items.append((path.stem, target.data.numpy()))
    return items


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import tensorly

    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "numpy": np.__version__, "tensorly": tensorly.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "finr3d": finr3d.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        info["load_average_at_start"] = list(os.getloadavg())
    except OSError:
        pass
    return info


# --------------------------------------------------------------------------- report
def summarize(results: dict, primary: str, seconds: float) -> dict:
    ref = running_best(results[primary]["curve"])
    out = {}
    for name, r in results.items():
        curve = running_best(r["curve"])
        final = curve[-1][1]
        t_self = time_to(curve, final)
        t_ref = time_to(ref, final)
        out[name] = {
            "final_curve_psnr": final,
            "time_to_final": t_self,
            "finr3d_time_to_this_final": t_ref,
            "speedup": (t_self / t_ref) if name != primary and t_ref > 0 and math.isfinite(t_ref) else None,
            # the full budget's column takes the final point, which lands just past the budget
            "psnr_at": {f"{f:g}": (final if f >= 1 else psnr_at(curve, f * seconds)) for f in EQUAL_TIME_FRACTIONS},
        }
    return out


def markdown_table(item: str, results: dict, summary: dict, primary: str, seconds: float) -> str:
    fr = " / ".join(f"{f * seconds:g}s" for f in EQUAL_TIME_FRACTIONS)
    lines = [f"**{item}** ({seconds:g} s per method)", "",
             f"| method | params | steps | PSNR @ {fr} | final PSNR / SSIM (full grid) | time to own final | "
             f"{primary} time to it | speed-up |",
             "|---|---:|---:|---|---|---:|---:|---:|"]
    for name, r in results.items():
        s = summary[name]
        at = " / ".join(f"{v:.2f}" for v in s["psnr_at"].values())
        speed = "-" if name == primary else ("not reached" if s["speedup"] is None else f"{s['speedup']:.1f}x")
        t_ref = s["finr3d_time_to_this_final"]
        lines.append(f"| {name} | {r['params']:,} | {r['steps']} | {at} | {r['psnr']:.2f} / {r['ssim']:.3f} | "
                     f"{s['time_to_final']:.1f} s | {'never' if not math.isfinite(t_ref) else f'{t_ref:.1f} s'} | {speed} |")
    return "\n".join(lines)


def plot(all_results: dict, path: Path, seconds: float, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(all_results)
    fig, axes = plt.subplots(1, n, figsize=(6.5 * n + 2.5, 4.8), squeeze=False)
    for ax, (item, results) in zip(axes[0], all_results.items()):
        for name, r in results.items():
            curve = running_best(r["curve"])
            if curve[-1][0] < seconds:  # a finished method keeps its result until the budget ends
                curve.append((seconds, curve[-1][1]))
            t = [max(c[0], 1e-2) for c in curve]
            style = "-" if name.startswith("finr3d") else "--"
            # a step function: a method's quality is known only once a point is computed
            ax.plot(t, [c[1] for c in curve], style, drawstyle="steps-post", marker="." if len(curve) < 4 else None,
                    label=f"{name} ({r['params'] / 1e3:.0f}k params)")
        ax.set_xscale("log")
        ax.set_xlim(1e-2, seconds * 1.05)
        ax.set_xlabel("wall time (s, log)")
        ax.set_ylabel("PSNR (dB, best so far)")
        ax.set_title(item)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def warm_up(args) -> None:
    """Pay one-time costs (lazy imports such as torch._dynamo on the first optimizer, scipy, tensorly)
    before any clock starts, so that no method is charged for them."""
    from baselines import make_baseline

    tiny = np.random.default_rng(0).random((4, 8, 8, 3)).astype(np.float32)
    data = tiny if args.data == "video" else tiny[0]
    kind = args.data
    target = VideoTarget(data) if kind == "video" else ImageTarget(data)
    for init in ("closed_form", "random"):
        finr3d.fit(target, decomposition="tucker", rank=4, width=8, steps=2, init=init, device=args.device)
    for name in ("siren", "cp_als", "tucker", "tt_svd"):
        make_baseline(name, **({"parameters": 100} if name in ("cp_als", "tucker", "tt_svd") else {})).fit(data, 0.01)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=["video", "image"], default="video")
    p.add_argument("--seconds", type=float, help="wall-time budget of every method (default 300; 10 with --smoke)")
    p.add_argument("--video", help="video file or frame folder (default: shared carphone.mp4)")
    p.add_argument("--frames", type=int, help="number of frames (default: all)")
    p.add_argument("--frame-start", type=int, default=0)
    p.add_argument("--resize", type=float, help="frame scale factor, e.g. 0.5")
    p.add_argument("--images", default="kodim01", help="comma list of Kodak names or .png paths (image mode)")
    p.add_argument("--methods", default=",".join(ALL_METHODS), help=f"comma list from {','.join(ALL_METHODS)}")
    p.add_argument("--finr3d", help="finr3d settings, comma list of decomposition:rank[:layout] "
                                    f"(default {DEFAULT_FINR3D['video']} for video, {DEFAULT_FINR3D['image']} for images); "
                                    "the first is compared with the baselines")
    p.add_argument("--backbone", default="siren")
    p.add_argument("--width", type=int, help="finr3d per-mode network width (default: finr3d's)")
    p.add_argument("--init", choices=["auto", "closed_form", "random"], help="finr3d start (default: finr3d's)")
    p.add_argument("--hash-log2-table", type=int, default=19, help="log2 T of the hashgrid method (paper: 19)")
    p.add_argument("--hash-batch", type=int, default=1 << 18, help="hash grid samples per step (paper: 2^18)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice). On a busy machine use 1: "
                                               "OpenMP threads that wait on each other can run 10-100x slower")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="a pipeline check: 16 frames, 10 s a method")
    p.add_argument("--out", help="JSON path (default benchmarks/speed_results.json; speed_smoke_results.json with --smoke)")
    p.add_argument("--plot", help="PNG path (default benchmarks/speed_{data}.png; speed_smoke_{data}.png with --smoke)")
    args = p.parse_args(argv)
    if args.seconds is None:
        args.seconds = 10.0 if args.smoke else 300.0
    if args.smoke and args.data == "video" and args.frames is None:
        args.frames = 16
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(ALL_METHODS)
    if unknown or "finr3d" not in methods:
        raise SystemExit(f"--methods must include finr3d and come from {ALL_METHODS}; got {sorted(unknown)}")
    specs = [parse_finr3d_spec(s, args.data) for s in (args.finr3d or DEFAULT_FINR3D[args.data]).split(",")]

    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
            "settings": vars(args), "smoke": bool(args.smoke)}
    print(f"# speed benchmark, {args.data}, {args.seconds:g} s per method; {meta['machine']['cpu']}, "
          f"{meta['machine']['cores']} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)", flush=True)
    warm_up(args)
    all_results, summaries, tables = {}, {}, []
    for item, data in load_items(args):
        print(f"\n## {item}: shape {data.shape}", flush=True)
        results = {}
        for i, spec in enumerate(specs):
            name = "finr3d" if i == 0 else f"finr3d[{':'.join('default' if v is True else str(v) for v in spec.values())}]"
            results[name] = run_finr3d(data, args.data, spec, args)
            print(_line(name, results[name]), flush=True)
        finr_params = results["finr3d"]["params"]
        for name in methods:
            if name == "finr3d":
                continue
            results[name] = run_baseline(name, data, finr_params, args)
            print(_line(name, results[name]), flush=True)
        summaries[item] = summarize(results, "finr3d", args.seconds)
        all_results[item] = results
        tables.append(markdown_table(item, results, summaries[item], "finr3d", args.seconds))
    # a smoke run never overwrites real results
    prefix = "speed_smoke" if args.smoke else "speed"
    plot_path = Path(args.plot or HERE / f"{prefix}_{args.data}.png")
    out_path = Path(args.out or HERE / f"{prefix}_results.json")
    title = (f"{'SMOKE RUN (pipeline check, not a result)' + chr(10) if args.smoke else ''}{args.seconds:g} s per method; "
             f"{meta['machine']['cpu']}, {meta['machine']['cores']} cores,{chr(10)}torch {torch.__version__} "
             f"({torch.get_num_threads()} threads); {meta['date']}")
    plot(all_results, plot_path, args.seconds, title)
    report = {"meta": meta, "results": all_results, "summary": summaries}
    out_path.write_text(json.dumps(_jsonable(report), indent=1, allow_nan=False))
    print()
    for t in tables:
        print(t + "\n")
    print(f"wrote {out_path} and {plot_path}")
    return 0


def _line(name: str, r: dict) -> str:
    return (f"{name:>12}: {r['params']:>9,} params, {r['steps']:>6} steps, wall {r['wall']:.1f} s, "
            f"PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
