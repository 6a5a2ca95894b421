"""finr3d info: what a .finr file holds."""

from __future__ import annotations

HELP = "show what a .finr file holds: kind, decomposition, ranks, sizes, fit metrics"
EPILOG = """\
examples:
  finr3d info bunny.finr
  finr3d info bunny.finr --json
"""


def add_arguments(p) -> None:
    p.add_argument("model", help="a .finr file")
    p.add_argument("--json", action="store_true", help="print the whole header as JSON")


def run(args) -> int:
    import os

    from finr3d import codec
    from finr3d.cli._common import print_json

    if not os.path.exists(args.model):
        raise FileNotFoundError(f"{args.model}: no such file; check the path")
    meta = codec.describe_file(args.model)  # full read of either version: verifies the checksum too
    if args.json:
        print_json({"file_bytes": os.path.getsize(args.model), **meta})
        return 0
    target = meta.get("target") or {}
    hist = meta.get("history") or {}
    print(f"{args.model}: {os.path.getsize(args.model):,} bytes")
    print(f"  kind            {meta.get('kind')}  shape {target.get('shape')}  channels {meta.get('channels')}")
    print(f"  decomposition   {meta.get('decomposition')}  ranks {meta.get('ranks')}  modes {meta.get('modes')}")
    print(f"  backbone        {meta.get('backbone')}  parameters {meta.get('parameters'):,}  "
          f"(format v{meta.get('format_version')}, {meta.get('storage')})")
    if meta.get("section_bytes"):
        print("  sections        " + "  ".join(f"{k} {v:,}" for k, v in meta["section_bytes"].items()))
    for k, v in (meta.get("parts") or {}).items():
        print(f"    {k:<28} {v:>10,}")
    metrics = hist.get("metrics") or {}
    if metrics:
        print("  fit metrics     " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    if hist.get("seconds") is not None:
        print(f"  fit             {hist.get('steps')} steps, {hist.get('seconds', 0):.1f} s on {hist.get('device')}")
    if target.get("source"):
        print(f"  source          {target.get('source')}")
    print(f"  finr3d          {meta.get('library_version')}")
    return 0
