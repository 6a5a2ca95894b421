"""Volumes and the 4-D simulation clip: rate-distortion against SPERR, SZ3 and ZFP; time-to-PSNR against
a monolithic SIREN; peak memory of a 512^3 fit.

Parts (run each under the bench lock; each stays under ~10 minutes on 2 cores):

    flock /tmp/finr3d-bench.lock python benchmarks/volume_fit.py rd --seconds 60
    flock /tmp/finr3d-bench.lock python benchmarks/volume_fit.py speed --siren-seconds 120
    flock /tmp/finr3d-bench.lock python benchmarks/volume_fit.py memory --seconds 60

``rd``: every shared volume (``$FINR3D_SHARED/assets/volumes``) and the smoke clip
(:func:`finr3d.simulation.smoke_clip`, 48 frames of 64^3 unless ``--clip``) are normalized to [0, 1] by
their min and max, so PSNR is on the source's value range. Each codec sweeps its error bound (SZ3 ABS,
ZFP tolerance and rate, SPERR target PSNR through hdf5plugin + h5py, stored bytes from
``ds.id.get_storage_size()``); finr3d fits once per volume and sweeps its rank prefixes and
quantizations (``finr3d.sweep.rank_path``), each file decoded as a reader would. The table gives the
smallest file reaching 40 and 45 dB.

``speed``: SIREN (benchmarks/baselines/siren.py, the paper's settings) trains for ``--siren-seconds`` on a
3-D volume and on the clip; finr3d then fits with that final PSNR as its target metric, and the ratio of
the times is reported (both PSNRs on [0, 1], finr3d's on its validation grid, SIREN's on its fixed random
subset).

``memory``: a 512^3 uint8 volume (the hydrogen atom upsampled 4x, written to a temporary ``.raw``) is
fitted by ``finr3d fit`` in a child process; its peak RSS (``ru_maxrss``) is compared with
2 x the source bytes + 1.5 GB.

Results go to ``benchmarks/volume_fit_<part>.json``; RESULTS.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
SHARED = Path(os.environ.get("FINR3D_SHARED", HERE.parent.parent / "shared")) / "assets" / "volumes"
VOLUMES = ("neghip_64x64x64_uint8.raw", "fuel_64x64x64_uint8.raw", "hydrogen_atom_128x128x128_uint8.raw")
LEVELS = (40.0, 45.0)


def psnr(a, b) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def normalized(arr) -> np.ndarray:
    arr = np.asarray(arr, np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    return ((arr - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)


def load_volume(name) -> np.ndarray:
    """A shared volume by file name, ``ct-phantom`` (benchmarks/volume_ct_phantom.py), or any volume file's path."""
    from finr3d.volume import read_volume

    if name == "ct-phantom":
        from volume_ct_phantom import ct_phantom

        return normalized(ct_phantom())
    path = SHARED / name if (SHARED / name).exists() else Path(name)
    arr, _ = read_volume(path)
    return normalized(arr)


def load_clip(spec: str) -> np.ndarray:
    from finr3d.simulation import smoke_clip

    frames, size = (int(v) for v in spec.split("x"))
    return normalized(smoke_clip(frames, size))


# ----------------------------------------------------------------------------- codecs
def sz3_points(x, bounds=None):
    """SZ3 (ABS error bounds, ``bounds``; default 0.1 ... 1e-4, 28 of them) on ``x``: bytes and PSNR of each."""
    from pysz import sz, szConfig, szErrorBoundMode

    out = []
    for eb in np.geomspace(0.1, 1e-4, 28) if bounds is None else bounds:
        cfg = szConfig()
        cfg.errorBoundMode = szErrorBoundMode.ABS
        cfg.absErrorBound = float(eb)
        comp, _ = sz.compress(np.ascontiguousarray(x), cfg)
        dec, _ = sz.decompress(comp, np.float32, x.shape)
        out.append({"setting": f"abs {eb:.3g}", "bytes": int(comp.nbytes), "psnr": psnr(dec.reshape(x.shape), x)})
    return out


