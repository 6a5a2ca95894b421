"""Compact global field + local detail operating points (issue 11), rows for ``compression.py --merge``.

For each mesh and saved field: the compact global file at ``--global-steps``, decoded; the local detail fitted
against the *decoded* global (so it also absorbs the global's quantization error in the band) at
``--detail-steps`` (multiples of the fine lattice spacing h, as ``SDFTarget.fit_detail``); bytes are the whole
file (``field.encode`` with the detail attached); error as in ``compression.py`` (numpy decode at 256³,
marching cubes, point-to-surface Chamfer-L1 / diagonal).

    python benchmarks/compression_detail.py --fields /tmp/compress/fields250 --meshes bunny --out benchmarks/compression_detail.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from compression import grid_error  # noqa: E402
from shared_assets import mesh_path  # noqa: E402
import finr3d  # noqa: E402
from finr3d import codec, compact_io  # noqa: E402
from finr3d.field import FactorizedField  # noqa: E402
from finr3d.sdf import SDFTarget  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--fields", required=True)
    p.add_argument("--meshes", default="bunny,kitten,rocker-arm")
    p.add_argument("--global-steps", default="1e-4,4e-4,1.6e-3")
    p.add_argument("--detail-steps", default="0.8,1.2,1.6", help="multiples of the fine lattice spacing h")
    p.add_argument("--samples", type=int, default=30_000)
    p.add_argument("--out", default=str(HERE / "compression_detail.json"))
    a = p.parse_args()
    out = json.loads(Path(a.out).read_text()) if Path(a.out).exists() else {"meshes": {}}
    for name in a.meshes.split(","):
        target = SDFTarget(mesh_path(name), resolution=128)
        field = finr3d.load(Path(a.fields) / f"{name}.finr")
        h = 2.0 / (target.detail_resolution - 1)
        rows = []
        for gs in [float(x) for x in a.global_steps.split(",")]:
            glob = FactorizedField.from_file(field.encode(step=gs, detail=False))
            for ds in [float(x) for x in a.detail_steps.split(",")]:
                t0 = time.perf_counter()
                glob.detail = target.fit_detail(glob, step=ds * h)
                blob = glob.encode(step=gs) if glob.detail is not None else field.encode(step=gs, detail=False)
                # the global re-encoded from its own decoded coefficients at the same step is the same model
                grid = codec.decode_grid(blob, resolution=256)
                row = {"method": "finr+detail", "setting": f"global step {gs:g} + detail {ds:g}h", "rank": max(field.ranks),
                       "global_step": gs, "detail_step_h": ds, "bytes": len(blob),
                       "detail_bytes": len(glob.detail.to_bytes()) if glob.detail is not None else 0,
                       "chamfer_l1": grid_error(grid, target, a.samples, 0),
                       "seconds": round(time.perf_counter() - t0, 1)}
                rows.append(row)
                print(name, row, flush=True)
        out["meshes"][name] = {"rows": rows}
        Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
