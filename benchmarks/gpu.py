"""The GPU path, measured in one prepared run (issue 16): images, video, SDF, extraction and fit options.

The lent GPU machine has torch, numpy 2, scipy, scikit-image and imageio but no
trimesh, open3d, zstandard or tensorly, and nothing can be downloaded there. So
the work splits in two:

1. ``--prepare DIR`` (here, with the project's full dependencies) writes every
   input of the run as ``.npy`` files plus ``manifest.json`` into ``DIR``:
   Kodak 1-4 (uint8), carphone's first 120 frames (uint8), and for bunny and
   rocker-arm the 128^3 truncated SDF of :class:`finr3d.sdf.SDFTarget`
   (float16, in truncation units), its world transform, and the reference data
   of the project's metrics (:mod:`finr3d.geometry_metrics`): area-uniform
   surface samples of the mesh and uniform points in its padded bounding box
   with their inside labels, both in the metrics' frame (centred, over the
   bounding-box diagonal). About 25 MiB in all.
2. ``--data DIR`` (on the device) reads only those files and runs, in this order
   and each part within one process:

   - **sdf**: finr3d's default SDF fit (``SDFTarget.from_grid``, 10 s) against
     the monolithic SIREN on the same grid (sdf_fit.py's baseline, 10 s). IoU:
     the sign of the field at the prepared points against their labels (the
     points and labels of ``volumetric_iou``); Chamfer-L1: the 256^3 mesh's
     area-uniform samples against the prepared reference samples and normals,
     point to plane at the nearest sample (an approximation of the project's
     point-to-triangle Chamfer). The meshes are saved so that ``--score`` can compute the
     project's exact ``mesh_metrics`` afterwards, here.
   - **extraction**: 512^3 and 1024^3 marching cubes of the first fitted SDF
     (:func:`finr3d.meshing.extract_arrays`, the trimesh-free core of
     ``extract_mesh``), time and ``torch.cuda.max_memory_allocated()``.
   - **video**: carphone, 120 frames: finr3d's default, SIREN and the hash grid
     (speed.py's settings), 60 s each: time to each baseline's final PSNR and
     PSNR at equal time.
   - **images**: Kodak 1-4, finr3d's default (30 s) against SIREN (30 s), as in
     image_fit.py: finr3d's time to SIREN's final PSNR and PSNR at equal time.
   - **options**: the first SDF task refitted with ``compile=True`` and with
     ``amp=True`` (bf16), 10 s each (compile time counts against the budget,
     as ``FitConfig.compile`` says); the default row is the sdf part's fit.

   ``--deadline`` (default 470 s) skips any item whose planned time would end
   past it, and records the skip, so the run stays under 8 minutes. With the
   issue's budgets the fits alone take 460 s, so expect the last images and the
   options to be skipped; ``--deadline 600`` runs everything (about 9 minutes).

``--smoke`` runs the same code paths tiny (crops, 24^3 SDF, 64^3 extraction,
1-s budgets); ``tests/test_gpu_benchmark.py`` runs it on the CPU in the suite.

    python benchmarks/gpu.py --prepare /tmp/gpu-data                     # here
    python benchmarks/gpu.py --data /tmp/gpu-data --out benchmarks/gpu.json   # on the device
    python benchmarks/gpu.py --score benchmarks/gpu.json                  # here: the project's mesh metrics
    python benchmarks/gpu.py --prepare /tmp/s --smoke && python benchmarks/gpu.py --data /tmp/s --smoke --device cpu

Writes one JSON (``--out``, default ``benchmarks/gpu.json``; ``gpu_smoke.json`` with ``--smoke``) and prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # finr3d from this checkout, also where it is not installed (the GPU machine)

import finr3d  # noqa: E402
from curves import jsonable as _jsonable, psnr_at, running_best, time_to  # noqa: E402,F401
from finr3d.targets import ImageTarget, psnr, ssim  # noqa: E402

KODAK = ("kodim01", "kodim02", "kodim03", "kodim04")
MESHES = ("bunny", "rocker-arm")
FULL = {"image_seconds": 30.0, "video_seconds": 60.0, "sdf_seconds": 10.0, "frames": 120, "sdf_resolution": 128,
        "extract": (512, 1024), "mesh_resolution": 256, "n_surface": 200_000, "n_volume": 100_000,
        "hash_log2_table": 19, "hash_batch": 1 << 18}
SMOKE = {"image_seconds": 1.0, "video_seconds": 1.0, "sdf_seconds": 1.0, "frames": 8, "sdf_resolution": 24,
         "extract": (48, 64), "mesh_resolution": 32, "n_surface": 2000, "n_volume": 2000,
         "hash_log2_table": 12, "hash_batch": 4096, "crop": (32, 40), "images": KODAK[:2], "meshes": MESHES[:1]}
PARTS = ("sdf", "extraction", "video", "images", "options")


# --------------------------------------------------------------------------- prepare (here)
def prepare(out: Path, smoke: bool, shared: Path) -> dict:
    """Write every input of the device run as .npy files and a manifest into ``out``."""
    import imageio.v3 as iio

    from finr3d.geometry_metrics import _frame, _query, _samples
    from finr3d.sdf import SDFTarget
    from finr3d.video import VideoTarget

    s = SMOKE if smoke else FULL
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"smoke": smoke, "created": datetime.datetime.now().isoformat(timespec="seconds"),
                "finr3d": finr3d.__version__, "images": [], "meshes": []}
    for name in (SMOKE["images"] if smoke else KODAK):
        img = iio.imread(shared / "images" / f"{name}.png")[..., :3]
        if smoke:
            img = img[:s["crop"][0], :s["crop"][1]]
        np.save(out / f"{name}.npy", np.ascontiguousarray(img.astype(np.uint8)))
        manifest["images"].append(name)
    video = VideoTarget(shared / "video" / "carphone.mp4", frames=(0, s["frames"]))
    frames = video.frames.numpy()
    if smoke:
        frames = frames[:, :24, :32]
    np.save(out / "carphone.npy", np.ascontiguousarray(frames.astype(np.uint8)))
    manifest["video"] = {"name": f"carphone[0:{frames.shape[0]}]", "shape": list(frames.shape)}
    from shared_assets import mesh_path

    for name in (SMOKE["meshes"] if smoke else MESHES):
        t0 = time.perf_counter()
        target = SDFTarget(mesh_path(name), resolution=s["sdf_resolution"], cache=not smoke)
        mesh = target.mesh
        center, diag = _frame(mesh)
        surface, normals = _samples(mesh, s["n_surface"], 1, center, diag)  # chamfer() samples it with seed+1
        lo, hi = (np.asarray(mesh.bounds) - center) / diag
        points = np.random.default_rng(0).uniform(lo - 0.05, hi + 0.05, (s["n_volume"], 3))  # volumetric_iou's
        inside = _query(mesh, center, diag, sign="auto").inside(points)
        key = name.replace("-", "_")
        np.save(out / f"{key}_sdf.npy", (target.sdf / np.float32(target.truncation)).astype(np.float16))
        np.save(out / f"{key}_surface.npy", surface.astype(np.float32))
        np.save(out / f"{key}_normals.npy", normals.astype(np.float16))
        np.save(out / f"{key}_points.npy", points.astype(np.float32))
        np.save(out / f"{key}_inside.npy", np.asarray(inside, bool))
        manifest["meshes"].append({
            "name": name, "key": key, "center": target.center.tolist(), "scale": target.scale,
            "truncation": target.truncation, "margin": target.margin, "ref_center": center.tolist(), "ref_diag": diag,
            "sign_method": target.report["sign_method"], "gt_seconds": round(time.perf_counter() - t0, 2)})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {len(list(out.iterdir()))} files, {size / 2**20:.1f} MiB, into {out}")
    return manifest


# --------------------------------------------------------------------------- curves (benchmarks/curves.py)
def compare(finr_curve, base_curve, seconds: float) -> dict:
    """finr3d's time to the baseline's final PSNR, the baseline's own time to it, and PSNR at equal time."""
    f, b = running_best(finr_curve), running_best(base_curve)
    level = b[-1][1]
    t_base, t_finr = time_to(b, level), time_to(f, level)
    return {"baseline_final_psnr": level, "t_baseline_to_final": t_base, "t_finr_to_baseline_final": t_finr,
            "speedup": t_base / t_finr if 0 < t_finr < math.inf else (math.inf if t_finr == 0 else None),
            # both ran for the same budget: their final points (which land just past it) are the equal-time ones
            "finr_psnr_at_equal_time": f[-1][1], "baseline_psnr_at_equal_time": level,
            "gain_db_at_equal_time": f[-1][1] - level,
            "finr_psnr_at_tenth_time": psnr_at(f, 0.1 * seconds)}


