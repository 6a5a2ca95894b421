"""finr3d demo: the main job on a built-in shape, end to end in about a minute."""

from __future__ import annotations

HELP = "fit the built-in procedural shape, extract its mesh, and print where the outputs went and their metrics"
DESCRIPTION = """\
Run the whole pipeline on a shape finr3d generates itself (a rounded block with a
bored hole and a torus handle, genus 2):

  mesh -> signed distance field -> factorized field (.finr) -> marching cubes -> mesh + metrics

Outputs go to --out (default ./finr3d_demo). Takes about a minute on 2 CPU cores.
"""


def add_arguments(p) -> None:
    p.add_argument("--out", default="finr3d_demo", help="output folder (default ./finr3d_demo)")
    p.add_argument("--steps", type=int, default=1100,
                   help="fit budget in steps (default 1100: 770 distilling the closed-form start, 330 refining; "
                        "about 30 s on 2 cores). A step budget gives the same result on a busy machine, only later")
    p.add_argument("--seconds", type=float, help="fit budget in seconds instead of steps")
    p.add_argument("--resolution", type=int, default=256, help="marching-cubes resolution of the output mesh (default 256)")
    p.add_argument("--progress", default="bar", choices=["bar", "json", "none"], help="progress display (default bar)")
    p.add_argument("--force", action="store_true", help="overwrite earlier demo outputs in --out")


def run(args) -> int:
    import time
    from pathlib import Path

    import finr3d
    from finr3d.cli._common import Progress, check_output
    from finr3d.meshing import save_mesh
    from finr3d.shapes import shape_mesh

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    src = check_output(out / "gizmo_input.ply", {".ply"}, force=True)  # regenerated every run
    model = check_output(out / "gizmo.finr", {".finr"}, force=args.force)
    mesh_out = check_output(out / "gizmo_fitted.ply", {".ply"}, force=args.force)
    shape_mesh("gizmo").export(src)
    budget = {"seconds": args.seconds} if args.seconds is not None else {"steps": args.steps, "distill_fraction": 0.7}
    progress = Progress(args.progress, total_seconds=args.seconds, total_steps=None if args.seconds else args.steps)
    t0 = time.perf_counter()
    try:
        field = finr3d.fit(src, kind="sdf", **budget,
                           callback=progress if args.progress != "none" else None)
    finally:
        progress.close()
    nbytes = field.save(model, overwrite=True)
    t1 = time.perf_counter()
    mesh = field.to_mesh(resolution=args.resolution)
    t_mesh = time.perf_counter() - t1
    save_mesh(mesh, mesh_out, overwrite=True)
    report = finr3d.evaluate(field, src, resolution=args.resolution)
    print(f"input mesh    {src}")
    print(f"fitted field  {model}  ({nbytes:,} bytes, {field.parameter_count():,} parameters, "
          f"{field.config.decomposition} rank {field.config.rank}, fit {field.history['seconds']:.1f} s "
          f"+ ground truth {field.history.get('target_seconds', 0):.1f} s)")
    print(f"output mesh   {mesh_out}  ({len(mesh.vertices):,} vertices, marching cubes {args.resolution}^3 "
          f"in {t_mesh:.2f} s)")
    shown = ("iou", "chamfer_l1", "hausdorff95", "normal_consistency", "fscore_0.5", "fscore_1")
    print("metrics       " + "  ".join(f"{k} {report[k]:.4g}" for k in shown if k in report)
          + "   (lengths: fraction of the bounding-box diagonal)")
    print(f"total         {time.perf_counter() - t0:.1f} s")
    return 0
