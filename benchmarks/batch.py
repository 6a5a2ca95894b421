"""Batch throughput: a plain sequential loop against ``finr3d batch`` on a local pool and on a local Ray.

Twelve shared assets (4 Kodak images, 5 meshes, 3 volumes) are fitted with
their kinds' presets and the same steps budget (equal work per asset, so a
ratio is a throughput ratio), three ways:

- **sequential**: one process, ``for asset: fit, save`` through the same fit
  path (``finr3d.batch.fit_job``), torch using every core (what a plain loop
  gets by default);
- **sequential1**: the same loop with one torch thread (a pool worker's setting),
  which separates the pool's gain from parallel assets from torch's own
  threading efficiency;
- **local**: ``finr3d.batch(engine="local")``: a process pool sized to the cores,
  ``cores // workers`` torch threads each (worker start-up is inside the time);
- **ray**: ``finr3d.batch(engine="ray")`` on a local Ray with one CPU per task
  (``ray.init`` is timed apart: a cluster is started once, not per batch).

Each way starts from an empty ground-truth cache (``FINR3D_CACHE``), so each
pays the same mesh preprocessing. Then, with Ray still up and its worker warm:

- **Ray's per-task overhead**: the round trip of a task (submit, run, result
  back) minus the fit's own time measured inside the task, for a short fit
  repeated, and for one ``--overhead-seconds`` fit (default 30) beside a bare
  in-process fit of the same asset;
- **the driver's own cost per asset** (sha256 of the input, writing the
  ``.finr``, one fsynced manifest line), which bounds a single driver;
- **a paper projection** (not a measurement) of throughput at 100 workers.

    flock /tmp/finr3d-bench.lock python benchmarks/batch.py               # the recorded run
    flock /tmp/finr3d-bench.lock python benchmarks/batch.py --assets 4 --overhead-seconds 5   # a quick pass

Writes ``benchmarks/batch.json`` and prints a markdown summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from shared_assets import shared_assets  # noqa: E402

import finr3d  # noqa: E402
from finr3d.batch import _Manifest, _sha256, _write_output, fit_job  # noqa: E402

ASSETS = ["images/kodim01.png", "images/kodim02.png", "images/kodim03.png", "images/kodim04.png",
          "meshes/bunny.obj", "meshes/spot.obj", "meshes/suzanne.obj", "meshes/teapot.obj", "meshes/cow.obj",
          "volumes/fuel_64x64x64_uint8.raw", "volumes/neghip_64x64x64_uint8.raw",
          "volumes/hydrogen_atom_128x128x128_uint8.raw"]


def _job(path: Path, settings: dict, threads: int) -> dict:
    from finr3d.targets import detect_kind

    kind = detect_kind(path)
    return {"index": 0, "input": str(path), "filename": path.name, "name": path.stem, "kind": kind, "sha256": None,
            "settings": {k: v for k, v in settings.items() if k != "resolution" or kind == "sdf"},
            "threads": threads, "attempt": 0}


def _fresh_cache(root: Path, name: str) -> None:
    os.environ["FINR3D_CACHE"] = str(root / f"cache-{name}")


def sequential(paths, settings, threads, out: Path) -> dict:
    import torch

    torch.set_num_threads(threads)
    out.mkdir()
    t0 = time.perf_counter()
    rows = []
    for path in paths:
        row = fit_job(_job(path, settings, threads))
        if row["status"] == "ok":
            (out / f"{path.stem}.finr").write_bytes(row.pop("payload"))
        rows.append(row)
    return {"wall_s": time.perf_counter() - t0, "rows": rows}


def engine_run(paths, settings, engine, workers, out: Path) -> dict:
    t0 = time.perf_counter()
    rows = finr3d.batch(paths, out, engine=engine, workers=workers, **settings)
    return {"wall_s": time.perf_counter() - t0, "rows": rows}


def ray_overhead(path: Path, settings: dict, reps: int, long_seconds: float) -> dict:
    import ray
    import torch

    task = ray.remote(fit_job).options(num_cpus=1, max_retries=0)
    short = {**settings, "steps": 10}
    ray.get(task.remote(_job(path, short, 1)))  # a warm worker: imports and first-fit warm-up done
    trips, inner = [], []
    for _ in range(reps):
        t = time.perf_counter()
        row = ray.get(task.remote(_job(path, short, 1)))
        trips.append(time.perf_counter() - t)
        inner.append(row["seconds"])
    over = [a - b for a, b in zip(trips, inner)]
    empty = ray.remote(lambda: None).options(num_cpus=1)
    ray.get(empty.remote())
    t = time.perf_counter()
    for _ in range(20):
        ray.get(empty.remote())
    empty_s = (time.perf_counter() - t) / 20
    out = {"short_fit_round_trip_s": trips, "short_fit_in_task_s": inner,
           "overhead_s_median": statistics.median(over), "overhead_s_max": max(over), "empty_task_s": empty_s}
    if long_seconds:
        long = {**settings, "steps": 10 ** 7, "seconds": long_seconds}
        torch.set_num_threads(1)
        t = time.perf_counter()
        bare = fit_job(_job(path, long, 1))
        bare_s = time.perf_counter() - t
        t = time.perf_counter()
        row = ray.get(task.remote(_job(path, long, 1)))
        trip = time.perf_counter() - t
        out.update(long_fit_seconds=long_seconds, long_bare_wall_s=bare_s, long_ray_round_trip_s=trip,
                   long_ray_in_task_s=row["seconds"], long_overhead_s=trip - row["seconds"],
                   long_overhead_pct=100 * (trip - row["seconds"]) / long_seconds,
                   long_overhead_vs_bare_pct=100 * (trip - bare_s) / bare_s)
    out["overhead_pct_of_30s_fit"] = 100 * out["overhead_s_median"] / 30.0
    return out


def driver_cost(paths, out_rows, tmp: Path) -> dict:
    """Per asset: hash the input, write its .finr, append one fsynced manifest line (what the driver does)."""
    d = tmp / "driver"
    d.mkdir()
    manifest = _Manifest(d / "manifest.jsonl", fresh=True)
    blobs = {r["name"]: Path(r["output"]).read_bytes() for r in out_rows if r["status"] == "ok"}
    t = time.perf_counter()
    for path, row in zip(paths, out_rows):
        _sha256(path)
        if row["name"] in blobs:
            _write_output(d / f"{row['name']}.finr", blobs[row["name"]])
        manifest.append(row)
    manifest.close()
    return {"per_asset_s": (time.perf_counter() - t) / len(paths)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="fit steps per asset (equal work; default 20)")
    p.add_argument("--seconds", type=float, default=None,
                   help="instead of --steps: a time budget per asset (equal settings, as `finr3d batch --seconds S` "
                        "against a loop of `finr3d fit --seconds S`; each way's quality is reported beside it)")
    p.add_argument("--resolution", type=int, default=64, help="mesh ground-truth grid (default 64)")
    p.add_argument("--assets", type=int, default=12, help="how many of the 12 assets (default all)")
    p.add_argument("--modes", default="sequential1,sequential,local,ray")
    p.add_argument("--overhead-reps", type=int, default=5)
    p.add_argument("--overhead-seconds", type=float, default=30.0,
                   help="the long fit for the overhead ratio (0: skip) (default 30)")
    p.add_argument("--projection-workers", type=int, default=100)
    p.add_argument("--out", default=str(HERE / "batch.json"))
    args = p.parse_args(argv)

    root = shared_assets()
    paths = [root / a for a in ASSETS[: args.assets]]
    missing = [str(x) for x in paths if not x.exists()]
    if missing:
        raise SystemExit(f"missing shared assets {missing}; set FINR3D_SHARED")
    from finr3d.batch import _cores

    cores = _cores()
    settings = ({"seconds": args.seconds} if args.seconds else {"steps": args.steps}) | {"resolution": args.resolution}
    modes = args.modes.split(",")
    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.platform(),
            "python": platform.python_version(), "cores": cores, "settings": settings, "assets": ASSETS[: args.assets],
            "modes": modes, "load_before": os.getloadavg()}
    print("settings:", json.dumps(info), flush=True)
    result = {**info}

    def save():  # after every phase, so a run stopped half-way keeps what it measured
        Path(args.out).write_text(json.dumps(result, indent=2, default=lambda o: None if isinstance(o, bytes) else str(o)))

    with tempfile.TemporaryDirectory(prefix="finr3d-bench-batch-") as tmp:
        tmp = Path(tmp)
        if "sequential1" in modes:
            _fresh_cache(tmp, "sequential1")
            result["sequential1"] = sequential(paths, settings, 1, tmp / "seq1")
            print(f"sequential1: {result['sequential1']['wall_s']:.1f} s", flush=True)
            save()
        if "sequential" in modes:
            _fresh_cache(tmp, "sequential")
            result["sequential"] = sequential(paths, settings, cores, tmp / "seq")
            print(f"sequential: {result['sequential']['wall_s']:.1f} s", flush=True)
            save()
        if "local" in modes:
            _fresh_cache(tmp, "local")
            result["local"] = engine_run(paths, settings, "local", None, tmp / "local")
            print(f"local: {result['local']['wall_s']:.1f} s", flush=True)
            result["driver"] = driver_cost(paths, result["local"]["rows"], tmp)
            save()
        if "ray" in modes:
            import logging

            import ray

            _fresh_cache(tmp, "ray")  # before ray.init: Ray's workers take the driver's environment then
            t = time.perf_counter()
            ray.init(num_cpus=cores, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
            result["ray_init_s"] = time.perf_counter() - t
            try:
                result["ray"] = engine_run(paths, settings, "ray", None, tmp / "ray")
                print(f"ray: {result['ray']['wall_s']:.1f} s (+ ray.init {result['ray_init_s']:.1f} s)", flush=True)
                save()
                result["ray_overhead"] = ray_overhead(paths[0], settings, args.overhead_reps, args.overhead_seconds)
            finally:
                ray.shutdown()
    result["load_after"] = os.getloadavg()
    n = len(paths)
    for mode in ("sequential1", "sequential", "local", "ray"):
        if mode in result:
            r = result[mode]
            r["assets_per_min"] = 60 * n / r["wall_s"]
            r["ok"] = sum(1 for row in r["rows"] if row["status"] == "ok")
            r["rows"] = [{k: v for k, v in row.items() if k != "payload"} for row in r["rows"]]
            r["quality"] = _quality(r["rows"])
    if "sequential" in result:
        for mode in ("sequential1", "local", "ray"):
            if mode in result:
                result[mode]["speedup_vs_sequential"] = result[mode]["assets_per_min"] / result["sequential"]["assets_per_min"]
    if "sequential1" in result:
        for mode in ("local", "ray"):
            if mode in result:
                result[mode]["speedup_vs_sequential1"] = result[mode]["assets_per_min"] / result["sequential1"]["assets_per_min"]
    # paper projection: W workers each doing one asset at a time at the measured one-thread per-asset time,
    # plus Ray's per-task overhead, capped by the one driver's own per-asset cost
    base = result.get("ray") or result.get("local")
    if base is not None:
        per_asset = statistics.mean(r["seconds"] for r in base["rows"] if r.get("seconds"))
        overhead = (result.get("ray_overhead") or {}).get("overhead_s_median", 0.0)
        driver = (result.get("driver") or {}).get("per_asset_s", 0.0)
        w = args.projection_workers
        workers_rate = 60 * w / (per_asset + overhead)
        driver_rate = 60 / driver if driver else float("inf")
        result["projection"] = {"workers": w, "per_asset_s": per_asset, "overhead_s": overhead,
                                "driver_per_asset_s": driver, "workers_bound_per_min": workers_rate,
                                "driver_bound_per_min": driver_rate,
                                "assets_per_min": min(workers_rate, driver_rate)}
    save()
    _print_summary(result, n)
    return 0


def _quality(rows) -> dict:
    """Mean main metric per kind (PSNR for images and volumes, IoU for meshes) of a way's ok rows."""
    out = {}
    for row in rows:
        metric = row.get("metric") or {}
        if row.get("status") == "ok" and metric.get("value") is not None:
            out.setdefault(row["kind"], {"metric": metric["name"], "values": []})["values"].append(metric["value"])
    return {k: {"metric": v["metric"], "mean": statistics.mean(v["values"]), "n": len(v["values"])}
            for k, v in out.items()}


