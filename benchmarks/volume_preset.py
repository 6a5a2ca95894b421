"""Which preset for 3-D volumes: candidate configs at one budget on every shared volume, in one run.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/volume_preset.py --seconds 15

Each candidate fits each volume (``$FINR3D_SHARED/assets/volumes``) for ``--seconds``; the table gives the
fit's PSNR on the value range, the compact file's bytes (format v2, lean metadata) and the decoded file's PSNR.
Writes ``benchmarks/volume_preset.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

CANDIDATES = {
    "cp r64 w128 (old preset)": {"decomposition": "cp", "rank": 64, "width": 128},
    "tucker r48 w64": {"decomposition": "tucker", "rank": 48, "width": 64},
    "tucker r48 w128": {"decomposition": "tucker", "rank": 48, "width": 128},
    # the hidden layers at a fraction of the rate after the HOSVD readout (eighth session)
    "tucker r48 w128 hidden_lr 0.3": {"decomposition": "tucker", "rank": 48, "width": 128, "hidden_lr": 0.3},
    "tucker r48 w128 hidden_lr 0.1": {"decomposition": "tucker", "rank": 48, "width": 128, "hidden_lr": 0.1},
    # a smaller Adam rate after the HOSVD start (tenth session): the start is near an optimum, and lr 2e-3 shakes
    # it down by 10-15 dB in the first second on neghip and the phantom before it recovers
    "tucker r48 w128 lr 1e-3": {"decomposition": "tucker", "rank": 48, "width": 128, "lr": 1e-3},
    "tucker r48 w128 lr 5e-4": {"decomposition": "tucker", "rank": 48, "width": 128, "lr": 5e-4},
    "tucker r48 w128 lr 2e-4": {"decomposition": "tucker", "rank": 48, "width": 128, "lr": 2e-4},
}
#: seconds into the fit at which the validation curve is read (time to quality, not only the end)
EARLY = (1.0, 2.0, 5.0)


def psnr_at(curve, seconds):
    """Best validation PSNR the fit had reached ``seconds`` after it began (None before its first one)."""
    seen = [c["psnr"] for c in curve if c.get("elapsed", 1e9) <= seconds and c.get("psnr") is not None]
    return max(seen) if seen else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--candidates", default=None, help="comma-separated candidate names (default: all)")
    p.add_argument("--phantom", action="store_true",
                   help="also the CT-like phantom of benchmarks/volume_ct_phantom.py (not low-rank)")
    p.add_argument("--out", default=str(HERE / "volume_preset.json"))
    args = p.parse_args()
    names = list(CANDIDATES) if args.candidates is None else [n.strip() for n in args.candidates.split(",")]
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        p.error(f"unknown candidates {unknown}; choose from {list(CANDIDATES)}")
    import torch

    import finr3d
    from finr3d.field import FactorizedField
    from finr3d.volume import VolumeTarget

    torch.set_num_threads(1)
    folder = Path(os.environ.get("FINR3D_SHARED", HERE.parent.parent / "shared")) / "assets" / "volumes"
    volumes = sorted(folder.glob("*.raw"))
    rows = []
    warm = VolumeTarget(str(volumes[0]))
    finr3d.fit(warm, steps=2, rank=4, width=8)  # imports and lazy initialisation before any clock
    sources = [(path.name.split("_")[0], str(path)) for path in volumes]
    if args.phantom:
        sys.path.insert(0, str(HERE))
        from volume_ct_phantom import ct_phantom

        sources.append(("ct-phantom", ct_phantom()))
    for label, source in sources:
        target = VolumeTarget(source)
        for name in names:
            options = CANDIDATES[name]
            t0 = time.perf_counter()
            field = finr3d.fit(target, seconds=args.seconds, **options)
            elapsed = time.perf_counter() - t0
            blob = field.encode()
            decoded = target.evaluate(FactorizedField.from_file(blob), ssim=False)["psnr"]
            row = {"volume": label, "candidate": name, "seconds": round(elapsed, 2),
                   "steps": field.history.get("steps"), "psnr": field.history.get("metrics", {}).get("psnr"),
                   "bytes": len(blob), "decoded_psnr": decoded, "parameters": field.parameter_count(),
                   **{f"psnr_at_{t:g}s": psnr_at(field.history.get("curve") or [], t) for t in EARLY}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seconds": args.seconds,
           "load_average_end": os.getloadavg(), "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print("\n| volume | candidate | PSNR (dB) | at 1 / 2 / 5 s | file KiB | decoded PSNR (dB) | steps |\n"
          "|---|---|---:|---|---:|---:|---:|")
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    for r in rows:
        early = " / ".join(fmt(r[f"psnr_at_{t:g}s"]) for t in EARLY)
        print(f"| {r['volume']} | {r['candidate']} | {r['psnr']:.2f} | {early} | {r['bytes'] / 1024:.1f} | "
              f"{r['decoded_psnr']:.2f} | {r['steps']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