def curve_of(field) -> list:
    return [(c["elapsed"], c["psnr"]) for c in field.history["curve"]]


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- device run
class SirenSDF:
    """The SIREN SDF baseline as a field: ``grid`` and ``points`` in field units (``sdf / truncation``)."""

    channels, ndim = 1, 3

    def __init__(self, baseline, target):
        self.b, self.target_info = baseline, target.describe()

    @torch.no_grad()
    def points(self, pts) -> torch.Tensor:
        pts = torch.as_tensor(np.asarray(pts), dtype=torch.float32)
        lo, hi = self.b.coord_range
        pts = lo + (pts + 1) * 0.5 * (hi - lo)
        out = [self.b._from_model(self.b.model(pts[s:s + 65536].to(self.b.device))).float().cpu()
               for s in range(0, len(pts), 65536)]
        return torch.cat(out) * 2.0 - 1.0

    def grid(self, coords, rank=None, *, squeeze=True):
        axes = [torch.as_tensor(np.asarray(c), dtype=torch.float32) for c in coords]
        g = torch.meshgrid(*axes, indexing="ij")
        out = self.points(torch.stack([a.reshape(-1) for a in g], -1)).reshape(*[len(a) for a in axes], 1).numpy()
        return out[..., 0] if squeeze else out


def sample_surface(verts: np.ndarray, faces: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Area-uniform points on a triangle mesh and their faces' unit normals (numpy only)."""
    tri = verts[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(faces), n, p=area / area.sum())
    u, v = rng.random((2, n))
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    t = tri[idx]
    normals = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-30)
    return t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0]), normals


