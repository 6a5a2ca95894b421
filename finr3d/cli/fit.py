"""finr3d fit: fit a factorized field to a mesh, volume, image or video."""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from finr3d.config import FieldConfig, FitConfig, field_docs
from finr3d.presets import help_by_kind

HELP = "fit a factorized field to a mesh (SDF), volume, image or video and save it as .finr"
DESCRIPTION = """\
Fit a factorized neural field (F-INR) and save it as a compressed .finr file.

The input kind is guessed from the file name (meshes: obj ply stl off glb gltf;
images: png jpg; volumes: npy npz raw nii; video: mp4 webm avi or a folder of
frames). Each axis gets a small network; a CP, Tucker or TT decomposition of
rank R combines them. Higher rank: more accurate, larger, slower.
"""
EPILOG = """\
examples:
  finr3d fit bunny.obj -o bunny.finr --seconds 60
  finr3d fit bunny.obj -o bunny.finr --decomposition tucker --rank 48 --sign winding
  finr3d fit photo.png -o photo.finr --decomposition cp --rank 256 --seconds 30
  finr3d fit ct_256x256x128_uint16.raw -o ct.finr --rank 64
  finr3d fit clip.mp4 -o clip.finr --progress json      (one JSON object per line, for tools)
"""


def add_arguments(p) -> None:
    fd, td = field_docs(FieldConfig), field_docs(FitConfig)
    p.add_argument("input", help="the mesh, volume, image or video to fit")
    p.add_argument("-o", "--output", required=True, help="where to write the .finr file")
    p.add_argument("--kind", default="auto", choices=["auto", "sdf", "volume", "image", "video"],
                   help="what the input is (default: from the file name)")
    p.add_argument("--decomposition", choices=["cp", "tucker", "tt"], help=fd["decomposition"] + " " + help_by_kind("decomposition"))
    p.add_argument("--rank", type=_rank, help=fd["rank"] + " E.g. 64 or 32,32,16. " + help_by_kind("rank")
                   + "; a rank without --decomposition means a cp rank")
    p.add_argument("--backbone", choices=["relu", "siren", "wire", "finer"], help=fd["backbone"] + " " + help_by_kind("backbone"))
    p.add_argument("--width", type=int, help=fd["width"] + " " + help_by_kind("width"))
    p.add_argument("--depth", type=int, help=fd["depth"] + " (default 2)")
    p.add_argument("--basis", type=_basis, help=fd["basis"] + " " + help_by_kind("basis", generic=0))
    p.add_argument("--steps", type=int, help=td["steps"])
    p.add_argument("--seconds", type=float, help=td["seconds"])
    p.add_argument("--lr", type=float, help=td["lr"] + " " + help_by_kind("lr", generic=FitConfig.lr))
    p.add_argument("--init", choices=["auto", "closed_form", "random"], help=td["init"])
    p.add_argument("--nested-ranks", action="store_true", default=None, help=td["nested_ranks"])
    p.add_argument("--eikonal", type=float, help=td["eikonal"])
    p.add_argument("--target-metric", type=float, help=td["target_metric"])
    p.add_argument("--seed", type=int, help=td["seed"] + " (default 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help=td["device"])
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores)")
    p.add_argument("--progress", default="bar", choices=["bar", "json", "none"],
                   help="progress display: a bar on stderr, JSON lines on stdout, or none (default bar)")
    p.add_argument("--quantization", default="auto",
                   help="precision of the compact file (fp32 unquantized; fp16, int8, int6, int4 ever coarser "
                        "steps; auto: fp16, finer for a mesh whose fit fp16 would blur), or of the weights with "
                        "--editable (auto: fp16) (default auto)")
    p.add_argument("--editable", action="store_true",
                   help="keep the per-axis network weights (a resumable, fine-tunable file; larger)")
    a = p.add_argument_group("automatic rank and quantization (trains nested ranks, then picks from the rate-quality curve)")
    a.add_argument("--budget-kb", type=float, help="the best model whose .finr file fits in this many KiB")
    a.add_argument("--target-psnr", type=float,
                   help="the smallest model with at least this PSNR (images, volumes, video); a 3-D volume whose "
                        "HOSVD spectrum shows the default rank cannot reach it is fitted at the per-mode Tucker ranks "
                        "it needs (a core of up to 128^3 values, said on stderr); one that no such Tucker can reach "
                        "is refused before the fit")
    a.add_argument("--target-chamfer", type=float,
                   help="the smallest model with at most this Chamfer-L1 (meshes; fraction of the bbox diagonal)")
    g = p.add_argument_group("meshes (SDF)")
    g.add_argument("--resolution", type=int,
                   help="ground-truth SDF grid per axis (default: 128, or 256 where a 128 grid misplaces more "
                        "than 1 %% of the surface by a quarter voxel, e.g. thin or open parts)")
    g.add_argument("--sign", choices=["auto", "raycast", "winding"],
                   help="inside/outside test: raycast for watertight meshes, winding numbers for open or "
                        "multi-part ones; auto picks (default auto)")
    g.add_argument("--profile", choices=["tanh", "clamp"],
                   help="what the field learns of the distance: tanh(sdf / t), smooth, smaller files and a closer "
                        "fit, or the clamped sdf / t of files before 2026-12-01 (default tanh)")
    g.add_argument("--layers", choices=["auto", "1"],
                   help="auto: parts that interpenetrate (eyes set into a head, a spout pushed into a body) get "
                        "their own SDF channel, so the surfaces the union of the solids would hide survive; 1: "
                        "one solid, the union (default auto; meshes with one part, or parts side by side, are "
                        "one layer either way)")
    g.add_argument("--detail", action="store_true",
                   help="also fit a sparse local residual on a 2x finer ground truth in the band around the "
                        "surface: a more accurate mesh for a much larger file (off by default)")
    vol = p.add_argument_group("volumes (.npy .npz .raw .nii, or a folder of per-frame volumes)")
    vol.add_argument("--axes", help="the array's axes, slowest first, in the letters t z y x c, e.g. tzyx (time "
                                    "first) or zyxc (channels last); needed for any array that is not 3-D "
                                    "(default: zyx; NIfTI: x, y, z[, t] from the file)")
    v = p.add_argument_group("video")
    v.add_argument("--frames", help="frame range START:STOP (stop exclusive), e.g. 0:64")
    v.add_argument("--stride", type=int, help="keep every Nth frame (default 1)")
    v.add_argument("--resize", help="resize frames to HxW, e.g. 144x176")
    p.add_argument("--layout",
                   help="modes as axis letters grouped by '+': video x+y+t (default) or xy+t; volumes x+y+z[+t] "
                        "(default) or grouped, e.g. xyz+t (one network over space, one over time)")
    p.add_argument("--force", action="store_true", help="overwrite the output file if it exists")


