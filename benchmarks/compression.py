"""Bytes against surface error: .finr fields, Draco meshes and compressed SDF grids.

For every mesh (the watertight shared meshes by default):

- ``.finr``: ONE nested-rank fit (``nested_ranks=True``), then every prefix on
  the last ``--path-points`` shapes of :func:`finr3d.sweep.rank_path` at every
  ``--quantizations`` scheme. Bytes are the encoded file
  (``codec.encode(..., keep_fp32=model.precision_critical())``, exactly what
  ``FactorizedField.save`` writes); the error is measured on the *decoded*
  file, meshed at ``--extract-resolution`` (a decoder choice, recorded).
- Draco (DracoPy, ``compression_level=10``) of the reference mesh at
  ``--draco-bits`` position quantization bits, decoded back.
- The truncated SDF grid of :class:`finr3d.sdf.SDFTarget` at
  ``--grid-resolutions``, stored as float16 (and int8) and compressed with
  zstd level 19, plus 64 bytes for its shape and world transform; marching
  cubes on the decoded grid.

The error is point-to-surface Chamfer-L1 (:func:`finr3d.geometry_metrics.chamfer`,
``--samples`` per surface, distances to the other mesh's triangles, as a
fraction of the reference bounding-box diagonal). Sample-to-sample Chamfer
would hide Draco's quantization error under the sampling error.

Targets (issue 4), from the .finr rate-distortion frontier interpolated in
log-log: at the Chamfer of Draco-8 a .finr file of at most 1/4 of Draco-8's
bytes; at the Chamfer of Draco-10 at most Draco-10's bytes.

Nested against individual: on ``--compare-meshes``, models fitted alone at
``--compare-points`` of the sweep's ranks (same budget, no nesting) against
the nested fit's prefixes at the same ranks (both unquantized).

    python benchmarks/compression.py                       # six meshes, 60 s fits (~16 min on 1 core)
    python benchmarks/compression.py --smoke               # spot only, 15 s fits (~2 min)
    python benchmarks/compression.py --meshes bunny --seconds 30 --compare-meshes ""

Writes ``benchmarks/compression.json`` and ``benchmarks/compression.png`` and
prints markdown tables (``--smoke`` writes to the temp folder unless
``--out``/``--plot`` are given).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from shared_assets import mesh_path  # noqa: E402
import finr3d  # noqa: E402  (before open3d: finr3d preloads libusb for it)
from finr3d import __version__, codec  # noqa: E402
from finr3d.field import FactorizedField  # noqa: E402
from finr3d.geometry_metrics import chamfer  # noqa: E402
from finr3d.meshing import extract_mesh, march_slabs  # noqa: E402
from finr3d.sdf import SDFTarget  # noqa: E402
from finr3d.sweep import rank_path  # noqa: E402

MESHES = ["bunny", "spot", "cow", "fandisk", "rocker-arm", "kitten"]
KEEP = ("chamfer_l1", "accuracy", "completeness", "hausdorff95", "normal_consistency")
#: Header keys a reader needs; the rest (history, parts, parameters, mesh report, ...) is informational.
LEAN_META = ("format", "library_version", "kind", "ndim", "channels", "modes", "decomposition", "ranks",
             "backbone", "field_config", "backbone_configs")
LEAN_TARGET = ("kind", "shape", "channels", "axis_names", "value_offset", "value_scale", "world_from_normalized",
               "resolution", "truncation")


def surface_error(mesh, ref, samples: int, seed: int) -> dict:
    return {k: v for k, v in chamfer(mesh, ref, samples, seed=seed).items() if k in KEEP}


# ------------------------------------------------------------------ baselines
def draco_rows(ref, bits_list, samples: int, seed: int) -> list[dict]:
    import DracoPy
    import trimesh

    verts = np.asarray(ref.vertices, np.float32)
    faces = np.asarray(ref.faces, np.uint32)
    rows = []
    for bits in bits_list:
        t0 = time.perf_counter()
        blob = DracoPy.encode(verts, faces, quantization_bits=bits, compression_level=10)
        enc = time.perf_counter() - t0
        dec = DracoPy.decode(blob)
        mesh = trimesh.Trimesh(np.asarray(dec.points, np.float64).reshape(-1, 3),
                               np.asarray(dec.faces, np.int64).reshape(-1, 3), process=False)
        rows.append({"method": "draco", "setting": f"q{bits}", "bits": bits, "bytes": len(blob),
                     "encode_s": enc, **surface_error(mesh, ref, samples, seed)})
    return rows


def grid_rows(path: Path, fit_target: SDFTarget, resolutions, samples: int, seed: int) -> list[dict]:
    """The target's truncated SDF (field units, [-1, 1]) as fp16 / int8, zstd-19, meshed by marching cubes."""
    import trimesh
    import zstandard

    ref = fit_target.mesh
    rows = []
    for res in resolutions:
        t0 = time.perf_counter()
        target = fit_target if res == fit_target.resolution else SDFTarget(path, resolution=res)
        gt_s = time.perf_counter() - t0
        values = target.sdf / np.float32(target.truncation)
        for store in ("fp16", "int8"):
            if store == "fp16":
                raw = values.astype("<f2").tobytes()
            else:
                raw = np.clip(np.rint(values * 127), -127, 127).astype(np.int8).tobytes()
            t0 = time.perf_counter()
            blob = zstandard.ZstdCompressor(level=19).compress(raw)
            enc = time.perf_counter() - t0
            dec = np.frombuffer(zstandard.ZstdDecompressor().decompress(blob), "<f2" if store == "fp16" else np.int8)
            grid = dec.reshape(values.shape).astype(np.float32)
            verts, faces, _ = march_slabs(lambda i0, i1: grid[i0:i1], grid.shape, 0.0)
            verts = (-1.0 + verts * (2.0 / (res - 1))) * target.scale + target.center
            mesh = trimesh.Trimesh(verts, faces, process=False)
            rows.append({"method": f"grid {store}+zstd", "setting": f"{res}^3", "resolution": res,
                         "bytes": len(blob) + 64, "encode_s": enc, "gt_s": gt_s,
                         **surface_error(mesh, ref, samples, seed)})
    return rows


