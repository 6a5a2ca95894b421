"""What the entropy coder and the quantizer's zero bin buy, on the same fitted fields (issue 11).

Three encoders of the same compact file (format v2), on the same fits:

- ``ans``: coder 1, the first format-v2 coder: group scales from the mean |code|, the full
  ``[-2^20+1, 2^20-1]`` alphabet, Tucker core grouped by shell ``max(i, j, k)``, values rounded to nearest;
- ``bounded``: coder 3: an alphabet bound per block, each group's scale chosen by its code length, core
  grouped by index sum, values rounded to nearest (lossless against ``ans``: the same decoded field, checked);
- ``bounded+deadzone``: coder 3 with the zero bin :data:`finr3d.compact.DEADZONE` (the default encoder's,
  except for volumes: :data:`finr3d.compact.KIND_DEADZONE`).

Meshes: every rank prefix (eighths, as ``compression.py``) x every step of an SDF field saved by
``compression.py --fit-only --save-fields DIR``, decoded by the numpy decoder at 256^3 and meshed; bytes at
Draco-8's Chamfer (from ``--baselines``, a ``compression.json``) on each encoder's frontier. Signals: one
fit each (the smoke clip with the goal structure ``presets.COMPACT_TIMED_VOLUME``, ``--volumes`` and
``--images`` with their presets), the full-rank file at every step; bytes at fixed PSNRs (every voxel or
pixel, on the value range), log-linear between the two files around each level.

    OMP_NUM_THREADS=1 python benchmarks/coders.py --fields /tmp/fields --baselines benchmarks/compression.json
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
sys.path.insert(0, str(HERE.parent))

import compression as C  # noqa: E402
import finr3d  # noqa: E402
from finr3d import codec, compact, compact_io  # noqa: E402
from finr3d.field import FactorizedField  # noqa: E402
from finr3d.sdf import SDFTarget  # noqa: E402
from shared_assets import mesh_path  # noqa: E402

ENCODERS = {"ans": (compact.CODER_ANS, 0.5), "bounded": (compact.CODER_ANS_BOUNDED, 0.5),
            "bounded+deadzone": (compact.CODER_ANS_BOUNDED, compact.DEADZONE)}


def encode(model, steps, encoder):
    coder, dz = ENCODERS[encoder]
    old = compact.DEFAULT_CODER, compact.DEADZONE, compact.KIND_DEADZONE
    compact.DEFAULT_CODER, compact.DEADZONE, compact.KIND_DEADZONE = coder, dz, {}  # this zero bin, any kind
    try:
        return compact_io.encode_steps(model, steps, detail=False)
    finally:
        compact.DEFAULT_CODER, compact.DEADZONE, compact.KIND_DEADZONE = old


def same_decoding(a: bytes, b: bytes) -> bool:
    fa, fb = codec.decode_field(a, max_tensor_bytes=1 << 34).compact, codec.decode_field(b, max_tensor_bytes=1 << 34).compact
    return bool(np.array_equal(fa.mixing, fb.mixing)
                and all(np.array_equal(x, y) for x, y in zip(fa.coefficients, fb.coefficients)))


def mesh_rows(name, field, steps, prefixes, samples):
    target = SDFTarget(mesh_path(name), resolution=128)
    top = max(field.ranks)
    ranks = sorted({max(1, top * p // 8) for p in prefixes if p < 8}) + [None]
    rows = []
    for rank in ranks:
        model = field if rank is None else field.truncate(rank)
        blobs = {e: encode(model, steps, e) for e in ENCODERS}
        for i, step in enumerate(steps):
            assert same_decoding(blobs["ans"][i], blobs["bounded"][i]), "coder 3 must be lossless against coder 1"
            row = {"rank": rank or top, "step": step}
            for e in ENCODERS:
                row[f"{e}_bytes"] = len(blobs[e][i])
            for e in ("bounded", "bounded+deadzone"):  # ans decodes to what bounded does
                grid = codec.decode_grid(blobs[e][i], resolution=256)
                row[f"{e}_chamfer"] = C.grid_error(grid, target, samples, 0)
            row["ans_chamfer"] = row["bounded_chamfer"]
            rows.append(row)
            print(f"  {name} r{rank or top} step {step:g}: " + ", ".join(
                f"{e} {row[e + '_bytes']} B {row[e + '_chamfer']:.3e}" for e in ENCODERS), flush=True)
    return rows


def at_level(rows, key, level):
    pts = [(r[f"{key}_bytes"], r[f"{key}_chamfer"]) for r in rows]
    return C.bytes_at(C.frontier(pts), level)[0]


def signal_rows(name, target, seconds, steps, options):
    """One fit of ``target``, its full-rank file at every step with every encoder; PSNR of the decoded file."""
    from finr3d.evaluation import evaluate

    def psnr(model):
        if getattr(target, "kind", None) == "volume":
            return target.evaluate(model, ssim=False)["psnr"]
        return evaluate(model, target)["psnr"]

    t0 = time.perf_counter()
    field = finr3d.fit(target, seconds=seconds, **options)
    fit = {"seconds": time.perf_counter() - t0, "steps": field.history.get("steps"), "ranks": list(field.ranks),
           "decomposition": field.config.decomposition, "psnr_unquantized": psnr(field)}
    blobs = {e: encode(field, steps, e) for e in ENCODERS}
    rows = []
    for i, step in enumerate(steps):
        assert same_decoding(blobs["ans"][i], blobs["bounded"][i])
        row = {"step": step, **{f"{e}_bytes": len(blobs[e][i]) for e in ENCODERS}}
        for e in ("bounded", "bounded+deadzone"):
            row[f"{e}_psnr"] = psnr(FactorizedField.from_file(blobs[e][i]))
        row["ans_psnr"] = row["bounded_psnr"]
        rows.append(row)
        print(f"  {name} " + json.dumps(row), flush=True)
    return fit, rows


def bytes_at_psnr(rows, key, level):
    """Bytes at ``level`` dB, log-linear between the two files around it (None outside the measured range)."""
    pts = sorted((r[f"{key}_bytes"], r[f"{key}_psnr"]) for r in rows)
    for (b1, p1), (b2, p2) in zip(pts, pts[1:]):
        if p1 < level <= p2:
            t = (level - p1) / (p2 - p1)
            return math.exp(math.log(b1) + t * (math.log(b2) - math.log(b1)))
    return None


def signal_cases(args):
    import volume_fit as V
    from finr3d.presets import COMPACT_TIMED_VOLUME
    from finr3d.sources import load_target
    from finr3d.volume import VolumeTarget
    from shared_assets import shared_assets

    out = []
    if args.clip_seconds > 0:
        out.append(("smoke clip 48x64", lambda: VolumeTarget(V.load_clip("48x64"), axes="tzyx"), args.clip_seconds,
                    args.clip_steps, dict(COMPACT_TIMED_VOLUME), (40.0, 45.0)))
    for v in [x for x in args.volumes.split(",") if x]:
        out.append((v.split("_")[0], lambda v=v: VolumeTarget(V.load_volume(v)), args.signal_seconds,
                    args.volume_steps, {}, (40.0, 43.0, 45.0)))
    for im in [x for x in args.images.split(",") if x]:
        out.append((im, lambda im=im: load_target(shared_assets() / "images" / f"{im}.png"), args.signal_seconds,
                    args.image_steps, {}, (22.0, 24.0, 26.0)))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fields", required=True, help="DIR/<mesh>.finr of compression.py --save-fields")
    p.add_argument("--baselines", default=str(HERE / "compression.json"), help="Draco-8's Chamfer from here")
    p.add_argument("--meshes", default="bunny,kitten,rocker-arm")
    p.add_argument("--steps", default="5e-5,7e-5,1e-4,1.4e-4,2e-4")
    p.add_argument("--prefixes", default="5,6,7")
    p.add_argument("--samples", type=int, default=100_000)
    p.add_argument("--clip-seconds", type=float, default=30.0, help="0: no clip")
    p.add_argument("--clip-steps", default="1e-5,1.5e-5,2e-5,3e-5,5e-5,1e-4")
    p.add_argument("--volumes", default="neghip_64x64x64_uint8.raw")
    p.add_argument("--volume-steps", default="1e-5,2e-5,3e-5,5e-5,7e-5,1e-4,1.5e-4,2e-4,4e-4")
    p.add_argument("--images", default="kodim01")
    p.add_argument("--image-steps", default="1e-4,2e-4,4e-4,7e-4,1e-3,2e-3,4e-3")
    p.add_argument("--signal-seconds", type=float, default=30.0, help="fit budget of the volumes and images")
    p.add_argument("--out", default=str(HERE / "coders.json"))
    args = p.parse_args(argv)
    split = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    base = json.loads(Path(args.baselines).read_text())["meshes"]
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.platform(),
           "settings": vars(args), "deadzone": compact.DEADZONE, "meshes": {}}
    steps = [float(s) for s in split(args.steps)]
    for name in split(args.meshes):
        field = finr3d.load(Path(args.fields) / f"{name}.finr")
        rows = mesh_rows(name, field, steps, [int(x) for x in split(args.prefixes)], args.samples)
        level = base[name]["summary"]["draco8"]["chamfer_l1"]
        summary = {e: at_level(rows, e, level) for e in ENCODERS}
        out["meshes"][name] = {"draco8_chamfer": level, "rows": rows, "bytes_at_draco8": summary}
        print(f"{name}: bytes at Draco-8's Chamfer {level:.3e}: {summary}", flush=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
    out["signals"] = {}
    for name, make, seconds, steps_arg, options, levels in signal_cases(args):
        fit, rows = signal_rows(name, make(), seconds, [float(x) for x in split(steps_arg)], options)
        at = {str(lv): {e: bytes_at_psnr(rows, e, lv) for e in ENCODERS} for lv in levels}
        out["signals"][name] = {"fit": fit, "rows": rows, "bytes_at": at}
        print(f"{name}: {at} ({fit})", flush=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
    Path(args.out).write_text(json.dumps(out, indent=1))
    print("\n| case | level | coder 1 (ans) | coder 3 (bounded) | coder 3 + zero bin | last / first |")
    print("|---|---|---:|---:|---:|---:|")
    for name, m in out["meshes"].items():
        b = m["bytes_at_draco8"]
        ratio = b["bounded+deadzone"] / b["ans"] if b["ans"] and b["bounded+deadzone"] else math.nan
        print(f"| {name} | Draco-8 Chamfer {m['draco8_chamfer']:.2e} | " + " | ".join(
            "-" if b[e] is None else f"{b[e] / 1024:.2f} KiB" for e in ENCODERS) + f" | {ratio:.2f} |")
    for name, sig in out["signals"].items():
        for lv, b in sig["bytes_at"].items():
            ratio = b["bounded+deadzone"] / b["ans"] if b["ans"] and b["bounded+deadzone"] else math.nan
            print(f"| {name} | {lv} dB | " + " | ".join(
                "-" if b[e] is None else f"{b[e] / 1024:.2f} KiB" for e in ENCODERS) + f" | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