def _print_summary(r: dict, n: int) -> None:
    print(f"\n{n} assets, {r['settings']}, {r['cores']} cores; load average before {r['load_before']}, "
          f"after {r['load_after']}\n")
    print("| way | wall s | assets/min | vs sequential | vs sequential1 | ok |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode in ("sequential1", "sequential", "local", "ray"):
        if mode in r:
            m = r[mode]
            s1 = m.get("speedup_vs_sequential1")
            print(f"| {mode} | {m['wall_s']:.1f} | {m['assets_per_min']:.2f} | "
                  f"{m.get('speedup_vs_sequential', 1.0):.2f}x | {'' if s1 is None else f'{s1:.2f}x'} | {m['ok']}/{n} |")
    kinds = sorted({k for mode in ("sequential1", "sequential", "local", "ray") if mode in r
                    for k in r[mode].get("quality", {})})
    if kinds:
        print("\n| way | " + " | ".join(f"{k} mean {r[next(m for m in ('sequential', 'local', 'ray', 'sequential1') if m in r)]['quality'].get(k, {}).get('metric', '')}"
                                    for k in kinds) + " |")
        print("|---|" + "---:|" * len(kinds))
        for mode in ("sequential1", "sequential", "local", "ray"):
            if mode in r:
                q = r[mode].get("quality", {})
                print(f"| {mode} | " + " | ".join(f"{q[k]['mean']:.4g}" if k in q else "-" for k in kinds) + " |")
    if "ray_init_s" in r:
        print(f"\nray.init (local, {r['cores']} CPUs): {r['ray_init_s']:.1f} s, outside the ray row")
    o = r.get("ray_overhead")
    if o:
        print(f"Ray per-task overhead (warm worker, short fit x{len(o['short_fit_round_trip_s'])}): median "
              f"{1000 * o['overhead_s_median']:.0f} ms, max {1000 * o['overhead_s_max']:.0f} ms "
              f"= {o['overhead_pct_of_30s_fit']:.2f} % of a 30-s fit; empty task {1000 * o['empty_task_s']:.1f} ms")
        if "long_overhead_s" in o:
            print(f"{o['long_fit_seconds']:.0f}-s fit: bare {o['long_bare_wall_s']:.2f} s, Ray round trip "
                  f"{o['long_ray_round_trip_s']:.2f} s (in task {o['long_ray_in_task_s']:.2f} s): overhead "
                  f"{o['long_overhead_s'] * 1000:.0f} ms = {o['long_overhead_pct']:.2f} %; "
                  f"vs the bare fit {o['long_overhead_vs_bare_pct']:+.2f} %")
    d = r.get("driver")
    if d:
        print(f"driver per asset (sha256 + write .finr + manifest line): {1000 * d['per_asset_s']:.1f} ms")
    pr = r.get("projection")
    if pr:
        print(f"projection (paper, not measured): {pr['workers']} workers x one asset at a time at "
              f"{pr['per_asset_s']:.1f} s + {pr['overhead_s'] * 1000:.0f} ms -> {pr['workers_bound_per_min']:.0f} "
              f"assets/min; one driver caps at {pr['driver_bound_per_min']:.0f}/min -> "
              f"{pr['assets_per_min']:.0f} assets/min")


if __name__ == "__main__":
    sys.exit(main())