def _video_options(args) -> dict:
    out = {}
    if args.frames:
        try:
            start, stop = (int(x) if x.strip() else None for x in args.frames.split(":"))
        except ValueError:
            raise ValueError(f"--frames must be START:STOP like 0:64, got {args.frames!r}") from None
        out["frames"] = (start or 0, stop)
    if args.stride is not None:
        out["stride"] = args.stride
    if args.resize:
        try:
            h, w = (int(x) for x in args.resize.lower().split("x"))
        except ValueError:
            raise ValueError(f"--resize must be HxW like 144x176, got {args.resize!r}") from None
        out["resize"] = (h, w)
    return out


def _basis(text: str):
    if text.strip().lower() == "grid":
        return "grid"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'grid' or a number of cosine terms, got {text!r}") from None


def _rank(text: str):
    try:
        parts = [int(t) for t in text.replace("x", ",").split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer or a comma list like 32,32,16, got {text!r}") from None
    if not parts:
        raise ValueError("--rank is empty")
    return parts[0] if len(parts) == 1 else parts


def run(args) -> int:
    import sys
    from pathlib import Path

    from finr3d.cli._common import Progress, check_output

    from finr3d import codec

    out = check_output(args.output, {".finr"}, force=args.force)
    from finr3d.compact_io import QUANTIZATION_NAMES

    if args.quantization not in QUANTIZATION_NAMES:  # now, not after the fit at save time
        raise ValueError(f"--quantization {args.quantization!r} is not one of {', '.join(QUANTIZATION_NAMES)}")
    if args.threads is not None:
        if not 1 <= args.threads <= 1024:
            raise ValueError(f"--threads must be between 1 and 1024, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    if not Path(args.input).exists():
        raise FileNotFoundError(f"{args.input}: no such file; check the path")
    options = {k: getattr(args, k) for k in ("decomposition", "rank", "backbone", "width", "depth", "basis", "steps",
                                             "seconds", "lr", "init", "nested_ranks", "eikonal", "target_metric",
                                             "seed", "device")}
    options = {k: v for k, v in options.items() if v is not None}
    target_options = {}
    if args.resolution is not None:
        target_options["resolution"] = args.resolution
    if args.sign is not None:
        target_options["sign"] = args.sign
    if args.profile is not None:
        target_options["profile"] = args.profile
    if args.layers is not None:
        target_options["layers"] = "auto" if args.layers == "auto" else int(args.layers)
    if args.detail:
        target_options["detail_resolution"] = "auto"
    import finr3d
    from finr3d.targets import detect_kind

    kind = args.kind if args.kind != "auto" else detect_kind(args.input)
    if target_options and kind != "sdf":
        raise ValueError("--resolution, --sign, --profile, --layers and --detail apply to meshes only")
    video_options = _video_options(args)
    if video_options and kind != "video":
        raise ValueError("--frames, --stride and --resize apply to video only")
    target_options.update(video_options)
    if args.axes is not None and kind != "volume":
        raise ValueError("--axes applies to volumes (.npy .npz .raw .nii); images and video know their axes")
    if args.axes is not None:
        target_options["axes"] = args.axes
    if args.layout is not None:
        if kind not in ("video", "volume"):
            raise ValueError("--layout applies to video and volumes")
        target_options["modes" if kind == "video" else "layout"] = args.layout
    auto = [x for x in (args.budget_kb, args.target_psnr, args.target_chamfer) if x is not None]
    if len(auto) > 1:
        raise ValueError("give only one of --budget-kb, --target-psnr and --target-chamfer")
    if args.target_chamfer is not None and kind != "sdf":
        raise ValueError("--target-chamfer applies to meshes; use --target-psnr for other inputs")
    if args.target_psnr is not None and kind == "sdf":
        raise ValueError("--target-psnr applies to images, volumes and video; use --target-chamfer for meshes")
    if args.budget_kb is not None and not args.budget_kb > 0:
        raise ValueError(f"--budget-kb must be positive, got {args.budget_kb}")
    if auto:
        options["nested_ranks"] = True
    # validate before any progress output, so bad values give one clean line
    FieldConfig(**{k: v for k, v in options.items() if k in field_docs(FieldConfig)}).validate()
    FitConfig(**{k: v for k, v in options.items() if k in field_docs(FitConfig)}).validate()
    steps, seconds = options.get("steps"), options.get("seconds")
    if steps is None and seconds is None:
        steps = 2000
    progress = Progress(args.progress, total_seconds=seconds, total_steps=steps)
    if args.progress == "json":
        print(__import__("json").dumps({"phase": "prepare", "input": str(args.input), "kind": kind}), flush=True)
    try:
        import time

        from finr3d.sources import load_target

        t0 = time.perf_counter()
        target = load_target(args.input, kind=kind, **target_options)  # kept for the automatic rank choice
        prepare = time.perf_counter() - t0
        if auto and "decomposition" not in options and "rank" not in options:
            from finr3d.presets import goal_structure

            options.update(goal_structure(target))  # e.g. a clip: the 4-D Tucker that codes small, not fast CP
        goal = None
        if args.target_psnr is not None and kind == "volume" and not {"decomposition", "rank", "basis"} & set(options):
            from finr3d.volume import goal_rank

            goal = goal_rank(target, args.target_psnr)  # a volume that is not low-rank: a higher rank up front
            if goal is not None and goal.get("impossible"):
                from finr3d.sweep import residual_target
                from finr3d.volume import GOAL_RANKS

                if not residual_target(target):
                    raise ValueError(goal["message"])
                # past what a Tucker can hold: the preset's field, and a residual on the lattice codes the rest
                # (a larger core would only cost fitting time: the file's field is chosen among its prefixes)
                goal = {**goal, "settings": {}, "message": f"no Tucker of at most {max(GOAL_RANKS)}^3 core values "
                        f"reaches {args.target_psnr:g} dB on this volume (its spectrum caps one at "
                        f"{goal['ceiling']:.1f} dB): fitting the preset, and the file will carry a residual on "
                        "the volume's lattice for the rest"}
            if goal is not None:
                # what the user set wins (a goal is only sought without --decomposition/--rank/--basis; this
                # keeps an explicit --nested-ranks, --steps or --seconds)
                from finr3d.volume import goal_overrides

                given = {k for k in vars(args) if getattr(args, k) is not None}
                options.update(goal_overrides(goal["settings"], given))
                if args.progress == "json":
                    print(__import__("json").dumps({"phase": "goal_rank", **goal}), flush=True)
                else:
                    print(f"finr3d fit: {goal['message']}", file=sys.stderr, flush=True)
        field = finr3d.fit(target, callback=progress if args.progress != "none" else None, **options)
        field.history["target_seconds"] = prepare
        if goal is not None:
            field.history["goal_rank"] = {k: v for k, v in goal.items() if k != "settings"}
    finally:
        progress.close()
    hint = _low_rank_hint(target, kind, options, auto, field.history)  # before options become the file's
    rank, quantization = None, args.quantization
    if auto:
        from finr3d.sweep import choose_rank

        choice = choose_rank(field, target,
                             budget_bytes=None if args.budget_kb is None else int(args.budget_kb * 1024),
                             target=args.target_psnr if args.target_psnr is not None else args.target_chamfer)
        rank, quantization, step = tuple(choice["ranks"]), choice["quantization"], choice.get("step")
        if "_detail" in choice:  # a smaller field and a lattice residual (finr3d.lattice_residual) won
            field.detail = choice["_detail"]
        field.history["auto_rank"] = {k: v for k, v in choice.items() if k != "table" and not k.startswith("_")}
        field.history["rank_table"] = choice["table"]
        if args.progress != "json":
            how = f"step {step:g}" if step is not None else quantization
            if "detail" in choice:
                how += f" with a lattice residual of {choice['detail']['nbytes']:,} bytes"
            print(f"chose ranks {list(rank)} at {how}: {choice['bytes']:,} bytes, {choice.get('params', 0):,} "
                  f"parameters, {choice['metric']} {choice[choice['metric']]:.4g} (the chosen model's own; "
                  f"{choice['evaluations']} metric evaluations)")
        if step is not None:
            quantization = "fp16"  # a compact file: the step decides
    else:
        step = None
    options = dict(rank=rank, quantization=quantization, step=step, editable=bool(args.editable))
    blob = field.encode(**options)
    if args.budget_kb is not None:
        # the budget counts the whole file: shed the optional metadata, largest first, until it fits
        budget = args.budget_kb * 1024
        chosen = field.history.get("auto_rank")
        for shed in ("rank_table", "auto_rank"):
            if len(blob) > budget and shed in field.history:
                field.history.pop(shed)
                blob = field.encode(**options)
        if len(blob) > budget and not args.editable:
            blob = field.encode(**options, metadata=False)
        if chosen is not None:
            field.history["auto_rank"] = chosen  # reported below even when the file could not hold it
    from finr3d import codec

    nbytes = codec.write_bytes(out, blob, overwrite=True)
    h = field.history
    if auto and "auto_rank" in h:  # report the saved model, not the full one
        h = {**h, "metrics": {**h.get("metrics", {}), h["auto_rank"]["metric"]: h["auto_rank"][h["auto_rank"]["metric"]]}}
    params = h["auto_rank"].get("params", field.parameter_count()) if auto and "auto_rank" in h else \
        field.parameter_count()
    summary = {"output": str(out), "bytes": nbytes, "parameters": params,
               "steps": h.get("steps"), "seconds": round(h.get("seconds", 0.0), 3),
               "target_seconds": round(h.get("target_seconds", 0.0), 3),
               **{k: v for k, v in h.get("metrics", {}).items()}}
    progress.done(**summary)
    if args.progress != "json":
        metric = h.get("metric_name", "psnr")
        # the saved model's metric (with a goal: the chosen prefix's, not the fit's last validation)
        value = h.get("metrics", {}).get(metric, h.get(metric, float("nan")))
        print(f"wrote {out} ({nbytes:,} bytes, {params:,} parameters, "
              f"{h.get('steps')} steps in {h.get('seconds', 0):.1f} s; {metric} {value:.4g})",
              file=sys.stdout)
        if hint:
            print(f"finr3d fit: {hint}", file=sys.stderr)
    return 0


#: A plain fit of a 3-D volume that ends below this PSNR (dB, on the value range) says how to ask for more.
HINT_BELOW_DB = 40.0


def _low_rank_hint(target, kind: str, options: dict, auto, history: dict) -> Optional[str]:
    """One line for a plain 3-D volume fit that ended under :data:`HINT_BELOW_DB` because the preset's rank caps
    it (a volume that is not low-rank, such as CT or MRI: the CT-like phantom ends near 29 dB at rank 48), or
    None. The cap is the spectrum's ceiling (:func:`finr3d.volume.hosvd_psnr_bounds`): a short fit of a low-rank
    volume that ends low for want of steps gets no such advice."""
    from finr3d.presets import PRESETS

    psnr = history.get("psnr")
    if (kind != "volume" or auto or {"decomposition", "rank", "basis"} & set(options) or psnr is None
            or "goal_rank" in history  # --target-metric took the rank its goal needs already
            or getattr(target, "preset", None) is not PRESETS["volume"] or len(target.shape) != 3
            or not psnr < HINT_BELOW_DB):
        return None
    from finr3d.volume import SPECTRUM_SAMPLES, hosvd_psnr_bounds

    rank = int(PRESETS["volume"].field["rank"])
    # a sub-lattice (fewer samples per axis) usually shows a higher ceiling than the whole volume: the hint errs
    # toward silence, and costs a fraction of the Gram products of every sample
    _, values = target.dense(max_samples=SPECTRUM_SAMPLES)
    ceiling = hosvd_psnr_bounds(values, [rank + 1], ceiling=True)[rank + 1]  # a Tucker plus a constant
    if ceiling >= HINT_BELOW_DB:
        return None
    return (f"this volume is not low-rank: no Tucker of the preset's rank {rank} can pass {ceiling:.1f} dB on it "
            f"(the fit holds {psnr:.1f}); --target-psnr LEVEL fits the per-mode ranks a level needs (a core of up to 128^3 values) "
            "and says up front whether the level is in reach")