def sdf_scores(field, target, mesh: dict, data: Path, resolution: int, n_surface: int, save: Path | None,
               tag: str) -> dict:
    """IoU at the prepared points (field sign) and sample-to-sample Chamfer-L1 of the extracted mesh."""
    from scipy.spatial import cKDTree

    from finr3d.meshing import extract_arrays

    key, c_ref, diag = mesh["key"], np.asarray(mesh["ref_center"]), float(mesh["ref_diag"])
    pts = np.load(data / f"{key}_points.npy").astype(np.float64)
    inside_ref = np.load(data / f"{key}_inside.npy")
    normalized = ((pts * diag + c_ref) - target.center) / target.scale  # metrics frame -> world -> field
    with torch.no_grad():
        values = field.points(np.clip(normalized, -1, 1).astype(np.float32))
    inside = np.asarray(torch.as_tensor(values).detach().float().cpu()).reshape(-1) < 0
    union = int((inside | inside_ref).sum())
    out = {"iou": float((inside & inside_ref).sum()) / union if union else 1.0}
    t0 = time.perf_counter()
    try:
        verts, faces = extract_arrays(field, resolution)
    except RuntimeError as exc:  # no surface: the worst score, not a crash
        return {**out, "chamfer_l1": math.inf, "error": str(exc)}
    out[f"extract_{resolution}_s"] = time.perf_counter() - t0
    ref = np.load(data / f"{key}_surface.npy").astype(np.float64)
    ref_n = np.load(data / f"{key}_normals.npy").astype(np.float64)
    pred, pred_n = sample_surface(verts, faces, n_surface, 0)
    pred = (pred - c_ref) / diag
    # point-to-plane at the nearest sample of the other surface: close to chamfer()'s point-to-triangle distance
    # on smooth parts (plain sample-to-sample distances would add the sample spacing, ~1e-3 of the diagonal)
    _, i = cKDTree(ref).query(pred)
    d_pr = np.abs(np.einsum("ij,ij->i", pred - ref[i], ref_n[i]))
    _, i = cKDTree(pred).query(ref)
    d_rp = np.abs(np.einsum("ij,ij->i", ref - pred[i], pred_n[i]))
    out.update(chamfer_l1=float((d_pr.mean() + d_rp.mean()) / 2), faces=int(len(faces)))
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
        path = save / f"{tag}.npz"
        np.savez_compressed(path, verts=verts.astype(np.float32), faces=faces.astype(np.int32))
        out["mesh_file"] = path.name
    return out


