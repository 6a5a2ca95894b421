"""finr3d batch: fit a library of meshes, volumes, images and clips, locally or on a Ray cluster."""

from __future__ import annotations

HELP = "fit many meshes, volumes, images and clips into a folder of .finr files (local pool or Ray)"
DESCRIPTION = """\
Fit every asset the inputs name, each with its kind's preset plus the fit
options given, into OUT_DIR/<name>.finr, and record each one as it ends in
OUT_DIR/manifest.jsonl (JSON lines: input and sha256, kind, status, bytes,
parameters, metric, fit seconds, worker, finr3d version).

Inputs: folders (searched recursively), globs (quote them; ** recurses), .txt
files listing paths, or files. Assets whose stems clash are written as
<stem>-<8 hex of the path>.finr. Options for one kind (--resolution, --sign,
--target-chamfer: meshes; --target-psnr: the others; --frames, --stride,
--resize, --layout: video) reach only the assets of that kind.

A broken asset is recorded with its error and the rest go on; a worker that
dies is retried (--retries); Ctrl-C stops cleanly, keeping what finished;
--resume then does only the rest.
"""
EPILOG = """\
examples:
  finr3d batch assets/ -o out/ --seconds 60
  finr3d batch 'scans/**/*.nii.gz' list.txt -o out/ --budget-kb 64 --workers 4
  finr3d batch assets/ -o out/ --seconds 60 --resume          (after a crash: only the rest)
  finr3d batch assets/ -o out/ --engine ray                     (a local Ray)
  finr3d batch /data/lib -o /data/out --engine ray --ray-address auto --gpus-per-task 1

exit codes: 0 every asset ok, 3 some asset failed (see the manifest), 2 bad usage or
input, 130 interrupted (the manifest keeps what finished), 1 unexpected failure.
"""

#: ``finr3d batch``'s exit code when the batch ran but at least one asset failed or was cancelled.
EXIT_ASSET_FAILED = 3


def add_arguments(p) -> None:
    from finr3d.batch import add_fit_arguments

    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="folders (recursive), globs, .txt lists of paths, or mesh/volume/image/video files")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR",
                   help="the folder for the .finr files and manifest.jsonl (created if missing)")
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local: a process pool on this machine; ray: Ray tasks (pip install 'finr3d[ray]') "
                        "(default local)")
    p.add_argument("--workers", type=int,
                   help="local: worker processes; ray without --ray-address: the local Ray's CPUs (default: the cores)")
    p.add_argument("--threads", type=int, help="torch threads per local worker (default: cores / workers)")
    p.add_argument("--retries", type=int, default=2,
                   help="tries again for an asset whose worker died (Ray: max_retries) (default 2)")
    p.add_argument("--resume", action="store_true",
                   help="skip inputs whose content hash and settings match an ok entry of OUT_DIR's manifest")
    p.add_argument("--force", action="store_true", help="start a new manifest and overwrite existing outputs")
    p.add_argument("--progress", default="bar", choices=["bar", "json", "none"],
                   help="a bar over assets with ETA on stderr, one JSON line per asset event on stdout, "
                        "or none (default bar)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    r = p.add_argument_group("Ray (--engine ray)")
    r.add_argument("--ray-address", metavar="auto|HOST:PORT",
                   help="join a running cluster (default: start a local Ray)")
    r.add_argument("--cpus-per-task", type=float, default=1, help="CPUs per fit (num_cpus) (default 1)")
    r.add_argument("--gpus-per-task", type=float, default=0,
                   help="GPUs per fit (num_gpus): 1 gives one fit per GPU (default 0)")
    r.add_argument("--ray-inputs", default="path", choices=["path", "store"],
                   help="path: workers read inputs where they are (shared filesystem); store: the inputs go "
                        "through Ray's object store (default path)")
    # finr3d fit's own options, as it defines them (a group per topic, with its help)
    fit = p.add_argument_group("fit options (as for finr3d fit; see finr3d fit --help)")
    p.set_defaults(_fit_defaults=add_fit_arguments(p, fit))


def run(args) -> int:
    import json
    import sys

    from finr3d.batch import BatchInterrupted, batch, summarize

    options = {k: getattr(args, k) for k, default in args._fit_defaults.items() if getattr(args, k) != default}
    try:
        rows = batch(args.inputs, args.output, engine=args.engine, workers=args.workers, threads=args.threads,
                     retries=args.retries, resume=args.resume, force=args.force, ray_address=args.ray_address,
                     cpus_per_task=args.cpus_per_task, gpus_per_task=args.gpus_per_task,
                     ray_inputs=args.ray_inputs, progress=args.progress, **options)
        code = 0
    except BatchInterrupted as stop:
        rows, code = stop.rows, 130
        print(f"finr3d batch: interrupted; the manifest in {args.output} keeps what finished "
              "(run again with --resume for the rest)", file=sys.stderr)
    summary = summarize(rows)
    if args.json:
        print(json.dumps({"output": args.output, **summary, "rows": rows}, indent=2, default=str))
    elif args.progress == "json":
        print(json.dumps({"event": "summary", **summary}, default=str), flush=True)
    else:
        _print_table(summary, args.output)
    if code == 0 and any(r["status"] != "ok" for r in rows):
        code = EXIT_ASSET_FAILED
    return code


def _print_table(summary: dict, out_dir) -> None:
    import os

    from finr3d.batch import MANIFEST_NAME

    head = f"{'kind':<8}{'ok':>6}{'error':>7}{'cancelled':>11}{'resumed':>9}{'bytes':>14}  {'mean metric':<18}{'mean fit s':>10}"
    print(head)
    for kind, t in [*summary["by_kind"].items(), ("total", summary["total"])]:
        metric = "  ".join(f"{k} {v:.4g}" for k, v in t["metric"].items())
        fit = "" if t["fit_seconds"] is None else f"{t['fit_seconds']:.1f}"
        print(f"{kind:<8}{t['ok']:>6}{t['error']:>7}{t['cancelled']:>11}{t['resumed']:>9}{t['bytes']:>14,}  "
              f"{metric:<18}{fit:>10}")
    for failed in summary["failed"]:
        print(f"{failed['status']}: {failed['input']}: {failed['error']}")
    print(f"manifest: {os.path.join(out_dir, MANIFEST_NAME)}")
