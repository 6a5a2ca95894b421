"""A plain ``finr3d fit`` of a large CT-like NIfTI: what a user gets with no flags, at two learning rates.

The phantom of ``benchmarks/volume_ct_phantom.py`` at 512 x 512 x 160 (x, y, z; 84 MB as int16), written as
``.nii.gz`` through nibabel, as a scanner's export would be. For each learning rate (``--lrs``; the volume
preset's 2e-4 and the 2e-3 it had until the tenth session) a child process runs
``finr3d fit ct.nii.gz -o ct.finr --threads T --progress none [--lr LR]`` and then ``finr3d eval --json``:
wall time, peak RSS (``resource.getrusage`` of the child), the file's bytes, its PSNR on the value range and
3-D SSIM, and what the fit printed on stderr (the not-low-rank hint).

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/volume_ct_large.py
    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/volume_ct_large.py --lrs "" --goals 33,35,40 \
        --out benchmarks/volume_ct_large_goals.json

The second runs ``finr3d fit ct.nii.gz --target-psnr LEVEL`` instead, each level in its own child, and keeps
the stderr lines (the goal's ranks and bound, or why it was refused), and SZ3's smallest file at each level
(``volume_ct_phantom.sz3_points`` on the same values).

Results go to ``benchmarks/volume_ct_large.json``; RESULTS.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from volume_ct_phantom import ct_phantom  # noqa: E402


#: runs the CLI in the child and reports that process's own peak RSS (KiB on Linux) as its last stderr line
_CLI = ("import resource, sys; from finr3d.cli import main; rc = main(sys.argv[1:]); "
        "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)")


def child(argv: list[str]) -> tuple[subprocess.CompletedProcess, float, int, list[str]]:
    """``finr3d ARGV`` in a child process: its result, wall seconds, peak RSS in bytes, and its stderr lines."""
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", _CLI, *argv], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    lines = run.stderr.strip().splitlines()
    peak = [int(ln.split()[1]) * 1024 for ln in lines if ln.startswith("PEAK_RSS_KIB")]
    return run, seconds, (peak[-1] if peak else -1), [ln for ln in lines if not ln.startswith("PEAK_RSS_KIB")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="160,512,512", help="z,y,x voxels of the phantom")
    p.add_argument("--lrs", default="default,2e-3", help="comma-separated: 'default' (the preset) or a rate")
    p.add_argument("--goals", default="", help="comma-separated --target-psnr levels, one goal fit each")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tmp", default=None, help="folder for the NIfTI and the files (default: a temporary one)")
    p.add_argument("--out", default=str(HERE / "volume_ct_large.json"))
    p.add_argument("--make", default=None, help=argparse.SUPPRESS)  # internal: write the NIfTI and exit
    args = p.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(","))
    if args.make:
        import nibabel

        vol = ct_phantom(shape)
        # NIfTI stores x, y, z; int16 as CT exports are (the phantom's 0..4095 fits)
        nibabel.save(nibabel.Nifti1Image(vol.transpose(2, 1, 0).astype(np.int16), np.eye(4)), args.make)
        return 0
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "load_average_start": os.getloadavg(), "shape_zyx": list(shape), "rows": []}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        src = Path(tmp) / "ct.nii.gz"
        # made in a child of its own: Linux carries a process's peak RSS across fork + exec into the children's
        # getrusage, so the phantom's 3 GB of float64 intermediates here would show as every fit's peak
        subprocess.run([sys.executable, __file__, "--make", str(src), "--shape", args.shape], check=True)
        result["source_bytes_int16"] = int(np.prod(shape) * 2)
        result["nifti_gz_bytes"] = src.stat().st_size
        runs = [("lr", lr) for lr in args.lrs.split(",") if lr] + [("goal", g) for g in args.goals.split(",") if g]
        for what, value in runs:
            out = Path(tmp) / "ct.finr"
            argv = ["fit", str(src), "-o", str(out), "--threads", str(args.threads), "--progress", "none"]
            if what == "goal":
                argv += ["--target-psnr", value]
            elif value != "default":
                argv += ["--lr", value]
            run, seconds, peak, err = child(argv)
            row = {what: value, "command": " ".join(["finr3d", *argv]), "seconds": seconds, "exit": run.returncode,
                   "peak_rss_bytes": peak, "stdout": run.stdout.strip().splitlines()[-2:], "stderr": err[-2:]}
            if run.returncode == 0:
                row["bytes"] = out.stat().st_size
                ev, ev_seconds, ev_peak, _ = child(["eval", str(out), "--reference", str(src), "--json"])
                if ev.returncode == 0:
                    metrics = json.loads(ev.stdout)
                    row.update(psnr=metrics.get("psnr"), ssim=metrics.get("ssim"), eval_seconds=ev_seconds,
                               eval_peak_rss_bytes=ev_peak)
                out.unlink()
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
    if any(g for g in args.goals.split(",")):
        # SZ3 at the same levels, on the same values (the phantom, min-max normalized as finr3d reads it); after
        # every child, so its float copies never count in a fit's peak RSS
        import volume_fit as vf
        from volume_ct_phantom import sz3_points

        t0 = time.perf_counter()
        points = sz3_points(vf.normalized(ct_phantom(shape)))
        result["sz3"] = points
        result["sz3_at"] = {g: vf.smallest_at(points, float(g)) for g in args.goals.split(",") if g}
        print(f"sz3: {result['sz3_at']} ({time.perf_counter() - t0:.1f} s)", flush=True)
    result["load_average_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