# ----------------------------------------------------------------------- .finr
def _header_sizes(blob: bytes) -> dict:
    """Header bytes in the file, and what a lean, zstd-coded header would take."""
    import zstandard

    _, _, _, hlen, _ = struct.unpack("<8sHHIQ", blob[:24])
    doc = json.loads(blob[24:24 + hlen])
    meta = doc["meta"]
    lean = {k: meta[k] for k in LEAN_META if k in meta}
    lean["target"] = {k: meta["target"][k] for k in LEAN_TARGET if k in meta.get("target", {})}
    compact = lambda d: json.dumps(d, separators=(",", ":")).encode()  # noqa: E731
    lean_doc = dict(doc, meta=lean)
    zc = zstandard.ZstdCompressor(level=19)
    return {
        "header_bytes": hlen,
        "header_meta_bytes": len(compact(meta)),
        "header_table_bytes": len(compact(doc["tensors"])),
        "header_meta_parts": {k: len(compact(v)) for k, v in meta.items()},
        "header_zstd_bytes": len(zc.compress(blob[24:24 + hlen])),
        "lean_header_bytes": len(compact(lean_doc)),
        "lean_header_zstd_bytes": len(zc.compress(compact(lean_doc))),
    }


def encode_prefix(model: FactorizedField, quantization: str) -> bytes:
    """The bytes ``model.save(path, quantization=...)`` writes."""
    return model.encode(quantization=quantization)


def finr_row(model: FactorizedField, quantization: str, ref, resolution: int, samples: int, seed: int) -> dict:
    blob = encode_prefix(model, quantization)
    decoded = FactorizedField.from_parts(*codec.decode(blob))
    t0 = time.perf_counter()
    try:
        mesh = extract_mesh(decoded, resolution)
    except RuntimeError as exc:  # no surface at a tiny rank
        return {"bytes": len(blob), "error": str(exc), "chamfer_l1": math.inf}
    ext = time.perf_counter() - t0
    hs = _header_sizes(blob)
    return {"bytes": len(blob), "extract_s": ext, "extract_resolution": resolution,
            "bytes_lean_header": len(blob) - hs["header_bytes"] + hs["lean_header_zstd_bytes"],
            **hs, **surface_error(mesh, ref, samples, seed)}


def fit_field(target, config: dict, seconds: float, seed: int, rank=None, nested: bool = True):
    return finr3d.fit(target, kind="sdf", decomposition=config["decomposition"],
                      rank=rank if rank is not None else config["rank"], width=config["width"],
                      depth=config["depth"], backbone=config["backbone"], seconds=seconds,
                      nested_ranks=nested, seed=seed)


