"""finr3d decode: turn a .finr field back into an image, video or array."""

from __future__ import annotations

HELP = "decode a .finr field to an image (.png), video (.mp4, or a folder of .png frames) or array (.npy)"
EPILOG = """\
examples:
  finr3d decode photo.finr -o photo.png
  finr3d decode photo.finr -o photo_r64.png --rank 64
  finr3d decode volume.finr -o volume.npy --resolution 256
  finr3d decode clip.finr -o clip.mp4
"""


def add_arguments(p) -> None:
    p.add_argument("model", help="a .finr file")
    p.add_argument("-o", "--output", required=True, help="output file: .png (images), .mp4 (video), .npy (any)")
    p.add_argument("--rank", type=int, help="decode the rank-R prefix model (default: all ranks)")
    p.add_argument("--resolution", type=int,
                   help="samples per axis (default: the fitted target's own shape)")
    p.add_argument("--force", action="store_true", help="overwrite the output file if it exists")
    p.add_argument("--max-memory", metavar="SIZE",
                   help="refuse a decode estimated to need more than SIZE, e.g. 8G "
                        "(default: $FINR3D_MAX_MEMORY, else 2G)")


def run(args) -> int:
    import os

    import numpy as np

    import finr3d
    from finr3d.cli._common import check_output
    from finr3d.decoding import decode_field

    from finr3d.header_schema import memory_limit

    out = check_output(args.output, {".png", ".npy", ".mp4", ".webm", ".avi", ".gif"}, force=args.force)
    memory_limit(args.max_memory)  # a malformed size is refused before the model is read
    if not os.path.exists(args.model):
        raise FileNotFoundError(f"{args.model}: no such file; check the path")
    field = finr3d.load(args.model)
    frames_dir = out.with_suffix("")
    if field.kind == "video" and out.suffix.lower() == ".png" and frames_dir.is_dir() and any(frames_dir.iterdir()) \
            and not args.force:
        raise FileExistsError(f"{frames_dir}/ holds files; video frames would go there; pass --force to overwrite")
    written = decode_field(field, out, rank=args.rank, resolution=args.resolution, max_memory=args.max_memory)
    print(f"wrote {written}")
    return 0