def load_sdf_target(data: Path, mesh: dict):
    from finr3d.sdf import SDFTarget

    grid = np.load(data / f"{mesh['key']}_sdf.npy").astype(np.float32) * np.float32(mesh["truncation"])
    return SDFTarget.from_grid(grid, center=mesh["center"], scale=mesh["scale"], truncation=mesh["truncation"],
                               margin=mesh["margin"], source=f"{mesh['name']} (stored grid)")


def fit_sdf(target, args, **options):
    t0 = time.perf_counter()
    field = finr3d.fit(target, seconds=args.sdf_seconds, seed=args.seed, device=args.device, **options)
    sync(args.device)
    return field, time.perf_counter() - t0


def run_siren_sdf(target, args):
    from baselines.siren import SirenBaseline

    torch.manual_seed(args.seed)
    b = SirenBaseline(device=args.device, seed=args.seed)
    b.fit(np.clip((target.data.numpy() + 1.0) * 0.5, 0, 1), seconds=args.sdf_seconds)  # field units -> [0, 1]
    return b, SirenSDF(b, target)


def part_sdf(args, manifest, report, state):
    rows = report["parts"].setdefault("sdf", [])
    for mesh in manifest["meshes"]:
        if not state.room(2 * args.sdf_seconds + 10, f"sdf {mesh['name']}"):
            continue
        target = load_sdf_target(args.data, mesh)
        field, wall = fit_sdf(target, args)
        row = {"mesh": mesh["name"], "method": "finr3d default", "params": field.parameter_count(),
               "steps": field.history["steps"], "fit_seconds": field.history["seconds"], "wall": wall,
               "decomposition": field.config.decomposition, "ranks": list(field.ranks), "amp": False,
               "compile": False, **sdf_scores(field, target, mesh, args.data, args.mesh_resolution, args.n_surface,
                                              args.mesh_dir, f"{mesh['key']}_finr3d")}
        rows.append(row)
        print(json.dumps(_jsonable(row)), flush=True)
        if "field" not in state.sdf:
            state.sdf.update(field=field, target=target, mesh=mesh, row=row)
        b, proxy = run_siren_sdf(target, args)
        row = {"mesh": mesh["name"], "method": "SIREN (monolithic)", "params": b.parameter_count(), "steps": b.steps,
               "fit_seconds": args.sdf_seconds, **b.settings(),
               **sdf_scores(proxy, target, mesh, args.data, args.mesh_resolution, args.n_surface, args.mesh_dir,
                            f"{mesh['key']}_siren")}
        rows.append(row)
        print(json.dumps(_jsonable(row)), flush=True)


