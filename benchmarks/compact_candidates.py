"""Candidate compact encodings of a fitted SDF field: which coding makes bytes follow the information.

For each fitted field (a ``.finr`` of a shared mesh; fit with ``--fit SECONDS`` or reuse
``--fields DIR``) the per-axis networks are baked into factor curves on the stored samples,
re-expressed with orthogonal energy-ordered factors (:func:`finr3d.compact.prepare`), and
quantized with one step Δ (core) and implicit per-column steps (factors). Candidates:

- factors as cosine (DCT) coefficients vs as raw sample values;
- integer codes through an ANS coder with a per-group Laplace model (constriction) vs zstd-19
  of int16 codes (byte planes), core in C order or ordered by shell;
- the baked field between samples (cosine interpolant) vs the networks (Chamfer at 256³).

Error: point-to-surface Chamfer-L1 / bbox diagonal of the marching-cubes mesh at 256³.

    python benchmarks/compact_candidates.py --fields /tmp/compress --meshes bunny,kitten,rocker-arm
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import zstandard

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from shared_assets import mesh_path  # noqa: E402
import finr3d  # noqa: E402
from finr3d import compact  # noqa: E402
from finr3d.geometry_metrics import chamfer  # noqa: E402
from finr3d.meshing import extract_mesh, march_slabs  # noqa: E402
from finr3d.sdf import SDFTarget  # noqa: E402
from finr3d.targets import lattice  # noqa: E402


def mesh_of(grid, target):
    import trimesh
    res = grid.shape[0]
    verts, faces, _ = march_slabs(lambda i0, i1, out: out.__setitem__(0, grid[i0:i1]), grid.shape, 0.0)
    verts = (-1.0 + verts * (2.0 / (res - 1))) * target.scale + target.center
    return trimesh.Trimesh(verts, faces, process=False)


def err(grid, target, samples):
    return chamfer(mesh_of(grid, target), target.mesh, samples, seed=0)["chamfer_l1"]


def zstd_codes(q):
    q = np.asarray(q, np.int64)
    if np.abs(q).max(initial=0) < 128:
        raw = q.astype(np.int8).tobytes()
    else:
        raw = q.astype("<i2").view(np.uint8).reshape(-1, 2).T.copy().tobytes()
    return len(zstandard.ZstdCompressor(level=19).compress(raw))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--fields", default="/tmp/compress")
    p.add_argument("--meshes", default="bunny,kitten,rocker-arm")
    p.add_argument("--steps", default="0.002,0.004,0.008,0.016,0.032")
    p.add_argument("--samples", type=int, default=50_000)
    p.add_argument("--res", type=int, default=256)
    p.add_argument("--out", default=str(HERE / "compact_candidates.json"))
    a = p.parse_args()
    results = {}
    for name in a.meshes.split(","):
        field = finr3d.load(Path(a.fields) / f"{name}.finr")
        target = SDFTarget(mesh_path(name), resolution=128)
        n = 128
        with torch.no_grad():
            feats = [net(lattice(n).reshape(-1, 1)).double().numpy() for net in field.nets]
        core = field.blocks[0].core.detach().double().numpy()
        bias = float(field.bias.detach())
        xs = np.linspace(-1, 1, a.res)
        net_grid = field.grid(a.res)
        t0 = time.perf_counter()
        qs, s = compact.prepare("tucker", feats, core)
        prep_s = time.perf_counter() - t0
        coefs = [compact.bake(q) for q in qs]
        baked = compact.contract_grid("tucker", [compact.cosine_matrix(xs, c.shape[0]) @ c for c in coefs], s)[..., 0] + bias
        row = {"net_chamfer": err(net_grid, target, a.samples), "baked_chamfer": err(baked.astype(np.float32), target, a.samples),
               "baked_vs_net_max": float(np.abs(baked - net_grid).max()), "prepare_s": prep_s,
               "params_net": field.parameter_count(), "points": []}
        print(name, row, flush=True)
        energy = [float(np.sqrt((np.moveaxis(s, 0, 0) ** 2).sum()))]
        for step in [float(x) for x in a.steps.split(",")]:
            q = np.rint(s / step).astype(np.int64)
            fac, qt = compact.trim("tucker", qs, q)
            shat = qt * step
            cst = compact.column_steps("tucker", shat, 3, step, [f.shape[1] for f in fac])
            pt = {"step": step, "ranks": list(qt.shape[:-1])}
            # core bytes
            g, ng = compact.core_groups(qt.shape)
            pt["core_ans"] = len(compact.encode_codes(qt.reshape(-1), g, ng))
            pt["core_zstd"] = zstd_codes(qt.reshape(-1))
            order = np.argsort(g, kind="stable")
            pt["core_zstd_shell"] = zstd_codes(qt.reshape(-1)[order])
            # factors: DCT coefficients vs raw samples
            fdct_ans = fdct_z = fraw_ans = fraw_z = 0
            dec_dct, dec_raw = [], []
            for f, st in zip(fac, cst):
                c = compact.bake(f)  # (K, R)
                # cosine RMS 1/sqrt2 per coefficient (k>0): coefficient step = column step * sqrt2 ... folded in column_steps
                qc = np.rint(c / st[None, :]).astype(np.int64)
                gg, ngg = compact.factor_groups(*qc.shape)
                fdct_ans += len(compact.encode_codes(qc.T.reshape(-1), gg, ngg))
                fdct_z += zstd_codes(qc.T.reshape(-1))
                dec_dct.append(qc * st[None, :])
                sr = st * math.sqrt(f.shape[0] / 2.0)
                qr = np.rint(f / sr[None, :]).astype(np.int64)
                fraw_ans += len(compact.encode_codes(qr.T.reshape(-1), gg, ngg))
                fraw_z += zstd_codes(qr.T.reshape(-1))
                dec_raw.append(compact.bake(qr * sr[None, :]))
            pt.update(factors_dct_ans=fdct_ans, factors_dct_zstd=fdct_z, factors_raw_ans=fraw_ans, factors_raw_zstd=fraw_z)
            for key, dec in (("dct", dec_dct), ("raw", dec_raw)):
                grid = compact.contract_grid("tucker", [compact.cosine_matrix(xs, c.shape[0]) @ c for c in dec], shat)[..., 0] + bias
                pt[f"chamfer_{key}"] = err(grid.astype(np.float32), target, a.samples)
            pt["bytes_best"] = pt["core_ans"] + fdct_ans
            print(" ", pt, flush=True)
            row["points"].append(pt)
        results[name] = row
    Path(a.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
