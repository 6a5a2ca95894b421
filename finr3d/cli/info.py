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

    from finr3d import codec, header_schema
    from finr3d.cli._common import print_json

    if not os.path.exists(args.model):
        raise FileNotFoundError(f"{args.model}: no such file; check the path")
    ff = codec.read_field(args.model)  # full read of either version: verifies the checksum too
    meta = codec.describe_field(ff)
    if ff.weights is not None:  # network weights (version 1, or an editable version-2 file)
        header, tensors = ff.weights
        header_schema.validate_field_meta(header, partial=True)  # what is there must be usable
        missing = [p[len("missing "):] for p in header_schema.field_problems(header) if p.startswith("missing ")]
        n_tensors, n_values = len(tensors), sum(int(t.size) for t in tensors.values())
    else:  # a compact file: the FIELD section was validated by the reader
        missing, n_tensors, n_values = [], 1 + len(ff.compact.coefficients), int(meta["parameters"])
    if args.json:
        print_json({**meta, "file_bytes": os.path.getsize(args.model)})
        return 0
    target = meta.get("target") or {}
    hist = meta.get("history") or {}
    print(f"{args.model}: {os.path.getsize(args.model):,} bytes, {n_tensors} tensors, {n_values:,} values "
          f"(format v{meta.get('format_version')}, {meta.get('storage')})")
    if meta.get("section_bytes"):
        print("  sections        " + "  ".join(f"{k} {v:,}" for k, v in meta["section_bytes"].items()))
    if missing:
        print(f"  not a complete finr3d field: the header lacks {', '.join(missing)}")
    if meta.get("kind") is not None or target.get("shape") is not None or meta.get("channels") is not None:
        channels = meta.get("channels")
        layered = meta.get("kind") == "sdf" and isinstance(channels, int) and channels > 1
        extra = " (SDF layers: parts that interpenetrate)" if layered else ""
        extra += "  open mesh (sign jumps trimmed)" if meta.get("kind") == "sdf" and target.get("trim") else ""
        print(f"  kind            {meta.get('kind')}  shape {target.get('shape')}  channels {meta.get('channels')}"
              f"{extra}")
    if meta.get("decomposition") is not None:
        print(f"  decomposition   {meta.get('decomposition')}  ranks {meta.get('ranks')}  modes {meta.get('modes')}")
    if meta.get("backbone") is not None or meta.get("parameters") is not None:
        parameters = meta.get("parameters")
        print(f"  backbone        {meta.get('backbone')}  parameters "
              f"{'?' if parameters is None else format(parameters, ',')}")
    for k, v in (meta.get("parts") or {}).items():
        print(f"    {k:<28} {v:>10,}")
    metrics = {k: v for k, v in (hist.get("metrics") or {}).items() if v is not None}
    if metrics:
        print("  fit metrics     " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    if hist.get("seconds") is not None:
        print(f"  fit             {hist.get('steps')} steps, {hist['seconds']:.1f} s on {hist.get('device')}")
    if target.get("source"):
        print(f"  source          {target.get('source')}")
    if meta.get("library_version") is not None:
        print(f"  finr3d          {meta.get('library_version')}")
    return 0