def part_extraction(args, manifest, report, state):
    from finr3d.meshing import extract_arrays

    rows = report["parts"].setdefault("extraction", [])
    if "field" not in state.sdf:
        state.skip("extraction", "no fitted SDF (the sdf part did not run)")
        return
    field = state.sdf["field"]
    for res in args.extract:
        if not state.room(5 + (res / 512) ** 3 * 5, f"extraction {res}"):
            continue
        cuda = torch.device(args.device).type == "cuda"
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        sync(args.device)
        t0 = time.perf_counter()
        verts, faces = extract_arrays(field, res)
        sync(args.device)
        row = {"mesh": state.sdf["mesh"]["name"], "resolution": res, "seconds": time.perf_counter() - t0,
               "faces": int(len(faces)), "vertices": int(len(verts))}
        if cuda:
            row["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated())
            row["peak_gpu_bytes_above_model"] = int(torch.cuda.max_memory_allocated() - base)
        rows.append(row)
        print(json.dumps(row), flush=True)


def part_options(args, manifest, report, state):
    rows = report["parts"].setdefault("options", [])
    if "field" not in state.sdf:
        state.skip("options", "no SDF task (the sdf part did not run)")
        return
    target, mesh, base = state.sdf["target"], state.sdf["mesh"], state.sdf["row"]
    rows.append({"mesh": mesh["name"], "compile": False, "amp": False, "steps": base["steps"],
                 "steps_per_s": base["steps"] / max(base["fit_seconds"], 1e-9), "iou": base["iou"],
                 "chamfer_l1": base["chamfer_l1"], "fit_seconds": base["fit_seconds"], "note": "the sdf part's fit"})
    for opts in ({"compile": True}, {"amp": True}):
        if not state.room(args.sdf_seconds + 10, f"options {opts}"):
            continue
        field, wall = fit_sdf(target, args, **opts)
        scores = sdf_scores(field, target, mesh, args.data, args.mesh_resolution, args.n_surface, None, "")
        row = {"mesh": mesh["name"], "compile": bool(opts.get("compile")), "amp": bool(opts.get("amp")),
               "steps": field.history["steps"], "fit_seconds": field.history["seconds"], "wall": wall,
               "steps_per_s": field.history["steps"] / max(field.history["seconds"], 1e-9),
               "iou": scores["iou"], "chamfer_l1": scores["chamfer_l1"]}
        rows.append(row)
        print(json.dumps(_jsonable(row)), flush=True)


def part_video(args, manifest, report, state):
    from baselines.hashgrid import HashGridBaseline
    from baselines.siren import SirenBaseline

    from finr3d.video import VideoTarget

    rows = report["parts"].setdefault("video", [])
    if not state.room(3 * args.video_seconds + 15, "video"):
        return
    frames = np.load(args.data / "carphone.npy")
    data = frames.astype(np.float32) / 255.0
    target = VideoTarget(frames)
    t0 = time.perf_counter()
    field = finr3d.fit(target, seconds=args.video_seconds, seed=args.seed, device=args.device)
    wall = time.perf_counter() - t0
    recon = np.clip(field.grid(list(frames.shape[:3]), squeeze=False), 0, 1)
    finr = {"method": "finr3d default", "params": field.parameter_count(), "steps": field.history["steps"],
            "wall": wall, "psnr": psnr(recon, data), "decomposition": field.config.decomposition,
            "ranks": list(field.ranks)}
    del recon
    rows.append(finr)
    print(json.dumps(_jsonable(finr)), flush=True)
    f_curve = curve_of(field)
    for name, model in (("siren", SirenBaseline(device=args.device, seed=args.seed)),
                        ("hashgrid", HashGridBaseline(log2_table_size=args.hash_log2_table, batch=args.hash_batch,
                                                      device=args.device, seed=args.seed))):
        t0 = time.perf_counter()
        curve = model.fit(data, seconds=args.video_seconds)
        wall = time.perf_counter() - t0
        row = {"method": name, "params": model.parameter_count(), "steps": model.steps, "wall": wall,
               "psnr": psnr(np.clip(model.predict_dense(), 0, 1), data), "settings": model.settings(),
               **compare(f_curve, curve, args.video_seconds)}
        rows.append(row)
        print(json.dumps(_jsonable(row)), flush=True)
        model.model = None
        if torch.device(args.device).type == "cuda":
            torch.cuda.empty_cache()
    finr["curve"] = f_curve


def part_images(args, manifest, report, state):
    from baselines.siren import SirenBaseline

    rows = report["parts"].setdefault("images", [])
    for name in manifest["images"]:
        if not state.room(2 * args.image_seconds + 10, f"image {name}"):
            continue
        image = np.load(args.data / f"{name}.npy").astype(np.float32) / 255.0
        torch.manual_seed(args.seed)
        siren = SirenBaseline(device=args.device, seed=args.seed)
        s_curve = siren.fit(image, seconds=args.image_seconds)
        s_pred = np.clip(siren.predict_dense(), 0, 1)
        target = ImageTarget(image)
        field = finr3d.fit(target, seconds=args.image_seconds, seed=args.seed, device=args.device)
        scores = target.evaluate(field)
        row = {"image": name, "shape": list(image.shape),
               "siren_psnr": psnr(s_pred, image), "siren_ssim": ssim(s_pred, image), "siren_params":
               siren.parameter_count(), "siren_steps": siren.steps,
               "finr_psnr": scores["psnr"], "finr_ssim": scores["ssim"], "finr_params": field.parameter_count(),
               "finr_steps": field.history["steps"], "finr_decomposition": field.config.decomposition,
               **compare(curve_of(field), s_curve, args.image_seconds)}
        rows.append(row)
        print(json.dumps(_jsonable(row)), flush=True)


class State:
    """The run's clock, its deadline and what it skipped."""

    def __init__(self, deadline: float, report: dict):
        self.t0, self.deadline, self.report, self.sdf = time.perf_counter(), float(deadline), report, {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def room(self, planned: float, what: str) -> bool:
        if self.elapsed() + planned <= self.deadline:
            return True
        self.skip(what, f"would end past the {self.deadline:g}-s deadline (at {self.elapsed():.0f} s, "
                        f"planned {planned:.0f} s)")
        return False

    def skip(self, what: str, why: str) -> None:
        self.report["skipped"].append({"item": what, "why": why})
        print(f"skipped {what}: {why}", flush=True)


def warm_up(args, manifest) -> None:
    """Pay lazy imports, CUDA context and kernel selection before any clock starts."""
    from baselines.hashgrid import HashGridBaseline
    from baselines.siren import SirenBaseline

    from finr3d.video import VideoTarget

    rng = np.random.default_rng(0)
    finr3d.fit(ImageTarget(rng.random((32, 32, 3)).astype(np.float32)), steps=3, device=args.device)
    finr3d.fit(VideoTarget((rng.random((4, 16, 16, 3)) * 255).astype(np.uint8)), steps=3, device=args.device)
    if manifest["meshes"]:
        finr3d.fit(load_sdf_target(args.data, manifest["meshes"][0]), steps=3, device=args.device)
    SirenBaseline(device=args.device).fit(rng.random((16, 16, 3)).astype(np.float32), 0.2)
    HashGridBaseline(log2_table_size=12, batch=1024, device=args.device).fit(
        rng.random((4, 16, 16, 3)).astype(np.float32), 0.2)
    sync(args.device)


def machine(args) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "numpy": np.__version__, "finr3d": finr3d.__version__, "cpu_cores": os.cpu_count(),
            "platform": platform.platform(), "device": str(args.device)}
    if torch.device(args.device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_bytes"] = int(torch.cuda.get_device_properties(0).total_memory)
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def run(args) -> dict:
    manifest = json.loads((args.data / "manifest.json").read_text())
    if bool(manifest["smoke"]) != bool(args.smoke):
        raise SystemExit(f"{args.data} was prepared {'with' if manifest['smoke'] else 'without'} --smoke; "
                         "prepare it again or pass the same flag")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = {"meta": {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(args),
                       "settings": settings, "manifest": manifest, "smoke": bool(args.smoke)},
              "parts": {}, "skipped": []}
    print(f"# gpu benchmark on {report['meta']['machine'].get('gpu', args.device)}, torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}", flush=True)
    state = State(args.deadline, report)  # the deadline counts the warm-up too
    t0 = state.t0
    warm_up(args, manifest)
    report["meta"]["warm_up_seconds"] = time.perf_counter() - t0
    for part in args.parts:
        t_part = time.perf_counter()
        print(f"\n## {part}", flush=True)
        PART_FUNCS[part](args, manifest, report, state)
        report["meta"].setdefault("part_seconds", {})[part] = time.perf_counter() - t_part
    report["meta"]["total_seconds"] = time.perf_counter() - t0
    return report


PART_FUNCS = {"sdf": part_sdf, "extraction": part_extraction, "options": part_options, "video": part_video,
              "images": part_images}


# --------------------------------------------------------------------------- score (here)
def score(path: Path, mesh_dir: Path, shared: Path, n: int) -> None:
    """The project's mesh_metrics of the meshes a device run saved, against the shared meshes; updates the JSON."""
    import trimesh

    from finr3d.geometry_metrics import mesh_metrics
    from finr3d.mesh_query import load_mesh

    report = json.loads(path.read_text())
    refs = {}
    for row in report["parts"].get("sdf", []):
        if not row.get("mesh_file"):
            continue
        if row["mesh"] not in refs:
            suffix = next(s for s in (".obj", ".ply") if (shared / "meshes" / f"{row['mesh']}{s}").exists())
            refs[row["mesh"]] = load_mesh(shared / "meshes" / f"{row['mesh']}{suffix}")[0]
        with np.load(mesh_dir / row["mesh_file"]) as z:
            pred = trimesh.Trimesh(z["verts"].astype(np.float64), z["faces"].astype(np.int64), process=False)
        row["project_metrics"] = mesh_metrics(pred, refs[row["mesh"]], n_samples=n, n_volume=n)
        print(row["mesh"], row["method"], {k: round(v, 6) for k, v in row["project_metrics"].items()}, flush=True)
    path.write_text(json.dumps(_jsonable(report), indent=1, allow_nan=False))


# --------------------------------------------------------------------------- report
def markdown(report: dict) -> str:
    m = report["meta"]
    s = m["settings"]
    lines = [f"**{m['machine'].get('gpu', m['machine']['device'])}**, torch {m['machine']['torch']}, CUDA "
             f"{m['machine']['cuda']}, {m['date']}{' (SMOKE: a pipeline check, not a result)' if m['smoke'] else ''}; "
             f"total {m['total_seconds']:.0f} s", ""]
    p = report["parts"]
    if p.get("images"):
        lines += [f"| image | SIREN PSNR @{s['image_seconds']:g}s | finr3d PSNR @{s['image_seconds']:g}s | gain | "
                  "finr3d time to SIREN's PSNR | speed-up |", "|---|---:|---:|---:|---:|---:|"]
        for r in p["images"]:
            lines.append(f"| {r['image']} | {r['siren_psnr']:.2f} | {r['finr_psnr']:.2f} | "
                         f"{r['gain_db_at_equal_time']:+.2f} dB | {_s(r['t_finr_to_baseline_final'])} | "
                         f"{_x(r['speedup'])} |")
        lines.append("")
    if p.get("video"):
        lines += [f"| video method ({s['video_seconds']:g} s) | params | steps | PSNR | finr3d time to its PSNR | "
                  "speed-up | finr3d − it at equal time |", "|---|---:|---:|---:|---:|---:|---:|"]
        for r in p["video"]:
            extra = (f"{_s(r['t_finr_to_baseline_final'])} | {_x(r['speedup'])} | {r['gain_db_at_equal_time']:+.2f} dB"
                     if "speedup" in r else "- | - | -")
            lines.append(f"| {r['method']} | {r['params']:,} | {r['steps']} | {r['psnr']:.2f} | {extra} |")
        lines.append("")
    if p.get("sdf"):
        lines += [f"| mesh | method ({s['sdf_seconds']:g} s) | params | steps | IoU (points) | Chamfer-L1 (point to plane) |"
                  " project IoU / Chamfer-L1 |", "|---|---|---:|---:|---:|---:|---:|"]
        for r in p["sdf"]:
            pm = r.get("project_metrics")
            proj = f"{pm['iou']:.4f} / {pm['chamfer_l1']:.2e}" if pm else "(run --score)"
            lines.append(f"| {r['mesh']} | {r['method']} | {r['params']:,} | {r['steps']} | {r['iou']:.4f} | "
                         f"{_e(r['chamfer_l1'])} | {proj} |")
        lines.append("")
    if p.get("extraction"):
        lines += ["| extraction | seconds | faces | peak GPU memory |", "|---|---:|---:|---:|"]
        for r in p["extraction"]:
            mem = f"{r['peak_gpu_bytes'] / 2**30:.2f} GiB" if "peak_gpu_bytes" in r else "- (CPU)"
            lines.append(f"| {r['mesh']} {r['resolution']}³ | {r['seconds']:.2f} | {r['faces']:,} | {mem} |")
        lines.append("")
    if p.get("options"):
        lines += ["| options (SDF) | steps/s | steps | IoU | Chamfer-L1 |", "|---|---:|---:|---:|---:|"]
        for r in p["options"]:
            lines.append(f"| {r['mesh']} compile={r['compile']} amp={r['amp']} | {r['steps_per_s']:.1f} | "
                         f"{r['steps']} | {r['iou']:.4f} | {_e(r['chamfer_l1'])} |")
        lines.append("")
    for sk in report["skipped"]:
        lines.append(f"skipped {sk['item']}: {sk['why']}")
    return "\n".join(lines)


def _e(v) -> str:
    return "no surface" if v is None or not math.isfinite(v) else f"{v:.2e}"


def _s(t) -> str:
    return "never" if t is None or not math.isfinite(t) else f"{t:.2f} s"


def _x(v) -> str:
    return "not reached" if v is None else ("∞" if not math.isfinite(v) else f"{v:.0f}x")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--prepare", type=Path, metavar="DIR", help="write the run's inputs into DIR (needs trimesh, "
                                                                  "open3d and the shared assets)")
    mode.add_argument("--data", type=Path, metavar="DIR", help="run the benchmark on the inputs in DIR")
    mode.add_argument("--score", type=Path, metavar="JSON", help="add the project's mesh_metrics to a run's JSON")
    p.add_argument("--smoke", action="store_true", help="tiny inputs and budgets: a pipeline check")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list from {','.join(PARTS)}")
    p.add_argument("--deadline", type=float, default=470.0, help="skip items that would end past this many seconds")
    for key in ("image_seconds", "video_seconds", "sdf_seconds"):
        p.add_argument("--" + key.replace("_", "-"), type=float)
    p.add_argument("--extract", help="comma list of extraction resolutions (default 512,1024; smoke 48,64)")
    p.add_argument("--mesh-resolution", type=int, help="extraction for the SDF scores (default 256)")
    p.add_argument("--n-surface", type=int, help="surface samples per mesh for the Chamfer (default 200000)")
    p.add_argument("--hash-log2-table", type=int)
    p.add_argument("--hash-batch", type=int)
    p.add_argument("--mesh-dir", type=Path, help="where the SDF meshes are saved (default: beside --out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="JSON (default benchmarks/gpu.json; gpu_smoke.json with --smoke)")
    args = p.parse_args(argv)
    shared = Path(os.environ.get("FINR3D_SHARED", HERE.parent.parent / "shared")) / "assets"
    if args.prepare:
        prepare(args.prepare, args.smoke, shared)
        return 0
    if args.score:
        mesh_dir = args.mesh_dir or args.score.with_name(args.score.stem + "_meshes")
        score(args.score, mesh_dir, shared, 2000 if args.smoke else 100_000)
        print(markdown(json.loads(args.score.read_text())))
        return 0
    defaults = SMOKE if args.smoke else FULL
    for key in ("image_seconds", "video_seconds", "sdf_seconds", "mesh_resolution", "n_surface", "hash_log2_table",
                "hash_batch"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    args.extract = [int(r) for r in args.extract.split(",")] if args.extract else list(defaults["extract"])
    args.parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"--parts: unknown {sorted(unknown)}; use {','.join(PARTS)}")
    args.out = args.out or HERE / ("gpu_smoke.json" if args.smoke else "gpu.json")
    args.mesh_dir = args.mesh_dir or args.out.with_name(args.out.stem + "_meshes")
    report = run(args)
    args.out.write_text(json.dumps(_jsonable(report), indent=1, allow_nan=False))
    print("\n" + markdown(report))
    print(f"\nwrote {args.out} (meshes in {args.mesh_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
