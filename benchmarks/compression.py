"""Rate-distortion of compact .finr files against Draco and grid codecs on the shared meshes (issue 11).

For every mesh (the six watertight shared meshes by default):

- ``.finr``: ONE fit with the current default (``finr3d.fit(SDFTarget(mesh), seconds=--seconds)``;
  or the saved ``--fields DIR/<mesh>.finr``), then the compact file (format v2) at every
  ``--steps`` quantization step, for the full rank and for each rank prefix ``--prefixes`` (eighths of the rank).
  Bytes are ``len(field.encode(...))``, exactly what ``save`` writes; the error is measured on
  the *decoded file*, evaluated by the numpy decoder on a ``--extract-resolution`` lattice and
  meshed by the same marching cubes as the grids.
- Draco (DracoPy, compression level 10) of the reference mesh at ``--draco-bits``.
- The truncated SDF grid of :class:`finr3d.sdf.SDFTarget` (field units, sdf / truncation in
  [-1, 1]) at ``--grid-resolutions``: SPERR (``hdf5plugin.Sperr`` rate mode through h5py, size
  from ``ds.id.get_storage_size()``), SZ3 (``pysz``, absolute error bound), ZFP (``zfpy``,
  tolerance mode: rate mode below 0.25 crashes on small inputs), a tensorly Tucker (HOSVD
  init, one HOOI sweep) with fp16 factors and core + zstd-19, and int8 + zstd-19; each decoded
  grid is meshed by marching cubes at its own resolution.

Error: point-to-surface Chamfer-L1 (:func:`finr3d.geometry_metrics.chamfer`, ``--samples`` per
surface) as a fraction of the reference bounding-box diagonal. "Bytes at equal Chamfer" are read
off each method's Pareto frontier by log-log interpolation at Draco-8's Chamfer.

Targets (issue 11): at Draco-8's Chamfer, .finr <= 1/2 of Draco-8's bytes on bunny, kitten and
rocker-arm, and <= SPERR-on-the-grid's bytes on every mesh; the rank-r/4 prefix file <= 30 % of
the full-rank file.

    flock /tmp/finr3d-bench.lock python benchmarks/compression.py --meshes bunny,kitten --out benchmarks/compression_a.json
    python benchmarks/compression.py --merge benchmarks/compression_a.json,benchmarks/compression_b.json

Writes the JSON given by ``--out`` and prints markdown tables; ``--merge`` combines runs, prints
the tables and writes ``benchmarks/compression.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from shared_assets import mesh_path  # noqa: E402
import finr3d  # noqa: E402  (before open3d: finr3d preloads libusb for it)
from finr3d import codec, compact_io  # noqa: E402
from finr3d.field import FactorizedField  # noqa: E402
from finr3d.geometry_metrics import chamfer  # noqa: E402
from finr3d.meshing import march_slabs  # noqa: E402
from finr3d.sdf import SDFTarget  # noqa: E402

MESHES = ["bunny", "spot", "cow", "fandisk", "rocker-arm", "kitten"]
HALF_DRACO = ("bunny", "kitten", "rocker-arm")


def grid_mesh(grid: np.ndarray, target: SDFTarget):
    """Marching cubes (level 0) of a grid over the normalized cube, in world units."""
    import trimesh

    res = grid.shape[0]
    verts, faces, _ = march_slabs(lambda i0, i1, out: out.__setitem__(0, grid[i0:i1]), grid.shape, 0.0)
    if len(faces) == 0:
        raise RuntimeError("no surface")
    verts = (-1.0 + verts * (2.0 / (res - 1))) * target.scale + target.center
    return trimesh.Trimesh(verts, faces, process=False)


def grid_error(grid, target, samples: int, seed: int) -> float:
    try:
        return float(chamfer(grid_mesh(np.asarray(grid, np.float32), target), target.mesh, samples,
                             seed=seed)["chamfer_l1"])
    except RuntimeError:
        return math.inf


# ------------------------------------------------------------------ baselines
def draco_rows(ref, bits_list, samples, seed):
    import DracoPy
    import trimesh

    rows = []
    for bits in bits_list:
        blob = DracoPy.encode(np.asarray(ref.vertices, np.float32), np.asarray(ref.faces, np.uint32),
                              quantization_bits=bits, compression_level=10)
        dec = DracoPy.decode(blob)
        mesh = trimesh.Trimesh(np.asarray(dec.points, np.float64).reshape(-1, 3),
                               np.asarray(dec.faces, np.int64).reshape(-1, 3), process=False)
        rows.append({"method": "draco", "setting": f"q{bits}", "bits": bits, "bytes": len(blob),
                     "chamfer_l1": float(chamfer(mesh, ref, samples, seed=seed)["chamfer_l1"])})
    return rows


def sperr(values, rate):
    import h5py
    import hdf5plugin

    import io

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        ds = f.create_dataset("v", data=values, chunks=values.shape, **hdf5plugin.Sperr(rate=rate))
        size = int(ds.id.get_storage_size())
    with h5py.File(buf, "r") as f:  # reopened: the write's chunk cache would hand back the original values
        return size, f["v"][()]


def sz3(values, bound):
    from pysz import sz, szConfig, szErrorBoundMode

    cfg = szConfig(values.shape)
    cfg.errorBoundMode = szErrorBoundMode.ABS
    cfg.absErrorBound = float(bound)
    blob, _ = sz.compress(np.ascontiguousarray(values), cfg)
    dec, _ = sz.decompress(blob, np.float32, values.shape)
    return int(blob.nbytes), dec


def zfp(values, tolerance):
    import zfpy

    blob = zfpy.compress_numpy(np.ascontiguousarray(values), tolerance=float(tolerance))
    return len(blob), zfpy.decompress_numpy(blob)


def hosvd_zstd(values, rank):
    import tensorly as tl
    import zstandard
    from tensorly.decomposition import tucker

    core, factors = tucker(tl.tensor(values.astype(np.float64)), rank=[rank] * 3, init="svd", n_iter_max=1)
    parts = [np.asarray(core, np.float16)] + [np.asarray(f, np.float16) for f in factors]
    blob = zstandard.ZstdCompressor(level=19).compress(b"".join(p.tobytes() for p in parts))
    dec = tl.tucker_to_tensor((parts[0].astype(np.float64), [p.astype(np.float64) for p in parts[1:]]))
    return len(blob) + 16, np.asarray(dec, np.float32)


def int8_zstd(values, _):
    import zstandard

    q = np.clip(np.rint(values * 127), -127, 127).astype(np.int8)
    return len(zstandard.ZstdCompressor(level=19).compress(q.tobytes())) + 16, q.astype(np.float32) / 127


GRID_CODECS = {
    "sperr": (sperr, (0.01, 0.02, 0.04, 0.08, 0.16, 0.32)),
    "sz3": (sz3, (0.2, 0.1, 0.05, 0.02, 0.01)),
    "zfp": (zfp, (1.6, 0.8, 0.4, 0.2, 0.1)),
    "hosvd+zstd": (hosvd_zstd, (16, 24, 32, 48, 64)),
    "int8+zstd": (int8_zstd, (None,)),
}


def grid_values(target: SDFTarget, profile: str) -> np.ndarray:
    """The grid a codec compresses: the truncated SDF (``clamp``, the grid of the issue's targets) or the
    tanh profile finr3d's fits now learn (``tanh``), both in field units of ``target.truncation``."""
    from finr3d import profiles

    d = np.clip(target.sdf, -target.clip, target.clip)
    return np.ascontiguousarray(profiles.to_field(d, np.float32(target.truncation), profile), dtype=np.float32)


def grid_rows(path, base: SDFTarget, resolutions, codecs, samples, seed, profile: str = "clamp"):
    rows = []
    for res in resolutions:
        target = base if res == base.resolution else SDFTarget(path, resolution=res)
        values = grid_values(target, profile)
        for name in codecs:
            fn, settings = GRID_CODECS[name]
            tag = name if profile == "clamp" else f"{name} ({profile})"
            for s in settings:
                if name == "hosvd+zstd" and s >= res:
                    continue
                t0 = time.perf_counter()
                try:
                    nbytes, dec = fn(values, s)
                except Exception as exc:  # a codec refusing a setting is a data point, not a crash
                    rows.append({"method": tag, "setting": f"{res}^3 {s}", "error": repr(exc)})
                    continue
                enc = time.perf_counter() - t0
                rows.append({"method": tag, "resolution": res, "setting": f"{res}^3 {s}", "param": s,
                             "bytes": int(nbytes), "codec_s": round(enc, 3),
                             "chamfer_l1": grid_error(np.asarray(dec, np.float32).reshape(values.shape), target,
                                                      samples, seed)})
    return rows


# ----------------------------------------------------------------------- .finr
def _stored_meta_bytes(blob: bytes) -> int:
    """Bytes the META section takes in a version-2 file: its table entry and its stored body (0 without)."""
    view = memoryview(blob)
    for i in range(codec._V2_HEAD.unpack_from(view)[3]):
        kind, _, _, stored, _ = codec._V2_SECTION.unpack_from(view, codec._V2_HEAD.size + i * codec._V2_SECTION.size)
        if kind == codec.SECTION_META:
            return codec._V2_SECTION.size + stored
    return 0


def finr_rows(field, target, steps, prefixes, default_step, resolution, samples, seed):
    rows = []
    top = max(field.ranks)
    # every rank prefix (in eighths of the rank) at every step: the candidates --budget-kb/--target-chamfer
    # choose from, so the frontier is what a user of those flags gets
    ranks = sorted({max(1, top * p // 8) for p in prefixes if p < 8})
    points = [(None, s) for s in steps] + [(r, s) for r in ranks for s in steps]
    for rank, step in points:
        t0 = time.perf_counter()
        blob = field.encode(rank=rank, step=step, detail=False)  # the global field; detail rows follow
        enc = time.perf_counter() - t0
        t0 = time.perf_counter()
        grid = codec.decode_grid(blob, resolution=resolution)
        dec = time.perf_counter() - t0
        ff = codec.decode_field(blob)
        rows.append({"method": "finr", "setting": f"r{rank or top} step {step:g}", "rank": rank or top,
                     "ranks": list(ff.compact.ranks), "step": step, "bytes": len(blob),
                     # the same file without the optional META section (save(metadata=False): the other
                     # sections are the same bytes, so no second encode)
                     "bytes_no_meta": len(blob) - _stored_meta_bytes(blob),
                     "sections": {codec.SECTION_NAMES[k]: len(v) for k, v in ff.sections.items()},
                     "encode_s": round(enc, 3), "decode_s": round(dec, 3),
                     "chamfer_l1": grid_error(grid, target, samples, seed)})
    if getattr(field, "detail", None) is not None:  # the fit's own local detail, kept in the file
        for step in steps:
            blob = field.encode(step=step)
            grid = codec.decode_grid(blob, resolution=resolution)
            rows.append({"method": "finr+detail", "setting": f"r{top} step {step:g} + detail", "rank": top,
                         "ranks": list(codec.decode_field(blob).compact.ranks), "step": step, "bytes": len(blob),
                         "detail_bytes": len(field.detail.to_bytes()),
                         "chamfer_l1": grid_error(grid, target, samples, seed)})
    return rows


def extraction_seconds(field, resolution=512):
    """512^3 marching cubes of the network field and of its compact file (same run: a ratio)."""
    from finr3d.meshing import extract_mesh

    out = {}
    for label, model in (("network", field), ("compact", FactorizedField.from_file(field.encode(quantization="fp16")))):
        t0 = time.perf_counter()
        extract_mesh(model, resolution)
        out[label] = round(time.perf_counter() - t0, 2)
    return out


# --------------------------------------------------------------------- targets
def frontier(points):
    out = []
    for b, c in sorted(p for p in points if math.isfinite(p[1])):
        if not out or c < out[-1][1]:
            out.append((b, c))
    return out


def bytes_at(front, level):
    """Bytes reaching Chamfer ``level`` on a frontier, log-log interpolated (None if never reached)."""
    if not front or level < front[-1][1]:
        return None, "not reached"
    if level >= front[0][1]:
        return float(front[0][0]), "at most"
    for (b1, c1), (b2, c2) in zip(front, front[1:]):
        if c1 > level >= c2:
            t = (math.log(level) - math.log(c1)) / (math.log(c2) - math.log(c1))
            return float(math.exp(math.log(b1) + t * (math.log(b2) - math.log(b1)))), "interpolated"
    return float(front[-1][0]), "interpolated"


def summarize(name, rows, prefix_ratio):
    draco8 = next((r for r in rows if r["method"] == "draco" and r["bits"] == 8), None)
    out = {"prefix_r4_ratio": prefix_ratio}
    if draco8 is None:
        return out
    level = draco8["chamfer_l1"]
    out["draco8"] = {"chamfer_l1": level, "bytes": draco8["bytes"]}
    finr_pts = [(r["bytes"], r["chamfer_l1"]) for r in rows if r["method"] == "finr"]
    b, how = bytes_at(frontier(finr_pts), level)
    out["finr_global"] = {"bytes": b, "how": how}
    bare = [(r["bytes_no_meta"], r["chamfer_l1"]) for r in rows if r["method"] == "finr" and "bytes_no_meta" in r]
    if bare:
        b, how = bytes_at(frontier(bare), level)
        out["finr_no_meta"] = {"bytes": b, "how": how}
    finr_pts += [(r["bytes"], r["chamfer_l1"]) for r in rows if r["method"] == "finr+detail"]
    b, how = bytes_at(frontier(finr_pts), level)
    out["finr"] = {"bytes": b, "how": how}  # any .finr file: global alone or with local detail
    for m in sorted({r["method"] for r in rows if r.get("resolution")}):
        for res in sorted({r["resolution"] for r in rows if r["method"] == m and r.get("resolution")}):
            pts = [(r["bytes"], r["chamfer_l1"]) for r in rows if r["method"] == m and r.get("resolution") == res]
            b, how = bytes_at(frontier(pts), level)
            out[f"{m}@{res}"] = {"bytes": b, "how": how}
    finr = out.get("finr", {}).get("bytes")
    sperr_best = min((v["bytes"] for k, v in out.items() if k.startswith("sperr@") and v["bytes"]), default=None)
    out["half_draco8_pass"] = bool(finr is not None and finr <= draco8["bytes"] / 2) if name in HALF_DRACO else None
    out["sperr_pass"] = bool(finr is not None and sperr_best is not None and finr <= sperr_best)
    out["sperr_best_bytes"] = sperr_best
    return out


# ------------------------------------------------------------------------ output
def _kib(b):
    return "—" if b is None else f"{b / 1024:.1f}"


def print_tables(results, meta):
    print("\n### Bytes at Draco-8's Chamfer-L1 (KiB, log-log interpolation of each frontier)\n")
    cols = ["finr_global", "finr", "finr_no_meta"] + [f"{m}@{r}" for r in meta["settings"]["grid_resolutions"]
                       for m in meta["settings"]["codecs"]]
    print("| mesh | Draco-8 Chamfer | Draco-8 | " + " | ".join(cols) + " | .finr ≤ ½ Draco-8 | .finr ≤ SPERR | r/4 file |")
    print("|---|---|---|" + "---|" * len(cols) + "---|---|---|")
    for name, res in results.items():
        s = res["summary"]
        if "draco8" not in s:
            continue
        cells = []
        for c in cols:
            v = s.get(c) or {}
            cell = _kib(v.get("bytes"))
            cells.append(("≤ " if v.get("how") == "at most" else "") + cell if v.get("bytes") else "not reached")
        half = {True: "pass", False: "FAIL", None: "n/a"}[s["half_draco8_pass"]]
        print(f"| {name} | {s['draco8']['chamfer_l1']:.2e} | {_kib(s['draco8']['bytes'])} | " + " | ".join(cells)
              + f" | {half} | {'pass' if s['sperr_pass'] else 'FAIL'} | {100 * (s['prefix_r4_ratio'] or 0):.0f} % |")
    print("\n### .finr points\n")
    print("| mesh | setting | ranks kept | KiB (detail) | Chamfer-L1 |")
    print("|---|---|---|---|---|")
    for name, res in results.items():
        for r in res["rows"]:
            if r["method"].startswith("finr"):
                det = f" ({_kib(r['detail_bytes'])})" if r.get("detail_bytes") else ""
                print(f"| {name} | {r['setting']} | {tuple(r.get('ranks', ()))} | {_kib(r['bytes'])}{det} | "
                      f"{r['chamfer_l1']:.2e} |")
    print("\n### Default fit\n")
    print("| mesh | steps | seconds | IoU | Chamfer-L1 (network, 256³) |")
    print("|---|---|---|---|---|")
    for name, res in results.items():
        f = res["fit"]
        print(f"| {name} | {f.get('steps')} | {f.get('seconds', 0):.0f} | {f.get('iou', float('nan')):.4f} | "
              f"{f.get('chamfer_l1', float('nan')):.2e} |")
    print(f"\n{meta['machine']}; {meta['date']}")


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    cols = min(3, len(names))
    nrows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.6 * nrows), dpi=80, squeeze=False)
    style = {"finr": ("tab:red", "o", "-"), "sperr": ("tab:blue", "s", "--"), "sz3": ("tab:green", "^", "--"),
             "zfp": ("tab:purple", "v", "--"), "hosvd+zstd": ("tab:orange", "D", ":"),
             "int8+zstd": ("tab:gray", "X", ":"), "finr+detail": ("darkred", "*", "none")}
    for ax, name in zip(axes.flat, names):
        rows = results[name]["rows"]
        for m, (color, marker, ls) in style.items():
            for res in sorted({r.get("resolution") for r in rows if r["method"] == m}, key=lambda x: x or 0):
                pts = sorted((r["bytes"] / 1024, r["chamfer_l1"]) for r in rows if r["method"] == m and
                             r.get("resolution") == res and "bytes" in r and math.isfinite(r["chamfer_l1"])
                             and (not m.startswith("finr") or r["rank"] == max(x["rank"] for x in rows
                                                                               if x["method"] == "finr")))
                if pts:
                    ax.plot(*zip(*pts), color=color, marker=marker, ls=ls, ms=3.5, lw=0.9,
                            alpha=1.0 if res in (None, 128) else 0.55,
                            label=".finr v2" if m == "finr" else ".finr v2 + local detail" if m == "finr+detail"
                            else f"{m} {res}³")
        d = sorted((r["bytes"] / 1024, r["chamfer_l1"]) for r in rows if r["method"] == "draco")
        ax.plot(*zip(*d), "k-D", ms=4, lw=1.2, label="Draco q8..14")
        s = results[name]["summary"]
        if "draco8" in s:
            ax.plot([s["draco8"]["bytes"] / 2048], [s["draco8"]["chamfer_l1"]], "r*", ms=11,
                    label="½ Draco-8 bytes at its Chamfer")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("KiB", fontsize=8)
        ax.set_ylabel("Chamfer-L1 / diag", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="both", lw=0.4)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.1 if nrows == 1 else 0.07, 1, 1))
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------ main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--meshes", default=",".join(MESHES))
    p.add_argument("--seconds", type=float, default=60.0, help="budget of the default fit per mesh")
    p.add_argument("--fields", default=None, help="reuse DIR/<mesh>.finr instead of fitting")
    p.add_argument("--save-fields", default=None, help="also save each fitted field (editable, fp32) to DIR")
    p.add_argument("--fit-only", action="store_true",
                   help="only fit and save the fields (--save-fields): the timed part, to run under the bench lock")
    p.add_argument("--baselines-only", action="store_true", help="Draco and grid codecs only (no .finr rows)")
    p.add_argument("--baselines", default=None, help="reuse the Draco/grid rows of an earlier run's JSON")
    p.add_argument("--steps", default="1.25e-5,2.5e-5,5e-5,1e-4,2e-4,4e-4")
    p.add_argument("--prefixes", default="2,4,5,6,7", help="rank prefixes, in eighths of the rank, each at every step")
    p.add_argument("--extract-resolution", type=int, default=256)
    p.add_argument("--grid-resolutions", default="128,256")
    p.add_argument("--codecs", default="sperr,sz3,zfp,hosvd+zstd,int8+zstd")
    p.add_argument("--grid-profiles", default="clamp",
                   help="grids the codecs see: clamp (the truncated SDF, the issue's baseline), tanh (the profile "
                        "finr3d fits), or both")
    p.add_argument("--draco-bits", default="8,10,12,14")
    p.add_argument("--samples", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE / "compression.json"))
    p.add_argument("--merge", default=None, help="comma-separated JSON files of earlier runs: combine and plot")
    p.add_argument("--plot", default=str(HERE / "compression.png"))
    p.add_argument("--extra", default=None, help="with --merge: JSON files of extra rows per mesh "
                                                 "(benchmarks/compression_detail.py)")
    args = p.parse_args(argv)
    if args.merge:
        results, meta = {}, None
        for f in args.merge.split(","):
            doc = json.loads(Path(f).read_text())
            results.update(doc["meshes"])
            meta = meta if meta and not meta.get("partial") else doc["meta"]
        for f in (args.extra or "").split(","):
            if f:
                for name, extra in json.loads(Path(f).read_text())["meshes"].items():
                    if name in results:
                        results[name]["rows"] += extra["rows"]
        for name, res in results.items():
            res["summary"] = summarize(name, res["rows"], res["summary"].get("prefix_r4_ratio"))
        print_tables(results, meta)
        plot(results, Path(args.plot))
        print(f"wrote {args.plot}")
        return 0
    split = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    steps = [float(x) for x in split(args.steps)]
    default_step = compact_io.PRECISION_STEPS["fp16"]
    results = {}
    t_all = time.perf_counter()
    if args.fit_only:
        if not args.save_fields:
            p.error("--fit-only needs --save-fields DIR")
        Path(args.save_fields).mkdir(parents=True, exist_ok=True)
        warm = SDFTarget(mesh_path("spot"), resolution=24, cache=False)
        finr3d.fit(warm, rank=4, width=8, steps=2)  # imports and lazy initialisation before any clock
        for name in split(args.meshes):
            target = SDFTarget(mesh_path(name), resolution=128)
            field = finr3d.fit(target, seconds=args.seconds)
            field.save(Path(args.save_fields) / f"{name}.finr", quantization="fp32", editable=True)
            print(name, field, field.history.get("steps"), field.history.get("metrics"), flush=True)
        return 0
    for name in split(args.meshes):
        path = mesh_path(name)
        target = SDFTarget(path, resolution=128)
        if args.baselines:
            rows = [r for r in json.loads(Path(args.baselines).read_text())["meshes"][name]["rows"]
                    if r["method"] != "finr"]
        else:
            rows = draco_rows(target.mesh, [int(b) for b in split(args.draco_bits)], args.samples, args.seed)
            for profile in split(args.grid_profiles):
                rows += grid_rows(path, target, [int(r) for r in split(args.grid_resolutions)], split(args.codecs),
                                  args.samples, args.seed, profile)
        if args.baselines_only:
            results[name] = {"faces": int(len(target.mesh.faces)), "rows": rows, "fit": {}, "summary": {}}
            print(f"  {name}: {len(rows)} baseline rows", flush=True)
            continue
        for r in rows:
            print(f"  {name} {r['method']} {r['setting']}: {r.get('bytes')} B, Chamfer {r.get('chamfer_l1')}",
                  flush=True)
        if args.fields:
            field = finr3d.load(Path(args.fields) / f"{name}.finr")
        else:
            field = finr3d.fit(target, seconds=args.seconds)
            if args.save_fields:
                field.save(Path(args.save_fields) / f"{name}.finr", quantization="fp32", editable=True)
        hist = field.history or {}
        fit = {"steps": hist.get("steps"), "seconds": hist.get("seconds"), "ranks": list(field.ranks),
               "parameters": field.parameter_count(), **(hist.get("metrics") or {})}
        fit["chamfer_l1"] = grid_error(field.grid(args.extract_resolution), target, args.samples, args.seed)
        rows += finr_rows(field, target, steps, [int(x) for x in split(args.prefixes)], default_step,
                          args.extract_resolution, args.samples, args.seed)
        extract = extraction_seconds(field)
        print(f"  {name} 512^3 extraction {extract}", flush=True)
        quarter_rank = max(1, max(field.ranks) // 4)  # fp16: the step these results were recorded at
        full = len(field.encode(quantization="fp16", detail=False))
        quarter = len(field.encode(rank=quarter_rank, quantization="fp16", detail=False))
        ratio = quarter / full
        prefix_bytes = {"full": full, "quarter": quarter}
        if getattr(field, "detail", None) is not None:
            prefix_bytes.update(full_with_detail=len(field.encode(quantization="fp16")),
                                quarter_with_detail=len(field.encode(rank=quarter_rank, quantization="fp16")))
        for r in [r for r in rows if r["method"].startswith("finr")]:
            print(f"  {name} finr {r['setting']}: {r['bytes']} B, ranks {r['ranks']}, Chamfer {r['chamfer_l1']:.3e}",
                  flush=True)
        results[name] = {"faces": int(len(target.mesh.faces)), "fit": fit, "rows": rows,
                         "prefix_bytes": prefix_bytes, "extract_512_s": extract,
                         "summary": summarize(name, rows, ratio)}
        print(f"  {name} summary {results[name]['summary']}", flush=True)
        Path(args.out).write_text(json.dumps({"meta": {"partial": True, "settings": vars(args)}, "meshes": results},
                                             indent=1, default=float))  # a crash keeps the meshes done
    import torch

    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "total_seconds": time.perf_counter() - t_all,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
                       f"({torch.get_num_threads()} threads), load average {os.getloadavg()[0]:.1f} at the end",
            "settings": {**vars(args), "grid_resolutions": [int(r) for r in split(args.grid_resolutions)],
                         "codecs": split(args.codecs), "default_step": default_step}}
    Path(args.out).write_text(json.dumps({"meta": meta, "meshes": results}, indent=1, default=float))
    if not args.baselines_only:
        print_tables(results, meta)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
