"""Cost of automatic rank/step selection after one fit (issue 11: it must not multiply the fit time).

For each mesh: one default fit of ``--seconds``, then ``choose_rank`` with a byte budget and with a Chamfer target,
timed separately; reports the chosen model's own bytes, parameters and Chamfer (measured on the decoded file) and
how many metric evaluations the choice needed.

    flock /tmp/finr3d-bench.lock python benchmarks/auto_rank.py --meshes spot --seconds 5
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from shared_assets import mesh_path  # noqa: E402
import finr3d  # noqa: E402
from finr3d.sdf import SDFTarget  # noqa: E402
from finr3d.sweep import choose_rank  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--meshes", default="spot,bunny")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--budget-kb", type=float, default=16.0)
    p.add_argument("--target-chamfer", type=float, default=6e-4)
    p.add_argument("--out", default=str(HERE / "auto_rank.json"))
    a = p.parse_args()
    finr3d.fit(SDFTarget(mesh_path("spot"), resolution=24, cache=False), rank=4, width=8, steps=2)  # warm-up
    out = {}
    for name in a.meshes.split(","):
        target = SDFTarget(mesh_path(name), resolution=128)
        t0 = time.perf_counter()
        field = finr3d.fit(target, seconds=a.seconds, nested_ranks=True)
        fit_s = time.perf_counter() - t0
        row = {"fit_wall_s": round(fit_s, 2), "fit_budget_s": a.seconds, "full_parameters": field.parameter_count()}
        for label, kw in (("budget", {"budget_bytes": int(a.budget_kb * 1024)}), ("target", {"target": a.target_chamfer})):
            t0 = time.perf_counter()
            try:
                c = choose_rank(field, target, **kw)
                row[label] = {k: c[k] for k in ("ranks", "step", "bytes", "params", "chamfer_l1", "evaluations")
                              if k in c}
            except ValueError as exc:
                row[label] = {"error": str(exc)}
            row[label]["seconds"] = round(time.perf_counter() - t0, 2)
        out[name] = row
        print(name, row, flush=True)
    Path(a.out).write_text(json.dumps({"settings": vars(a), "date": time.strftime("%Y-%m-%d %H:%M"),
                                       "meshes": out}, indent=1))


if __name__ == "__main__":
    main()