def zfp_points(x):
    import zfpy

    out = []
    for tol in np.geomspace(0.2, 1e-4, 24):
        comp = zfpy.compress_numpy(np.ascontiguousarray(x), tolerance=float(tol))
        out.append({"setting": f"tolerance {tol:.3g}", "bytes": len(comp),
                    "psnr": psnr(zfpy.decompress_numpy(comp), x)})
    for rate in (0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8):  # rates below 0.25 crash zfpy on small inputs
        comp = zfpy.compress_numpy(np.ascontiguousarray(x), rate=float(rate))
        out.append({"setting": f"rate {rate}", "bytes": len(comp), "psnr": psnr(zfpy.decompress_numpy(comp), x)})
    return out


def sperr_points(x):
    import h5py
    import hdf5plugin

    out = []
    chunks = x.shape if x.ndim == 3 else (1, *x.shape[1:])  # SPERR codes 2-D/3-D chunks: a clip frame by frame
    with tempfile.TemporaryDirectory() as tmp:
        for target in np.arange(30, 71, 2.5):
            path = Path(tmp) / "s.h5"
            with h5py.File(path, "w") as f:
                ds = f.create_dataset("v", data=x, chunks=chunks, **hdf5plugin.Sperr(peak_signal_to_noise_ratio=target))
                size = int(ds.id.get_storage_size())
            with h5py.File(path, "r") as f:
                dec = f["v"][...]
            out.append({"setting": f"psnr {target:g}", "bytes": size, "psnr": psnr(dec, x)})
    return out


def smallest_at(points, level):
    ok = [p for p in points if p["psnr"] >= level]
    return min((p["bytes"] for p in ok), default=None)


# ----------------------------------------------------------------------------- finr3d
#: Quantization steps of the compact files (field units: the volume normalized to [0, 1]; 1e-3 is ~60 dB of
#: uniform noise, so the sweep spans lossless-looking to coarse).
STEPS = (1e-5, 1.5e-5, 2e-5, 2.5e-5, 3e-5, 5e-5, 1e-4, 4e-4, 1e-3, 2e-3, 4e-3)


def finr3d_points(x, axes, seconds, options):
    """One fit, then every rank prefix on ``rank_path`` x every step: the exact bytes ``save`` writes (format v2,
    lean metadata) and the PSNR of the file decoded as a reader loads it."""
    import finr3d
    from finr3d import compact_io
    from finr3d.field import FactorizedField
    from finr3d.sweep import rank_path
    from finr3d.volume import VolumeTarget

    target = VolumeTarget(x, axes=axes)
    t0 = time.perf_counter()
    field = finr3d.fit(target, seconds=seconds, **options)
    fit_s = time.perf_counter() - t0
    pts = []
    for prefix in rank_path(field):
        model = field.truncate(prefix)
        if compact_io.can_compact(model) is None:
            blobs = list(zip(compact_io.encode_steps(model, STEPS), (f"step {s:g}" for s in STEPS)))
        else:
            blobs = [(model.encode(quantization=q), q) for q in ("fp16", "int8", "int6")]
        for data, how in blobs:
            decoded = FactorizedField.from_file(data)
            p = target.evaluate(decoded, ssim=False)["psnr"]
            pts.append({"setting": f"ranks {list(model.ranks)} {how}", "bytes": len(data), "psnr": p})
    smallest = len(field.truncate(1).encode(step=STEPS[-1]))
    # what `finr3d fit --target-psnr LEVEL` writes: sweep.choose_rank on the same fit (grid, then the step refined)
    from finr3d.sweep import choose_rank

    chosen = {}
    for level in LEVELS:
        try:
            c = choose_rank(field, target, target=level)
            chosen[str(level)] = {"bytes": c["bytes"], "psnr": c["psnr"], "ranks": c["ranks"], "step": c.get("step"),
                                  "evaluations": c["evaluations"],
                                  # a lattice residual beside a smaller field (finr3d.lattice_residual), if one won
                                  "residual_bytes": (c.get("detail") or {}).get("nbytes"),
                                  "field_bytes": c.get("field_bytes", c["bytes"])}
        except ValueError as exc:  # no prefix reaches the level
            chosen[str(level)] = {"error": str(exc)}
    return pts, {"fit_seconds": fit_s, "fit_psnr": (field.history.get("metrics") or {}).get("psnr"), "ranks": list(field.ranks),
                 "decomposition": field.config.decomposition, "steps": field.history.get("steps"),
                 "parameters": field.parameter_count(), "rank1_file_bytes": smallest, "chosen": chosen}


