"""Pieces shared by the command modules: output paths and progress reporting."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def check_output(path, suffixes, *, force: bool) -> Path:
    """Validate an output path: known suffix, writable folder, no silent overwrite."""
    out = Path(path)
    if out.suffix.lower() not in suffixes:
        raise ValueError(f"{out.name}: unsupported output type {out.suffix or '(none)'!r}; use one of {', '.join(sorted(suffixes))}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.exists():
        raise FileNotFoundError(f"{parent}: the output folder does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"{parent}: the output folder is not writable")
    if out.is_dir():
        raise IsADirectoryError(f"{out} is a directory; give a file name such as {out / ('out' + out.suffix)}")
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
    from finr3d.atomic_files import check_writable

    check_writable(out)  # creates and removes a temporary: a folder we cannot write fails now, not after the work
    return out


class Progress:
    """Progress as a tqdm bar (``bar``), JSON lines on stdout (``json``) or nothing."""

    def __init__(self, mode: str, total_seconds=None, total_steps=None):
        self.mode = mode
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            total = total_seconds if total_seconds is not None else total_steps
            unit = "s" if total_seconds is not None else "step"
            self.bar = tqdm(total=total, unit=unit, file=sys.stderr, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt}{unit} [{elapsed}<{remaining}{postfix}]")
            self.by_time = total_seconds is not None
        self.cancelled = False

    def __call__(self, info: dict):
        if self.mode == "json":
            line = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in info.items()}
            print(json.dumps(line), flush=True)
        elif self.bar is not None:
            target = info["elapsed"] if self.by_time else info.get("step", 0)
            # distillation steps count against the step budget too: the bar moves through that phase
            if info.get("phase") in ("fit", "distill") or self.by_time:
                self.bar.n = min(self.bar.total or target, target)
            post = {"loss": f"{info.get('loss', float('nan')):.3g}"}
            for key in ("psnr", "iou"):
                if key in info and info[key] is not None:
                    post[key] = f"{info[key]:.3f}"
            self.bar.set_postfix(post, refresh=False)
            self.bar.refresh()
        return True

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def done(self, **summary):
        self.close()
        if self.mode == "json":
            print(json.dumps({"done": True, **summary}), flush=True)


def count_bar(total: int, unit: str, desc: str):
    """A tqdm bar on stderr for ``total`` items of work (``mesh`` planes, ``sweep`` ranks); hidden off a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, unit=f" {unit}", desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False,
                disable=None)


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))
