"""Write ``assets/blob_clip.mp4``: a tiny synthetic clip for examples and quick checks.

A Gaussian blob moves diagonally over a gradient that drifts in time, with a
soft ring, 24 frames of 48x64 at 12 fps (a few kB as H.264):

    python assets/make_clip.py                 # writes assets/blob_clip.mp4
    finr3d fit assets/blob_clip.mp4 -o blob.finr --seconds 20
    finr3d decode blob.finr -o blob_decoded.mp4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def blob_clip(frames: int = 24, height: int = 48, width: int = 64) -> np.ndarray:
    """(T, H, W, 3) float32 in [0, 1]: a moving blob and ring over a drifting gradient."""
    t = np.linspace(0, 1, frames)[:, None, None]
    y = np.linspace(0, 1, height)[None, :, None]
    x = np.linspace(0, 1, width)[None, None, :]
    cy, cx = 0.25 + 0.5 * t, 0.2 + 0.6 * t
    r2 = (y - cy) ** 2 + (x - cx) ** 2
    blob = np.exp(-r2 / 0.01)
    ring = np.exp(-((np.sqrt(r2) - 0.2) ** 2) / 0.002)
    grad = 0.2 + 0.5 * x * (1 - 0.6 * t) + 0.1 * y
    clip = np.stack([0.9 * blob + 0.3 * ring + 0.1 * grad, grad + 0.2 * ring, 0.7 * blob + 0.3 * y + 0 * x], -1)
    return np.clip(clip, 0, 1).astype(np.float32)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", default=str(Path(__file__).with_name("blob_clip.mp4")))
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--size", type=int, nargs=2, default=(48, 64), metavar=("H", "W"))
    p.add_argument("--fps", type=float, default=12.0)
    args = p.parse_args(argv)
    from finr3d.video import write_video

    out = write_video(blob_clip(args.frames, *args.size), args.output, fps=args.fps)
    print(f"wrote {out} ({Path(out).stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
