"""finr3d sweep: quality against size for every rank prefix of a field."""

from __future__ import annotations

HELP = "tabulate rank | params | bytes | quality | decode time for every rank prefix, and plot quality vs bytes"
EPILOG = """\
examples:
  finr3d sweep bunny.finr --reference bunny.obj --plot bunny_sweep.png
  finr3d sweep photo.finr --reference photo.png --ranks 16,32,64,128 --json
"""


def add_arguments(p) -> None:
    p.add_argument("model", help="a .finr file (best fitted with --nested-ranks)")
    p.add_argument("--reference", required=True, help="the original input, to score each rank against")
    p.add_argument("--ranks", help="comma list of ranks (default: powers of two up to the trained rank)")
    p.add_argument("--resolution", type=int, default=128, help="marching-cubes resolution for mesh metrics (default 128)")
    p.add_argument("--plot", help="write a quality-vs-bytes plot (.png)")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.add_argument("--force", action="store_true", help="overwrite the plot if it exists")


def run(args) -> int:
    import os

    import finr3d
    from finr3d.cli._common import check_output, count_bar, print_json
    from finr3d.sweep import default_ranks, plot_sweep, rank_sweep

    plot = check_output(args.plot, {".png", ".svg", ".pdf"}, force=args.force) if args.plot else None
    if not os.path.exists(args.reference):
        raise FileNotFoundError(f"{args.reference}: no such file; check the --reference path")
    field = finr3d.load(args.model)
    ranks = None
    if args.ranks:
        try:
            ranks = [int(r) for r in args.ranks.split(",") if r.strip()]
        except ValueError:
            raise ValueError(f"--ranks must be a comma list of integers, got {args.ranks!r}") from None
        if not ranks or min(ranks) < 1:
            raise ValueError(f"--ranks must be positive integers, got {args.ranks!r}")
    opts = {"resolution": args.resolution} if field.kind == "sdf" else {}
    with count_bar(len(ranks) if ranks else len(default_ranks(field)), "ranks", "sweep") as bar:
        rows = rank_sweep(field, args.reference, ranks=ranks, callback=lambda info: bar.update(info["index"] - bar.n),
                          **opts)
        bar.update(bar.total - bar.n)
    metric = "chamfer_l1" if field.kind == "sdf" else "psnr"
    if plot is not None:
        plot_sweep(rows, plot, metric=metric)
    if args.json:
        print_json(rows)
        return 0
    extra = ["iou", "chamfer_l1"] if field.kind == "sdf" else ["psnr", "ssim"]
    head = f"{'rank':>5} {'params':>10} {'fp32 B':>10} {'fp16 B':>10} {'int8 B':>10} " + \
        " ".join(f"{k:>11}" for k in extra) + f" {'decode s':>9}"
    print(head)
    for row in rows:
        print(f"{row['rank']:>5} {row['params']:>10,} {row['bytes_fp32']:>10,} {row['bytes_fp16']:>10,} "
              f"{row['bytes_int8']:>10,} " + " ".join(f"{row.get(k, float('nan')):>11.4g}" for k in extra)
              + f" {row['decode_seconds']:>9.3f}")
    if plot is not None:
        print(f"wrote {plot}")
    return 0
