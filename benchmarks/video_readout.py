"""Why the video default reads out a cosine basis: the measurements behind it.

1. **Readout loss.** CP-ALS of the clip (rank R, 5 sweeps), read into per-axis
   SIREN networks by the closed-form ridge readout, with and without the cosine
   basis (``basis="grid"``): whole-clip PSNR of the field against the discrete
   CP it was read from.
2. **Between samples.** A field fitted to a smooth synthetic clip (the test
   suite's moving blob), decoded on a grid twice as fine in t, y and x: the
   cosine-only readout (the default) against a least-squares mix of cosine and
   sine features read from the same factor curves.
3. **Sweeps or Adam.** The default fit for ``--seconds``, against the same fit
   that stops sweeping at half the budget and refines with Adam for the rest.

    python benchmarks/video_readout.py                     # carphone, rank 1024, 60-s fits
    python benchmarks/video_readout.py --rank 512 --seconds 20 --widths 32,128

Writes ``benchmarks/video_readout.json`` and prints the numbers. Pin it to one
core (``OMP_NUM_THREADS=1 taskset -c N``) for timings comparable with RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import finr3d  # noqa: E402
import finr3d.closed_form as cf  # noqa: E402
from finr3d.closed_form import closed_form_start, cp_als, readout  # noqa: E402
from finr3d.config import FieldConfig  # noqa: E402
from finr3d.fitting import build_field  # noqa: E402
from finr3d.targets import psnr  # noqa: E402
from finr3d.video import VideoTarget  # noqa: E402
from shared_assets import shared_assets  # noqa: E402


def readout_loss(target: VideoTarget, rank: int, widths: list[int]) -> dict:
    data = target.data
    mean = data.reshape(-1, data.shape[-1]).mean(0)
    factors, w = cp_als(data - mean, rank, n_iter=5)
    discrete = torch.einsum("ir,jr,kr,rc->ijkc", *factors, w) + mean
    out = {"discrete_cp": psnr(discrete.numpy(), data.numpy())}
    default_sweeps, cf.ALS_SWEEPS = cf.ALS_SWEEPS, 5  # both read out the same five sweeps
    for width in widths:
        for basis in (0, "grid"):
            torch.manual_seed(0)
            field = build_field(target, FieldConfig(decomposition="cp", rank=rank, width=width, basis=basis))
            # basis 0: cp_als's default 5 sweeps and no distillation step; basis "grid": ALS_SWEEPS (5 here)
            closed_form_start(field, target, seconds=None, steps=1 if basis else 0)
            key = f"width{width}_basis_{basis}"
            out[key] = {"psnr": target.evaluate(field)["psnr"], "parameters": field.parameter_count()}
            print(f"readout, width {width}, basis {basis}: {out[key]['psnr']:.2f} dB "
                  f"(discrete CP of 5 sweeps {out['discrete_cp']:.2f} dB)", flush=True)
    cf.ALS_SWEEPS = default_sweeps
    return out


def between_samples() -> dict:
    from test_video import blob_clip

    coarse, fine = (8, 24, 32), (15, 47, 63)
    field = finr3d.fit(VideoTarget(blob_clip(*coarse)), rank=24, steps=50, seed=0)
    grid = [torch.linspace(-1, 1, n) for n in coarse]
    fine_grid = [torch.linspace(-1, 1, n) for n in fine]
    out = {"stored": psnr(field.grid(grid), blob_clip(*coarse)),
           "fine_cosine_only": psnr(field.grid(fine_grid), blob_clip(*fine))}
    for net, coords in zip(field.nets, grid):
        x = coords[:, None]
        with torch.no_grad():
            curves = net(x)
        readout(net, x, curves, ridge=1e-3, hidden=True)  # the same curves, through cosine and sine features
    out["stored_mixed"] = psnr(field.grid(grid), blob_clip(*coarse))
    out["fine_mixed"] = psnr(field.grid(fine_grid), blob_clip(*fine))
    print("between samples: " + ", ".join(f"{k} {v:.2f} dB" for k, v in out.items()), flush=True)
    return out


def sweeps_or_adam(target: VideoTarget, rank: int, seconds: float) -> dict:
    out = {}
    for label, frac in (("sweeps_only", None), ("half_sweeps_half_adam", 0.5)):
        options = {"rank": rank, "seconds": seconds, "seed": 0}
        if frac is not None:
            options["distill_fraction"] = frac
        field = finr3d.fit(target, **options)
        out[label] = {"psnr": target.evaluate(field)["psnr"], "adam_steps": field.history["steps"],
                      "sweeps": field.history.get("als_sweeps")}
        print(f"{label}: {out[label]}", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", help="video file or frame folder (default: shared carphone.mp4)")
    p.add_argument("--rank", type=int, default=1024)
    p.add_argument("--widths", default="32,128,256", help="network widths of part 1")
    p.add_argument("--seconds", type=float, default=60.0, help="budget of each part-3 fit")
    p.add_argument("--out", default=str(HERE / "video_readout.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    target = VideoTarget(args.video or shared_assets() / "video" / "carphone.mp4")
    t0 = time.perf_counter()
    report = {
        "meta": {"date": datetime.datetime.now().isoformat(timespec="seconds"), "platform": platform.platform(),
                 "torch": torch.__version__, "threads": 1, "settings": vars(args), "shape": list(target.shape)},
        "readout_loss": readout_loss(target, args.rank, [int(w) for w in args.widths.split(",")]),
        "between_samples": between_samples(),
        "sweeps_or_adam": sweeps_or_adam(target, args.rank, args.seconds),
    }
    report["meta"]["wall_seconds"] = time.perf_counter() - t0
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
