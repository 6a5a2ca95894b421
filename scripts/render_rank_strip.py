"""Render the rank-preview strip of the Blender add-on: one fit, four ranks side by side.

    python scripts/render_rank_strip.py                       # spot.obj, ~20 s fit, docs/rank_strip.png
    python scripts/render_rank_strip.py --finr spot.finr      # reuse a fitted field
    python scripts/render_rank_strip.py --mesh cow.obj --ranks 4 8 16 32 --seconds 30

Headless (bpy from PyPI, Workbench engine). The field is fitted once with
nested ranks, so that every rank prefix is a model; each panel is the add-on's
own rank preview (``bpy.ops.finr3d.import_field`` then
``bpy.ops.finr3d.preview_rank``), captioned with the file size of that
prefix at the chosen quantization and its Chamfer distance to the input
(``finr3d.evaluate``, as a fraction of the input's bounding-box diagonal).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FINR3D_SHARED", ROOT.parent / "shared"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mesh", type=Path, default=SHARED / "assets" / "meshes" / "spot.obj", help="mesh to fit")
    p.add_argument("--finr", type=Path, help="an already fitted .finr of --mesh (skips the fit)")
    p.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16, 32])
    p.add_argument("--seconds", type=float, default=20.0, help="fit budget (default 20)")
    p.add_argument("--decomposition", default="cp")
    p.add_argument("--resolution", type=int, default=160, help="preview marching-cubes resolution")
    p.add_argument("--quantization", default="int8", help="quantization of the bytes in the captions")
    p.add_argument("--size", type=int, default=360, help="pixels per panel")
    p.add_argument("--y-up", action=argparse.BooleanOptionalAction, default=True,
                   help="the mesh is Y-up (OBJ convention): stand it up for the camera")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (fitted .finr, renders)")
    p.add_argument("-o", "--output", type=Path, default=ROOT / "docs" / "rank_strip.png")
    return p.parse_args(argv)


def fit_field(args, folder: Path) -> Path:
    import finr3d

    t0 = time.perf_counter()
    field = finr3d.fit(str(args.mesh), kind="sdf", decomposition=args.decomposition, rank=max(args.ranks),
                       seconds=args.seconds, nested_ranks=True)
    path = folder / f"{args.mesh.stem}.finr"
    field.save(path, quantization="fp32")
    print(f"fitted {args.mesh.name} in {time.perf_counter() - t0:.1f} s: {field.history.get('metrics')}")
    return path


def setup_scene(bpy, size: int):
    scene = bpy.context.scene
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.film_transparent = True  # composited onto white by caption()
    scene.display.shading.light = "STUDIO"
    scene.display.shading.color_type = "SINGLE"
    scene.display.shading.single_color = (0.82, 0.62, 0.42)
    scene.display.shading.show_cavity = True
    scene.display.shading.show_specular_highlight = True
    scene.view_settings.view_transform = "Standard"
    cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    scene.collection.objects.link(cam)
    scene.camera = cam
    return scene, cam


def frame(cam, obj):
    """Aim the camera at the object's world bounding box from the front-left, slightly above."""
    from mathutils import Vector

    corners = [obj.matrix_world @ Vector(c) for c in obj.bound_box]
    lo = Vector([min(c[i] for c in corners) for i in range(3)])
    hi = Vector([max(c[i] for c in corners) for i in range(3)])
    center, radius = (lo + hi) / 2, (hi - lo).length / 2
    direction = Vector((1.0, 0.8, 0.45)).normalized()
    cam.data.lens = 50
    distance = radius / 0.40
    cam.location = center + direction * distance
    cam.rotation_euler = (-direction).to_track_quat("-Z", "Y").to_euler()


def caption(image_path: Path, lines: list[str], out_size: int):
    from PIL import Image, ImageDraw, ImageFont

    rgba = Image.open(image_path).convert("RGBA").resize((out_size, out_size), Image.LANCZOS)
    pad = 66
    canvas = Image.new("RGB", (out_size, out_size + pad), "white")
    canvas.paste(rgba, (0, 0), rgba)
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.truetype("DejaVuSans.ttf", 17)
        small = ImageFont.truetype("DejaVuSans.ttf", 14)
    except OSError:
        font = small = ImageFont.load_default()
    y = out_size + 4
    for i, line in enumerate(lines):
        f = font if i == 0 else small
        w = draw.textlength(line, font=f)
        draw.text(((out_size - w) / 2, y), line, fill=(20, 20, 20), font=f)
        y += 22 if i == 0 else 17
    return canvas


def main(argv=None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="finr3d-strip-"))
    for var in ("BLENDER_USER_RESOURCES", "BLENDER_USER_CONFIG", "BLENDER_USER_SCRIPTS"):
        os.environ.setdefault(var, str(tmp / "blender" / var.lower()))
    import bpy  # after the BLENDER_USER_* variables

    import finr3d

    sys.path.insert(0, str(ROOT))
    import blender_addon

    finr_path = args.finr or fit_field(args, tmp)
    field = finr3d.load(finr_path)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    blender_addon.register()
    scene, cam = setup_scene(bpy, args.size * 2)
    props = scene.finr3d
    props.resolution = args.resolution
    props.quantization = args.quantization
    props.preview_rank = max(args.ranks)
    assert bpy.ops.finr3d.import_field(filepath=str(finr_path)) == {"FINISHED"}
    obj = bpy.context.active_object
    if args.y_up:
        obj.rotation_euler = (1.5707963, 0.0, 0.0)
    bpy.context.view_layer.update()
    frame(cam, obj)

    panels = []
    for r in args.ranks:
        props.preview_rank = r
        t0 = time.perf_counter()
        assert bpy.ops.finr3d.preview_rank() == {"FINISHED"}
        seconds = time.perf_counter() - t0
        nbytes = field.save(tmp / f"r{r}.finr", rank=r, quantization=args.quantization)
        scores = finr3d.evaluate(field, str(args.mesh), rank=r, resolution=args.resolution)
        scene.render.filepath = str(tmp / f"r{r}.png")
        bpy.ops.render.render(write_still=True)
        print(f"rank {r}: {nbytes:,} bytes, chamfer_l1 {scores['chamfer_l1']:.5f}, iou {scores['iou']:.3f}, "
              f"preview {seconds:.2f} s; {props.info}")
        panels.append(caption(tmp / f"r{r}.png",
                              [f"rank {r}", f"{nbytes / 1000:.1f} KB ({args.quantization})",
                               f"Chamfer {100 * scores['chamfer_l1']:.2f}% of diagonal"], args.size))
    blender_addon.unregister()

    from PIL import Image

    strip = Image.new("RGB", (args.size * len(panels), panels[0].height), "white")
    for i, panel in enumerate(panels):
        strip.paste(panel, (i * args.size, 0))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    strip.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(args.output, optimize=True)
    print(f"wrote {args.output} ({args.output.stat().st_size / 1000:.0f} KB)")
    if args.keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
