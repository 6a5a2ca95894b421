"""Marching-cubes extraction time: the plane reader against evaluating ``grid()`` per slab, in one run.

``extract_mesh`` reads a field's values a slab of x-planes at a time. Since the sixth session it asks the field
for a plane reader (:meth:`finr3d.field.FactorizedField.plane_reader`): every decomposition is linear in the first
mode's features, so the other modes are contracted once and each slab is one matrix product per channel, written
into a reused buffer. The baseline is the same field behind an object that only has ``grid()`` (the path every
field took before: the whole contraction per slab, with fresh arrays). Both produce the same surface; the script
checks the face counts agree and times each ``--repeat`` times (the minimum is reported).

The fields are default fits (``layers="auto"``: suzanne, teapot and ogre have two layers, so two channels to
mesh) at a short budget: extraction time depends on the field's structure and its surface, not on how long it
was fitted.

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/extraction.py --meshes suzanne,ogre,teapot,bunny,fandisk

Writes ``benchmarks/extraction.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from shared_assets import mesh_path  # noqa: E402

import finr3d  # noqa: E402
from finr3d.meshing import extract_mesh  # noqa: E402


class GridOnly:
    """The field without its plane reader: ``extract_mesh`` falls back to ``grid()`` per slab."""

    def __init__(self, field):
        self.field, self.channels, self.target_info = field, field.channels, field.target_info

    def grid(self, coords, rank=None, *, squeeze=True):
        return self.field.grid(coords, rank=rank, squeeze=squeeze)


def timed(field, resolution, repeat):
    best, faces = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        mesh = extract_mesh(field, resolution)
        best = min(best, time.perf_counter() - t0)
        faces = len(mesh.faces)
    return best, faces


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--meshes", default="suzanne,ogre,teapot,bunny,fandisk")
    p.add_argument("--seconds", type=float, default=10.0, help="fit budget per mesh")
    p.add_argument("--resolutions", default="256,512")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--cache", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "finr3d-extraction"),
                   help="folder keeping the fitted fields between runs")
    p.add_argument("--out", default=str(HERE / "extraction.json"))
    args = p.parse_args(argv)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.meshes.split(","):
        path = cache / f"{name}-{args.seconds:g}s.finr"
        if not path.exists():
            finr3d.fit(str(mesh_path(name)), seconds=args.seconds,
                       target_options={"resolution": 128}).save(path)
        field = finr3d.load(path)
        extract_mesh(field, 64)  # imports and warm-up outside the timings
        row = {"mesh": name, "channels": field.channels, "ranks": list(field.ranks),
               "parameters": field.parameter_count()}
        for res in (int(r) for r in args.resolutions.split(",")):
            fast, faces = timed(field, res, args.repeat)
            slow, faces_slow = timed(GridOnly(field), res, args.repeat)
            if abs(faces - faces_slow) > 1e-3 * faces:
                raise SystemExit(f"{name}: {faces} faces with the plane reader, {faces_slow} without")
            row.update({f"plane_reader_{res}_s": round(fast, 3), f"grid_{res}_s": round(slow, 3),
                        f"faces_{res}": faces, f"speedup_{res}": round(slow / fast, 2)})
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or
            platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__, "args": vars(args)}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    res = [int(r) for r in args.resolutions.split(",")]
    print("\n| mesh | layers | " + " | ".join(f"{r}³ reader / grid s (×)" for r in res) + " |")
    print("|---|---|" + "---|" * len(res))
    for r in rows:
        cells = [f"{r[f'plane_reader_{n}_s']:.2f} / {r[f'grid_{n}_s']:.2f} ({r[f'speedup_{n}']:.1f}×)" for n in res]
        print(f"| {r['mesh']} | {r['channels']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