def part_rd(args):
    import torch

    torch.set_num_threads(args.threads)
    datasets = [(n.split("_")[0], load_volume(n), None) for n in VOLUMES]
    datasets.append((f"smoke {args.clip}", load_clip(args.clip), "tzyx"))
    options = json.loads(args.finr3d_options)
    from finr3d.presets import COMPACT_TIMED_VOLUME

    options_4d = COMPACT_TIMED_VOLUME if args.finr3d_options_4d is None else json.loads(args.finr3d_options_4d)
    rows = []
    for name, x, axes in datasets:
        print(f"== {name} {x.shape}", flush=True)
        res = {"name": name, "shape": list(x.shape), "raw_bytes_uint8": int(x.size)}
        for codec_name, fn in (("sz3", sz3_points), ("zfp", zfp_points), ("sperr", sperr_points)):
            t0 = time.perf_counter()
            try:
                pts = fn(x)
            except Exception as exc:  # a codec failing on an input is a result, not a crash of the benchmark
                pts = []
                res[f"{codec_name}_error"] = f"{type(exc).__name__}: {exc}"
            res[codec_name] = pts
            res[f"{codec_name}_at"] = {str(lv): smallest_at(pts, lv) for lv in LEVELS}
            print(f"  {codec_name}: {res[codec_name + '_at']} ({time.perf_counter() - t0:.1f} s)", flush=True)
        res["hosvd_bound"] = hosvd_bound(x)
        print(f"  truncated HOSVD (values at 1 byte each): {[(b['ranks'], b['values'], round(b['psnr'], 1)) for b in res['hosvd_bound']]}",
              flush=True)
        pts, info = finr3d_points(x, axes, args.seconds, options if axes is None else options_4d)
        res["finr3d"], res["finr3d_info"] = pts, info
        res["finr3d_at"] = {str(lv): smallest_at(pts, lv) for lv in LEVELS}
        res["finr3d_best_psnr"] = max(p["psnr"] for p in pts)
        print(f"  finr3d: {res['finr3d_at']} best {res['finr3d_best_psnr']:.2f} dB, {info}", flush=True)
        rows.append(res)
    return {"volumes": rows, "finr3d_options": options, "finr3d_options_4d": options_4d,
            "finr3d_seconds": args.seconds}


def hosvd_bound(x, ranks=(4, 8, 12, 16, 24, 32, 48)):
    """PSNR of a truncated HOSVD (the discrete Tucker a factorized field can at best reproduce) against its
    size in values (core + factors): at one byte a value, a lower bound on a global Tucker file's bytes."""
    x = np.asarray(x, np.float64)
    mean = x.mean()
    y = x - mean
    us = []
    for m in range(y.ndim):
        mat = np.moveaxis(y, m, 0).reshape(y.shape[m], -1)
        u, _, _ = np.linalg.svd(mat @ mat.T)
        us.append(u)
    out = []
    for r in ranks:
        rk = [min(r, n) for n in y.shape]
        core = y
        for m, u in enumerate(us):
            core = np.moveaxis(np.tensordot(core, u[:, :rk[m]], axes=([m], [0])), -1, m)
        rec = core
        for m, u in enumerate(us):
            rec = np.moveaxis(np.tensordot(rec, u[:, :rk[m]].T, axes=([m], [0])), -1, m)
        values = int(np.prod(rk) + sum(n * k for n, k in zip(y.shape, rk)))
        out.append({"ranks": rk, "values": values, "psnr": psnr(np.clip(rec + mean, 0, 1), x)})
    return out


