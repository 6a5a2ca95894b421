"""Does a local residual close neghip's gap to SZ3 at 45 dB? (issue 12, a probe, not a codec finr3d ships)

neghip is the one shared volume where ``.finr`` needs more bytes than SZ3 at 45 dB (``volume_fit.py rd``): its
structure is local, and a global Tucker needs rank 48 (120k core values) for 48 dB. The lever the issue names
is a global low-rank field plus sparse local detail. This script measures it, per volume:

1. **local alone**: the whole grid coded by a local predictor, no field. The predictor is SZ3's idea in its
   simplest form (multilevel linear interpolation from coarser decoded nodes, closed loop, a uniform quantizer,
   zstd on the int8/int16 codes), the prototype :func:`interp_code` below; it stands for what a local codec
   in ``.finr`` could reach, and is not a replacement for SZ3 (the brief: no hand-written codecs).
2. **global + local**: one fit with the volume preset (``--seconds``), every prefix on ``rank_path`` at four
   steps, each decoded file's residual coded by the same predictor, or by the shipped
   ``finr3d.local_detail`` coder (``predictor="none"``, bricks of 8), with the residual's step bisected to the
   level. The smallest total is reported.

The SZ3 bytes are read from ``volume_fit_rd.json`` (``sz3_at``), the same volumes at the same PSNR definition
(the source's value range over every voxel).

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/volume_residual.py --volumes neghip --seconds 60

Writes ``benchmarks/volume_residual.json`` (``--out``) and prints a table.
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
import zstandard

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from volume_fit import LEVELS, SHARED, VOLUMES, load_volume, psnr  # noqa: E402


def interp_code(x: np.ndarray, step: float) -> tuple[int, np.ndarray]:
    """Code ``x`` by multilevel linear interpolation: returns (zstd bytes of the codes, the decoded array).

    Anchors on the coarsest power-of-two lattice are quantized directly; each finer level predicts its new
    nodes axis by axis from the two decoded neighbours (one at a border) and quantizes the error with ``step``,
    so every decoded node is within ``step / 2``.
    """
    x = np.asarray(x, np.float64)
    d = np.zeros_like(x)
    H = 2 ** max(0, int(math.floor(math.log2(max(x.shape) - 1))))
    anchors = tuple(slice(0, None, H) for _ in x.shape)
    q = np.rint(x[anchors] / step)
    d[anchors] = q * step
    codes = [q.ravel()]
    h = H // 2
    while h >= 1:
        for axis in range(x.ndim):
            # axes before `axis` are known at stride h, `axis` itself at 2h (even nodes of this view), later at 2h
            view = tuple(slice(0, None, h if a <= axis else 2 * h) for a in range(x.ndim))
            sub, xs = d[view], x[view]
            n = sub.shape[axis]
            tgt = np.arange(1, n, 2)
            left = np.take(sub, tgt - 1, axis=axis)
            right = np.take(sub, np.where(tgt + 1 < n, tgt + 1, tgt - 1), axis=axis)
            pred = 0.5 * (left + right)
            idx = [slice(None)] * x.ndim
            idx[axis] = tgt
            qq = np.rint((xs[tuple(idx)] - pred) / step)
            sub[tuple(idx)] = pred + qq * step  # sub is a view of d
            codes.append(qq.ravel())
        h //= 2
    c = np.concatenate(codes)
    raw = c.astype(np.int8 if np.abs(c).max() < 127 else np.int16).tobytes()
    return len(zstandard.ZstdCompressor(level=19).compress(raw)), d


def smallest_residual(base, ref, level, coder) -> int | None:
    """Bytes of the cheapest residual (step bisected) that brings ``base`` to ``level`` dB, or None."""
    from finr3d.local_detail import fit_local_detail

    lo, hi, best = 1e-4, 0.3, None
    res = ref - base
    for _ in range(14):
        s = math.sqrt(lo * hi)
        if coder == "interp":
            nbytes, dec = interp_code(res, s)
        else:
            d = fit_local_detail(res, step=s, predictor="none", brick=8)
            nbytes, dec = len(d.to_bytes()), d.dense()
        if psnr(np.clip(base + dec, 0, 1), ref) >= level:  # clipped as VolumeTarget.evaluate clips
            lo, best = s, nbytes
        else:
            hi = s
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--volumes", default="neghip,fuel,hydrogen")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--baselines", default=str(HERE / "volume_fit_rd.json"))
    p.add_argument("--out", default=str(HERE / "volume_residual.json"))
    args = p.parse_args(argv)
    import torch

    import finr3d
    from finr3d import codec, compact_io
    from finr3d.sweep import rank_path
    from finr3d.volume import VolumeTarget

    torch.set_num_threads(args.threads)
    sz3 = {v["name"]: v["sz3_at"] for v in json.loads(Path(args.baselines).read_text())["volumes"]}
    out = []
    for name in args.volumes.split(","):
        (file,) = [v for v in VOLUMES if v.startswith(name)]
        ref = load_volume(file).astype(np.float64)
        row = {"volume": name, "shape": list(ref.shape), "sz3": {str(k): sz3.get(name, {}).get(str(k)) for k in LEVELS}}
        row["local_alone"] = {str(lv): smallest_residual(np.zeros_like(ref), ref, lv, "interp") for lv in LEVELS}
        t0 = time.perf_counter()
        field = finr3d.fit(VolumeTarget(SHARED / file), seconds=args.seconds)
        row["fit"] = {"seconds": time.perf_counter() - t0, "ranks": list(field.ranks)}
        cands = []
        steps = (1e-4, 3e-4, 1e-3, 3e-3)
        for prefix in rank_path(field, max_points=10):
            model = field.truncate(prefix)
            for s, blob in zip(steps, compact_io.encode_steps(model, steps)):
                base = codec.decode_grid(blob, resolution=ref.shape).astype(np.float64)
                c = {"ranks": list(model.ranks), "step": s, "field_bytes": len(blob),
                     "field_psnr": psnr(np.clip(base, 0, 1), ref)}
                for lv in LEVELS:
                    for coder in ("interp", "detail"):
                        r = 0 if c["field_psnr"] >= lv else smallest_residual(base, ref, lv, coder)
                        c[f"{coder}_{lv:g}"] = None if r is None else len(blob) + r
                cands.append(c)
                print(json.dumps(c), flush=True)
        row["candidates"] = cands
        for lv in LEVELS:
            for coder in ("interp", "detail"):
                ok = [c for c in cands if c[f"{coder}_{lv:g}"] is not None]
                row[f"best_{coder}_{lv:g}"] = min(ok, key=lambda c: c[f"{coder}_{lv:g}"]) if ok else None
        out.append(row)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "settings": vars(args),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores visible, torch {torch.__version__}, "
                       f"{args.threads} thread(s)"}
    Path(args.out).write_text(json.dumps({"meta": meta, "volumes": out}, indent=1))
    print("\n| volume | level | SZ3 KiB | local alone KiB | global + local (interp) KiB | global + local_detail KiB |")
    print("|---|---|---:|---:|---:|---:|")
    for r in out:
        for lv in LEVELS:
            def kib(v):
                return "-" if v is None else f"{v / 1024:.2f}"
            bi, bd = r[f"best_interp_{lv:g}"], r[f"best_detail_{lv:g}"]
            print(f"| {r['volume']} | {lv:g} dB | {kib(r['sz3'][str(lv)])} | {kib(r['local_alone'][str(lv)])} | "
                  f"{kib(bi and bi[f'interp_{lv:g}'])} ({bi and bi['ranks']}) | "
                  f"{kib(bd and bd[f'detail_{lv:g}'])} ({bd and bd['ranks']}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
