"""Which SDF value profile codes smallest: a HOSVD of each profile's ground-truth grid, coded by finr3d's coder.

No fitting: the 128^3 grid of exact distances (clamped at 2 truncations) of every mesh is turned into the
field each profile would learn (``clamp``: ``clip(d / t, -1, 1)``; ``tanh``: ``tanh(d / t)``, see
:mod:`finr3d.profiles`), decomposed by a rank-48 HOSVD, quantized and entropy-coded exactly as a compact
``.finr`` file (:func:`finr3d.compact.quantize`, coder 3) at a range of steps, decoded, meshed at level 0 by
marching cubes at 128^3 and scored by point-to-surface Chamfer-L1 against the input mesh. The profiles are
compared by the bytes at Draco-8's Chamfer (from ``benchmarks/compression.json``) and by the unquantized
rank-48 Chamfer. This isolates the profile from the fit: ``compression.py`` measures the fitted fields.

    python benchmarks/profiles.py                      # the six shared meshes
    python benchmarks/profiles.py --meshes bunny --rank 40
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from shared_assets import mesh_path  # noqa: E402
import finr3d  # noqa: E402,F401  (before open3d: finr3d preloads libusb for it)
from finr3d import compact, profiles  # noqa: E402
from finr3d.sdf import SDFTarget  # noqa: E402
from compression import MESHES, bytes_at, frontier, grid_error  # noqa: E402


def hosvd(x: np.ndarray, rank: int):
    """Leading ``rank`` singular vectors of every unfolding and the core they project ``x`` onto."""
    us = []
    for m in range(x.ndim):
        unfold = np.moveaxis(x, m, 0).reshape(x.shape[m], -1)
        _, v = np.linalg.eigh(unfold @ unfold.T)
        us.append(v[:, ::-1][:, :rank])
    core = x
    for m, u in enumerate(us):
        core = np.moveaxis(np.tensordot(u.T, np.moveaxis(core, m, 0), axes=([1], [0])), 0, m)
    return us, core


def expand(us, core):
    out = core
    for m, u in enumerate(us):
        out = np.moveaxis(np.tensordot(u, np.moveaxis(out, m, 0), axes=([1], [0])), 0, m)
    return out


def coded(us, core, step: float):
    """(bytes of the CODES section, decoded grid) of the HOSVD as a compact file codes it."""
    n = us[0].shape[0]
    factors = [u * math.sqrt(n) for u in us]  # unit-RMS columns, core in field units (compact.prepare)
    core = core / math.sqrt(n) ** 3
    r = core.shape[0]
    spec = compact.FieldSpec("sdf", "tucker", 3, 1, [(0,), (1,), (2,)], [n] * 3, [r] * 3,
                             np.array([[-1.0, 1.0]] * 3), 0.0, 1.0, np.zeros(1, np.float32), step=step,
                             flags=compact.FLAG_COMPACT)
    spec, q, codes = compact.quantize(spec, factors, core[..., None])
    body = compact.encode_codes_section(spec, q, codes, compact.CODER_ANS_BOUNDED)
    cf = compact.decode_codes_section(spec, body, compact.CODER_ANS_BOUNDED)
    x = np.linspace(-1.0, 1.0, n)
    grid = compact.contract_grid("tucker", [cf.features(m, x) for m in range(3)], cf.mixing)[..., 0]
    return len(body), grid


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--meshes", default=",".join(MESHES))
    p.add_argument("--rank", type=int, default=48)
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--steps", default="3e-5,5e-5,7e-5,1e-4,1.4e-4,2e-4")
    p.add_argument("--baselines", default=str(HERE / "compression.json"), help="Draco-8 Chamfer per mesh")
    p.add_argument("--samples", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE / "profiles.json"))
    args = p.parse_args(argv)
    steps = [float(s) for s in args.steps.split(",")]
    draco = {}
    if Path(args.baselines).is_file():
        for name, res in json.loads(Path(args.baselines).read_text())["meshes"].items():
            rows = [r for r in res["rows"] if r["method"] == "draco" and r.get("bits") == 8]
            if rows:
                draco[name] = rows[0]["chamfer_l1"]
    results = {}
    for name in args.meshes.split(","):
        target = SDFTarget(mesh_path(name), resolution=args.resolution, profile="tanh")  # distances to 2 t
        d = target.sdf.astype(np.float64)
        results[name] = {"gt_seconds": target.report["gt_seconds"], "profiles": {}}
        for profile in profiles.PROFILES:
            t0 = time.perf_counter()
            x = profiles.to_field(np.clip(d, -profiles.reach(profile) * 0.1, profiles.reach(profile) * 0.1),
                                  0.1, profile)
            us, core = hosvd(x, args.rank)
            row = {"exact_chamfer": grid_error(expand(us, core), target, args.samples, args.seed), "points": []}
            for step in steps:
                nbytes, grid = coded(us, core, step)
                row["points"].append({"step": step, "bytes": nbytes,
                                      "chamfer_l1": grid_error(grid, target, args.samples, args.seed)})
            if name in draco:
                at, how = bytes_at(frontier([(q["bytes"], q["chamfer_l1"]) for q in row["points"]]), draco[name])
                row["bytes_at_draco8"], row["bytes_at_draco8_how"] = (at if at is not None else math.nan), how
            row["seconds"] = round(time.perf_counter() - t0, 1)
            results[name]["profiles"][profile] = row
            print(f"{name} {profile}: rank-{args.rank} Chamfer {row['exact_chamfer']:.3e}, "
                  f"at Draco-8 {row.get('bytes_at_draco8', float('nan')) / 1024:.2f} KiB  "
                  + " | ".join(f"{q['step']:g}: {q['bytes'] / 1024:.1f}K {q['chamfer_l1']:.2e}" for q in row["points"]),
                  flush=True)
    print("\n| mesh | Draco-8 Chamfer | clamp KiB | tanh KiB | tanh / clamp | rank-%d Chamfer clamp | tanh |" % args.rank)
    print("|---|---|---:|---:|---:|---|---|")
    for name, res in results.items():
        c, t = res["profiles"]["clamp"], res["profiles"]["tanh"]
        if "bytes_at_draco8" in c and math.isfinite(c["bytes_at_draco8"]) and math.isfinite(t["bytes_at_draco8"]):
            print(f"| {name} | {draco[name]:.2e} | {c['bytes_at_draco8'] / 1024:.2f} | {t['bytes_at_draco8'] / 1024:.2f} "
                  f"| {t['bytes_at_draco8'] / c['bytes_at_draco8']:.2f} | {c['exact_chamfer']:.2e} | "
                  f"{t['exact_chamfer']:.2e} |")
    meta = {"machine": f"{platform.machine()}, torch-free numpy {np.__version__}", "date": time.strftime("%Y-%m-%d %H:%M"),
            "rank": args.rank, "resolution": args.resolution, "steps": steps, "samples": args.samples}
    Path(args.out).write_text(json.dumps({"meta": meta, "meshes": results}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