# ----------------------------------------------------------------------------- speed
def part_speed(args):
    import torch

    import finr3d
    from baselines.siren import SirenBaseline
    from finr3d.volume import VolumeTarget

    torch.set_num_threads(args.threads)
    out = []
    cases = []
    if args.cases in ("both", "volume"):
        cases.append((args.volume.split("_")[0], load_volume(args.volume), None))
    if args.cases in ("both", "clip"):
        cases.append((f"smoke {args.clip}", load_clip(args.clip), "tzyx"))
    options = json.loads(args.finr3d_options)
    for name, x, axes in cases:
        print(f"== {name} {x.shape}", flush=True)
        siren = SirenBaseline(seed=0)
        t0 = time.perf_counter()
        curve = siren.fit(x[..., None], args.siren_seconds)
        wall = time.perf_counter() - t0
        target_psnr = curve[-1][1]
        print(f"  SIREN: {target_psnr:.2f} dB after {curve[-1][0]:.1f} s training ({siren.steps} steps, "
              f"{siren.parameter_count():,} params, {wall:.0f} s wall)", flush=True)
        # warm-up: a 3-step fit of a tiny signal of the same rank loads the code paths (scipy.interpolate, torch's
        # optimizer modules: 10-25 s of imports on this loaded machine), as SIREN's timer excludes its setup
        tiny = np.random.default_rng(0).random((4,) * x.ndim, dtype=np.float32)
        finr3d.fit(VolumeTarget(tiny, axes=axes), steps=3, **{k: v for k, v in options.items() if k != "rank"})
        target = VolumeTarget(x, axes=axes)
        t0 = time.perf_counter()
        field = finr3d.fit(target, seconds=args.finr3d_seconds, target_metric=target_psnr, **options)
        fit_wall = time.perf_counter() - t0
        hist = field.history
        reached = [c for c in hist["curve"] if c.get("psnr", -1) >= target_psnr]
        t_reach = reached[0]["elapsed"] if reached else None
        # the target's preparation (reading, min/max) counts too, and so does the goal rank's spectrum read
        prep = hist.get("target_seconds", 0.0) + hist.get("goal_rank", {}).get("seconds", 0.0)
        t_total = None if t_reach is None else t_reach + prep
        ratio = None if t_total is None else curve[-1][0] / t_total
        print(f"  finr3d: {hist['psnr']:.2f} dB, reached {target_psnr:.2f} dB at "
              f"{t_total if t_total is None else round(t_total, 2)} s -> {ratio if ratio is None else round(ratio, 1)}x "
              f"({hist.get('stopped')}, {fit_wall:.1f} s wall)", flush=True)
        out.append({"name": name, "shape": list(x.shape), "siren_seconds": curve[-1][0], "siren_psnr": target_psnr,
                    "siren_steps": siren.steps, "siren_params": siren.parameter_count(), "siren_curve": curve,
                    "siren_settings": siren.settings(), "finr3d_seconds_to_siren_psnr": t_total,
                    "finr3d_final_psnr": hist["psnr"], "finr3d_curve": hist["curve"], "speedup": ratio,
                    "finr3d_params": field.parameter_count(), "finr3d_ranks": list(field.ranks),
                    "finr3d_stopped": hist.get("stopped"), "finr3d_goal_rank": hist.get("goal_rank")})
    return {"cases": out, "finr3d_options": options}