def _as_rank(field, r):
    """A rank-path entry or a cubic int rank as what ``truncate`` takes (a tuple for Tucker)."""
    if isinstance(r, (tuple, list)):
        return tuple(int(x) for x in r)
    return (int(r),) * len(field.ranks) if field.config.decomposition == "tucker" else int(r)


def sweep_points(field, n: int, cubic=()) -> list:
    """The last ``n`` shapes of the rank path plus the cubic prefixes ``cubic``, by size."""
    points = [_as_rank(field, p) for p in rank_path(field)][-n:]
    for r in cubic:
        q = _as_rank(field, min(int(r), max(field.ranks)))
        if q not in points:
            points.append(q)
    return sorted(points, key=lambda q: field.truncate(q).parameter_count())


def _rank_list(r) -> list[int]:
    return list(r) if isinstance(r, tuple) else [int(r)]


# --------------------------------------------------------------------- targets
def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Pareto frontier of (bytes, chamfer): increasing bytes, strictly decreasing chamfer."""
    out = []
    for b, c in sorted(p for p in points if math.isfinite(p[1])):
        if not out or c < out[-1][1]:
            out.append((b, c))
    return out


def bytes_at(front: list[tuple[float, float]], level: float) -> tuple[float | None, str]:
    """Smallest bytes reaching Chamfer ``level`` on the frontier, log-log interpolated.

    Returns (bytes, how): how is "interpolated", "at most" (even the smallest
    file is better, so its size bounds the answer) or "not reached" (bytes None).
    """
    if not front or level < front[-1][1]:
        return None, "not reached"
    if level >= front[0][1]:
        return float(front[0][0]), "at most"
    for (b1, c1), (b2, c2) in zip(front, front[1:]):
        if c1 > level >= c2:
            t = (math.log(level) - math.log(c1)) / (math.log(c2) - math.log(c1))
            return float(math.exp(math.log(b1) + t * (math.log(b2) - math.log(b1)))), "interpolated"
    return float(front[-1][0]), "interpolated"


def check_targets(rows: list[dict], key: str = "bytes") -> dict:
    draco = {r["bits"]: r for r in rows if r["method"] == "draco"}
    front = frontier([(r[key], r["chamfer_l1"]) for r in rows if r["method"] == "finr"])
    out = {"frontier": front}
    for bits, factor in ((8, 0.25), (10, 1.0)):
        if bits not in draco:
            continue
        d = draco[bits]
        b, how = bytes_at(front, d["chamfer_l1"])
        budget = factor * d["bytes"]
        out[f"draco{bits}"] = {
            "chamfer_l1": d["chamfer_l1"], "draco_bytes": d["bytes"], "budget_bytes": budget,
            "finr_bytes": b, "how": how, "ratio_to_draco": None if b is None else b / d["bytes"],
            "pass": bool(b is not None and b <= budget),
        }
    return out


# ------------------------------------------------------------------------ plot
def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    cols = min(3, len(names))
    rows_n = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.6 * cols, 3.6 * rows_n), dpi=80, squeeze=False)
    marker = {"fp16": "o", "int8": "s", "int6": "^", "int4": "v"}
    for ax, name in zip(axes.flat, names):
        rows = results[name]["rows"]
        for q in marker:
            pts = sorted((r["bytes"] / 1024, r["chamfer_l1"]) for r in rows
                         if r["method"] == "finr" and r["quantization"] == q and math.isfinite(r["chamfer_l1"]))
            if pts:
                ax.plot(*zip(*pts), marker=marker[q], ms=4, lw=0.8, label=f".finr {q}")
        d = sorted((r["bytes"] / 1024, r["chamfer_l1"], r["bits"]) for r in rows if r["method"] == "draco")
        if d:
            ax.plot([p[0] for p in d], [p[1] for p in d], "k-D", ms=4, lw=1.2, label="Draco q8..14")
        for store, m in (("fp16", "P"), ("int8", "X")):
            g = sorted((r["bytes"] / 1024, r["chamfer_l1"]) for r in rows if r["method"] == f"grid {store}+zstd")
            if g:
                ax.plot(*zip(*g), ls=":", marker=m, ms=5, color="tab:gray" if store == "fp16" else "tab:brown",
                        label=f"SDF grid {store}+zstd")
        t = results[name]["targets"].get("draco8")
        if t:
            ax.plot([t["budget_bytes"] / 1024], [t["chamfer_l1"]], "r*", ms=11, label="target: Draco-8 err, 1/4 bytes")
        t = results[name]["targets"].get("draco10")
        if t:
            ax.plot([t["budget_bytes"] / 1024], [t["chamfer_l1"]], "m*", ms=11, label="target: Draco-10 err & bytes")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("KiB", fontsize=8)
        ax.set_ylabel("Chamfer-L1 / diag", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="both", lw=0.4)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    if len(names) == 1:
        axes.flat[0].legend(fontsize=6, loc="upper right")
        fig.tight_layout()
    else:
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=7, frameon=False)
        fig.tight_layout(rect=(0, 0.1 if rows_n == 1 else 0.06, 1, 1))
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------ main
def _fmt_bytes(b) -> str:
    return "—" if b is None else f"{b / 1024:.1f}"


def print_tables(results: dict, compare: list[dict], meta: dict) -> None:
    print("\n### Bytes against Chamfer-L1 (fraction of the bbox diagonal)\n")
    for name, res in results.items():
        print(f"\n**{name}** ({res['faces']:,} faces; .finr: {res['fit']['steps']} steps in "
              f"{res['fit']['seconds']:.0f} s, meshed at {meta['settings']['extract_resolution']}³)\n")
        print("| method | setting | KiB | Chamfer-L1 | HD95 | header share |")
        print("|---|---|---|---|---|---|")
        for r in res["rows"]:
            setting = r["setting"] if r["method"] != "finr" else f"{tuple(r['ranks'])} {r['quantization']}"
            hdr = f"{100 * r['header_bytes'] / r['bytes']:.0f}%" if "header_bytes" in r else ""
            print(f"| {r['method']} | {setting} | {r['bytes'] / 1024:.1f} | {r['chamfer_l1']:.2e} | "
                  f"{r.get('hausdorff95', float('nan')):.2e} | {hdr} |")
    print("\n### Targets: .finr bytes at Draco's Chamfer (log-log interpolation of the .finr frontier)\n")
    print("| mesh | Draco-8 Chamfer | Draco-8 KiB | .finr KiB at it | ratio | ≤ 1/4? | "
          "Draco-10 Chamfer | Draco-10 KiB | .finr KiB at it | ratio | ≤ 1×? | best .finr Chamfer |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, res in results.items():
        cells = []
        for key in ("draco8", "draco10"):
            t = res["targets"][key]
            fb = "not reached" if t["finr_bytes"] is None else \
                (("≤ " if t["how"] == "at most" else "") + _fmt_bytes(t["finr_bytes"]))
            ratio = "—" if t["ratio_to_draco"] is None else f"{t['ratio_to_draco']:.1f}×"
            cells += [f"{t['chamfer_l1']:.2e}", _fmt_bytes(t["draco_bytes"]), fb, ratio,
                      "pass" if t["pass"] else "FAIL"]
        best = min((r["chamfer_l1"] for r in res["rows"] if r["method"] == "finr"), default=math.inf)
        print(f"| {name} | " + " | ".join(cells) + f" | {best:.2e} |")
    if compare:
        print("\n### One nested fit against models fitted at one rank (unquantized, same budget)\n")
        print("| mesh | Tucker ranks | nested Chamfer | alone Chamfer | nested / alone | within 10%? "
              "| steps nested / alone |")
        print("|---|---|---|---|---|---|---|")
        for c in compare:
            print(f"| {c['mesh']} | {tuple(c['ranks'])} | {c['nested_chamfer']:.2e} | {c['alone_chamfer']:.2e} | "
                  f"{c['ratio']:.2f} | {'yes' if c['within_10pct'] else 'no'} | "
                  f"{c['nested_steps']} / {c['alone_steps']} |")
    checks = [(n, r["extract_check"]) for n, r in results.items() if r.get("extract_check")]
    if checks:
        print("\n### Extraction resolution (best .finr point of each mesh)\n")
        res_list = sorted({int(k) for _, c in checks for k in c["chamfer_l1"]})
        print("| mesh | point | " + " | ".join(f"{r}³" for r in res_list) + " |")
        print("|---|---|" + "---|" * len(res_list))
        for n, c in checks:
            print(f"| {n} | {c['point']} | " + " | ".join(f"{c['chamfer_l1'].get(str(r), float('nan')):.2e}"
                                                       for r in res_list) + " |")
    print(f"\n{meta['machine']}; {meta['date']}; {meta['config_text']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--meshes", default=",".join(MESHES), help="comma-separated names in $FINR3D_SHARED/assets/meshes")
    p.add_argument("--config", default="tucker:32:64:2",
                   help="decomposition:rank:width:depth of the nested fit (default %(default)s)")
    p.add_argument("--backbone", default="siren")
    p.add_argument("--seconds", type=float, default=60.0, help="fit budget per model (default %(default)s)")
    p.add_argument("--fit-resolution", type=int, default=128, help="ground-truth SDF grid of the fit")
    p.add_argument("--extract-resolution", type=int, default=256, help="marching cubes of the decoded .finr")
    p.add_argument("--extract-check", default="128,256,512",
                   help="also mesh each mesh's best .finr point at these resolutions ('' to skip)")
    p.add_argument("--quantizations", default="fp16,int8,int6,int4")
    p.add_argument("--path-points", type=int, default=4, help="last N shapes of the Tucker rank path")
    p.add_argument("--cubic-ranks", default="8,16", help="also these cubic prefixes (what nesting trains)")
    p.add_argument("--draco-bits", default="8,10,12,14")
    p.add_argument("--grid-resolutions", default="64,128,256")
    p.add_argument("--compare-meshes", default="bunny", help="meshes for nested-vs-alone fits ('' to skip)")
    p.add_argument("--compare-points", type=int, default=2,
                   help="rank-path shapes compared, spread from the smallest evaluated to the full rank")
    p.add_argument("--compare-cubic", default="8", help="cubic prefixes also compared ('' for none)")
    p.add_argument("--samples", type=int, default=100_000, help="surface samples per mesh for Chamfer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="spot only, 15 s fits, fewer points (~3 min)")
    p.add_argument("--out", default=None, help="JSON (default benchmarks/compression.json)")
    p.add_argument("--plot", default=None, help="PNG (default benchmarks/compression.png)")
    args = p.parse_args(argv)
    if args.smoke:
        args.meshes, args.seconds, args.path_points, args.cubic_ranks = "spot", 15.0, 3, "8"
        args.grid_resolutions, args.compare_meshes, args.compare_points = "64,128", "spot", 2
        args.extract_check, args.compare_cubic = "256,512", "8"
    out_dir = Path(tempfile.gettempdir()) if args.smoke else HERE
    stem = "compression_smoke" if args.smoke else "compression"
    out_json = Path(args.out or out_dir / f"{stem}.json")
    out_png = Path(args.plot or out_dir / f"{stem}.png")
    dec, rank, width, depth = args.config.split(":")
    config = {"decomposition": dec, "rank": int(rank), "width": int(width), "depth": int(depth),
              "backbone": args.backbone}
    quants = [q for q in args.quantizations.split(",") if q]
    split = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    compare_meshes = [m for m in args.compare_meshes.split(",") if m]

    # one-time imports and lazy initialisation before any clock starts
    warm = SDFTarget(mesh_path("spot"), resolution=24, cache=False)
    finr3d.fit(warm, rank=4, width=8, steps=2)

    t_all = time.perf_counter()
    results, compare = {}, []
    for name in [m for m in args.meshes.split(",") if m]:
        path = mesh_path(name)
        t0 = time.perf_counter()
        target = SDFTarget(path, resolution=args.fit_resolution)
        ref = target.mesh
        print(f"{name}: {len(ref.faces):,} faces, ground truth {time.perf_counter() - t0:.1f} s "
              f"(cache {target.report.get('cache')})", flush=True)
        rows = draco_rows(ref, split(args.draco_bits), args.samples, args.seed)
        rows += grid_rows(path, target, split(args.grid_resolutions), args.samples, args.seed)
        for r in rows:
            print(f"  {r['method']} {r['setting']}: {r['bytes']:,} B, Chamfer {r['chamfer_l1']:.3e}", flush=True)
        field = fit_field(target, config, args.seconds, args.seed)
        fit_info = {"steps": field.history["steps"], "seconds": field.history["seconds"],
                    "parameters": field.parameter_count(), "ranks": list(field.ranks),
                    "distill_seconds": field.history.get("distill_seconds"),
                    "rank_path": [list(p) for p in rank_path(field)]}
        print(f"  fit: {fit_info['steps']} steps in {fit_info['seconds']:.1f} s, path {fit_info['rank_path']}",
              flush=True)
        points = sweep_points(field, args.path_points, split(args.cubic_ranks))
        for prefix in points:
            model = field.truncate(prefix)
            for q in quants:
                row = {"method": "finr", "ranks": _rank_list(prefix), "quantization": q,
                       "params": model.parameter_count(), "setting": f"{prefix} {q}"}
                row.update(finr_row(model, q, ref, args.extract_resolution, args.samples, args.seed))
                rows.append(row)
                print(f"  finr {prefix} {q}: {row['bytes']:,} B (header {row.get('header_bytes', 0):,}), "
                      f"Chamfer {row['chamfer_l1']:.3e}", flush=True)
        res = {"faces": int(len(ref.faces)), "vertices": int(len(ref.vertices)), "fit": fit_info, "rows": rows,
               "targets": check_targets(rows), "targets_lean_header": check_targets(rows, "bytes_lean_header")}
        checks = split(args.extract_check)
        finr_ok = [r for r in rows if r["method"] == "finr" and math.isfinite(r["chamfer_l1"])]
        if checks and finr_ok:
            best = min(finr_ok, key=lambda r: r["chamfer_l1"])
            best_model = field.truncate(_as_rank(field, tuple(best["ranks"])))
            decoded = FactorizedField.from_parts(*codec.decode(encode_prefix(best_model, best["quantization"])))
            ec = {"point": f"{tuple(best['ranks'])} {best['quantization']}", "chamfer_l1": {}, "seconds": {}}
            for r in checks:
                t0 = time.perf_counter()
                mesh = extract_mesh(decoded, r)
                ec["seconds"][str(r)] = time.perf_counter() - t0
                ec["chamfer_l1"][str(r)] = surface_error(mesh, ref, args.samples, args.seed)["chamfer_l1"]
            res["extract_check"] = ec
            print(f"  extraction check {ec}", flush=True)
        if name in compare_meshes:
            path_points = [_as_rank(field, p) for p in rank_path(field)][-args.path_points:]
            idx = np.unique(np.round(np.linspace(0, len(path_points) - 1, args.compare_points)).astype(int))
            chosen = [path_points[i] for i in idx[::-1]]
            chosen += [q for q in (_as_rank(field, r) for r in split(args.compare_cubic)) if q not in chosen]
            for prefix in chosen:
                nested = surface_error(extract_mesh(field, args.extract_resolution, rank=prefix), ref,
                                       args.samples, args.seed)["chamfer_l1"]
                alone = fit_field(target, config, args.seconds, args.seed, rank=_rank_list(prefix), nested=False)
                alone_c = surface_error(extract_mesh(alone, args.extract_resolution), ref,
                                        args.samples, args.seed)["chamfer_l1"]
                c = {"mesh": name, "ranks": _rank_list(prefix), "nested_chamfer": nested, "alone_chamfer": alone_c,
                     "ratio": nested / alone_c, "within_10pct": bool(nested <= 1.1 * alone_c),
                     "nested_steps": field.history["steps"], "alone_steps": alone.history["steps"],
                     "alone_seconds": alone.history["seconds"]}
                compare.append(c)
                print(f"  compare {c}", flush=True)
        results[name] = res
        t = res["targets"]
        print(f"  targets: draco8 {t['draco8']['pass']} ({t['draco8']['how']}), "
              f"draco10 {t['draco10']['pass']} ({t['draco10']['how']})", flush=True)

    import DracoPy  # noqa: F401
    import open3d
    import trimesh
    import zstandard
    from importlib.metadata import version

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "total_seconds": time.perf_counter() - t_all,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip()
                   + f", {os.cpu_count()} cores, affinity {cpus}, torch {torch.__version__} "
                     f"({torch.get_num_threads()} thread(s)), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
        "versions": {"finr3d": __version__, "DracoPy": version("DracoPy"), "zstandard": zstandard.__version__,
                     "trimesh": trimesh.__version__, "open3d": open3d.__version__, "numpy": np.__version__},
        "settings": vars(args),
        "config": config,
        "config_text": (f".finr: {config['decomposition']} rank {config['rank']} (Tucker core shapes from "
                        f"rank_path), {config['backbone']} width {config['width']} depth {config['depth']}, "
                        f"nested ranks, closed-form start, {args.seconds:.0f} s per fit on a "
                        f"{args.fit_resolution}³ SDF, meshed at {args.extract_resolution}³; Chamfer-L1 "
                        f"point-to-surface, {args.samples:,} samples per surface"),
    }
    out_json.write_text(json.dumps({"meta": meta, "meshes": results, "nested_vs_alone": compare}, indent=1,
                                   default=float))
    plot(results, out_png)
    print_tables(results, compare, meta)
    print(f"\nwrote {out_json} and {out_png} ({out_png.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
