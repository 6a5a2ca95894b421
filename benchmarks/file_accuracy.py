"""What the saved file keeps of a mesh fit: the network against its default compact file, fp16 and ``auto``.

The default 60-s fit (``finr3d.fit(mesh, seconds=60)``: Tucker r64, layers and resolution ``auto``) is scored
three ways with the same metrics (``finr3d.geometry_metrics.mesh_metrics`` against the input mesh, extraction at
``--extract``): the network itself, the compact file at fp16's fixed step (the default before the sixth session),
and the file ``save()`` writes now (``quantization="auto"``: fp16's step, halved while its quantization error
exceeds half the fit's validation loss; :func:`finr3d.compact_io.auto_step`); ``--quantizations`` adds others
(e.g. int8, the Blender panel's default before the seventh session). For each, the rank-r/4 prefix file's bytes
(``file_bytes(rank=r // 4)``, the number the rank slider shows) are recorded beside the full file's.

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/file_accuracy.py --meshes bunny,spot,cow,suzanne,teapot

Writes ``benchmarks/file_accuracy.json`` (``--out``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from shared_assets import mesh_path  # noqa: E402

import finr3d  # noqa: E402
from finr3d.compact_io import auto_step  # noqa: E402
from finr3d.geometry_metrics import mesh_metrics  # noqa: E402
from finr3d.mesh_query import load_mesh  # noqa: E402
from finr3d.meshing import extract_mesh  # noqa: E402


def score(field, reference, resolution):
    m = mesh_metrics(extract_mesh(field, resolution), reference)
    return {k: float(m[k]) for k in ("iou", "chamfer_l1")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--meshes", default="bunny,spot,cow,fandisk,rocker-arm,kitten,suzanne,teapot,ogre")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--extract", type=int, default=256)
    p.add_argument("--quantizations", default="fp16,auto", help="comma-separated; auto is save()'s default")
    p.add_argument("--out", default=str(HERE / "file_accuracy.json"))
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.meshes.split(","):
            field = finr3d.fit(str(mesh_path(name)), seconds=args.seconds)
            reference, _ = load_mesh(mesh_path(name))
            row = {"mesh": name, "layers": field.channels, "resolution": field.target_info.get("shape", [0])[0],
                   "fit_loss": field.history["metrics"]["loss"], "network": score(field, reference, args.extract)}
            quarter = max(1, max(field.ranks) // 4)
            for label in args.quantizations.split(","):
                options = {} if label == "auto" else {"quantization": label}
                path = os.path.join(tmp, f"{name}-{label}.finr")
                t0 = time.perf_counter()
                row[f"{label}_bytes"] = field.save(path, **options)
                row[f"{label}_save_s"] = round(time.perf_counter() - t0, 3)
                row[label] = score(finr3d.load(path), reference, args.extract)
                row[f"{label}_quarter_bytes"] = field.file_bytes(rank=quarter, **options)
                row[f"{label}_quarter_ratio"] = row[f"{label}_quarter_bytes"] / row[f"{label}_bytes"]
            row["auto_step"] = auto_step(field)
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "settings": vars(args),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores visible, torch {torch.__version__}, "
                       f"{torch.get_num_threads()} thread(s)"}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print("\n| mesh | layers | network IoU / Chamfer-L1 | fp16 file: KiB, Chamfer-L1 | auto file: step, KiB, IoU, "
          "Chamfer-L1 |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "fp16" not in r or "auto" not in r:
            continue
        n, a, f = r["network"], r["auto"], r["fp16"]
        print(f"| {r['mesh']} | {r['layers']} | {n['iou']:.4f} / {n['chamfer_l1']:.2e} | {r['fp16_bytes'] / 1024:.1f}, "
              f"{f['chamfer_l1']:.2e} | {r['auto_step']:.3g}, {r['auto_bytes'] / 1024:.1f}, {a['iou']:.4f}, "
              f"{a['chamfer_l1']:.2e} |")
    labels = args.quantizations.split(",")
    print("\n| mesh | " + " | ".join(f"{q}: KiB, IoU, Chamfer-L1, r/4 file" for q in labels) + " |")
    print("|---|" + "---|" * len(labels))
    for r in rows:
        print(f"| {r['mesh']} | " + " | ".join(
            f"{r[q + '_bytes'] / 1024:.1f}, {r[q]['iou']:.4f}, {r[q]['chamfer_l1']:.2e}, "
            f"{100 * r[q + '_quarter_ratio']:.1f} %" for q in labels) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