# ----------------------------------------------------------------------------- memory
def make_big(path: Path, n: int = 512) -> None:
    from scipy.ndimage import zoom

    src = load_volume("hydrogen_atom_128x128x128_uint8.raw")
    f = n // src.shape[0]
    out = np.lib.format.open_memmap(str(path) + ".tmp.npy", mode="w+", dtype=np.uint8, shape=(n, n, n))
    step = 64
    for z in range(0, n, step):
        a = z // f
        part = zoom(src[a:min(src.shape[0], a + step // f + 1)], f, order=1)[:step]
        out[z:z + len(part)] = np.clip(np.round(part * 255), 0, 255).astype(np.uint8)
    out.flush()
    np.asarray(out).tofile(path)
    del out
    os.unlink(str(path) + ".tmp.npy")


def part_memory(args):
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        n = args.size
        raw = Path(tmp) / f"big_{n}x{n}x{n}_uint8.raw"
        make_big(raw, n)
        source_bytes = raw.stat().st_size
        model = Path(tmp) / "big.finr"
        code = ("import resource, sys, time; from finr3d.cli import main; t=time.perf_counter(); rc = main(sys.argv[1:]); "
                "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()-t); sys.exit(rc)")
        env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
        res = {}
        for label, argv in (("fit", ["fit", str(raw), "-o", str(model), "--seconds", str(args.seconds),
                                     "--progress", "none", "--threads", str(args.threads)]),
                            ("decode", ["decode", str(model), "-o", str(Path(tmp) / "d.npy")])):
            done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env)
            line = [ln for ln in done.stdout.splitlines() if ln.startswith("PEAK")]
            peak_kb, secs = (float(v) for v in line[-1].split()[1:]) if line else (None, None)
            res[label] = {"rc": done.returncode, "peak_rss_bytes": None if peak_kb is None else int(peak_kb * 1024),
                          "seconds": secs, "stdout": done.stdout[-2000:], "stderr": done.stderr[-1000:]}
            print(f"  {label}: rc {done.returncode}, peak RSS {peak_kb and peak_kb / 2**20:.2f} GiB, {secs} s",
                  flush=True)
        bound = 2 * source_bytes + int(1.5 * 2**30)
        return {"size": n, "source_bytes": source_bytes, "bound_bytes": bound, **res,
                "within_bound": all(r["peak_rss_bytes"] is not None and r["peak_rss_bytes"] <= bound
                                    for r in res.values())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["rd", "speed", "memory"])
    p.add_argument("--seconds", type=float, default=60.0, help="finr3d fit budget (rd, memory)")
    p.add_argument("--siren-seconds", type=float, default=120.0)
    p.add_argument("--finr3d-seconds", type=float, default=60.0, help="finr3d's budget in the speed part")
    p.add_argument("--clip", default="48x64", help="smoke clip FRAMESxSIZE")
    p.add_argument("--volume", default="neghip_64x64x64_uint8.raw",
                   help="the 3-D volume of the speed part: a shared volume's file name, ct-phantom, or a path")
    p.add_argument("--cases", default="both", choices=["both", "volume", "clip"], help="speed part: which cases")
    p.add_argument("--finr3d-options", default="{}", help="JSON FieldConfig/FitConfig options for finr3d.fit")
    p.add_argument("--finr3d-options-4d", default=None,
                   help="rd: the options for the 4-D clip (default: what a fit with a byte or quality goal uses, "
                        "presets.COMPACT_TIMED_VOLUME)")
    p.add_argument("--size", type=int, default=512, help="memory part: voxels per axis")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tmp", default=None, help="folder for the memory part's temporary volume")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    result = {"part": args.part, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "load_average_start": os.getloadavg()}
    result.update({"rd": part_rd, "speed": part_speed, "memory": part_memory}[args.part](args))
    result["wall_seconds"] = time.perf_counter() - t0
    result["load_average_end"] = os.getloadavg()
    out = Path(args.out or HERE / f"volume_fit_{args.part}.json")
    out.write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {out} ({result['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
