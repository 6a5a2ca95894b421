"""Write a smoke-plume simulation clip (a time-varying volume) as ``.npy``, axes (t, z, y, x).

The solver lives in :mod:`finr3d.simulation` (stable fluids with buoyancy and
advection-diffusion, numpy + scipy); this script only writes it out:

    python assets/make_smoke.py                      # assets/smoke_48x64.npy (48 frames of 64^3), ~50 MB
    python assets/make_smoke.py --frames 24 --size 32 --out /tmp/smoke.npy
    finr3d fit assets/smoke_48x64.npy --axes tzyx -o smoke.finr --seconds 60

The file is not kept in git (``.gitignore``); regenerate it. The same
arguments give the same clip.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from finr3d.simulation import smoke_clip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps-per-frame", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    out = Path(args.out or Path(__file__).resolve().parent / f"smoke_{args.frames}x{args.size}.npy")
    t0 = time.perf_counter()
    clip = smoke_clip(args.frames, args.size, steps_per_frame=args.steps_per_frame, seed=args.seed)
    np.save(out, clip)
    print(f"wrote {out}: {clip.shape} (t, z, y, x) float32, {clip.nbytes / 2**20:.1f} MiB, "
          f"density {clip.min():.3f}..{clip.max():.3f}, {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
