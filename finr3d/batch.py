"""Batch fitting of asset libraries: many inputs, one ``.finr`` each, and a manifest.

``finr3d.batch(inputs, out_dir, engine="local"|"ray", **fit_options)`` (the CLI
is ``finr3d batch``) collects meshes, volumes, images and clips from folders
(recursively), globs and text files of paths, fits each one with its kind's
preset plus the fit options given, and writes ``OUT_DIR/<name>.finr``.

Work goes out through a standard engine, never a scheduler of our own:

- ``engine="local"``: a :class:`concurrent.futures.ProcessPoolExecutor` sized to
  the cores, with ``cores // workers`` torch threads per worker so the pool
  does not oversubscribe the machine.
- ``engine="ray"``: one Ray task per asset, with declared resources
  (``num_cpus``, ``num_gpus``) and Ray's ``max_retries`` for dead workers. With
  no address a local Ray starts; ``ray_address="auto"`` or ``"HOST:PORT"`` joins
  a cluster. Inputs travel by path (a filesystem the workers share) or through
  Ray's object store (``ray_inputs="store"``), never inside the task's pickled
  arguments.

Each fit runs what ``finr3d fit`` runs (:func:`finr3d.cli.fit.run`, so the
automatic rank choice of ``budget_kb`` / ``target_psnr`` / ``target_chamfer``
and every fit flag behave as there) into a temporary folder on the worker; the
worker returns the file's bytes and the driver alone writes outputs and the
manifest, so workers need no access to ``OUT_DIR``.

The manifest ``OUT_DIR/manifest.jsonl`` gets one JSON line per asset as it
ends (ok, error or cancelled). Each line is one ``write()`` on an ``O_APPEND``
descriptor, then fsynced: it is either whole or, after a crash mid-write, an
unterminated tail that readers skip and the next ``--resume`` cuts off. An
output is in place before its line is written, so an ``ok`` line always names
a complete file. ``resume=True`` skips inputs whose content hash, kind and
settings match an ``ok`` line whose file still reads.

Ctrl-C (SIGINT) in the driver stops the batch: running fits are ended,
finished outputs and their lines stay, the rest are recorded ``cancelled``,
no partial ``.finr`` is left, and :class:`BatchInterrupted` (a
``KeyboardInterrupt``) carries the rows. A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import glob
import hashlib
import io
import json
import math
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import types
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Union

from finr3d import __version__
from finr3d.errors import InputError

__all__ = ["batch", "collect_inputs", "read_manifest", "fit_job", "BatchInterrupted", "MANIFEST_NAME",
           "fit_option_names"]

MANIFEST_NAME = "manifest.jsonl"
LOCK_NAME = ".finr3d-batch.lock"
#: A file with one of these suffixes lists inputs, one path (or folder, or glob) a line; ``#`` starts a comment.
LIST_SUFFIXES = {".txt", ".lst", ".list"}
STATUSES = ("ok", "error", "cancelled")
_GLOB_CHARS = set("*?[")
#: ``finr3d fit`` arguments that batch sets itself (one per asset) or replaces with its own.
_BATCH_OWN = {"help", "input", "output", "kind", "progress", "force", "threads"}
#: Fit options that apply to some kinds only; an option not named here applies to every kind.
#: (``finr3d fit`` rejects them for other kinds; in a mixed batch they reach only the assets they fit.)
KIND_OPTIONS = {
    "resolution": {"sdf"}, "sign": {"sdf"}, "profile": {"sdf"}, "layers": {"sdf"}, "detail": {"sdf"}, "target_chamfer": {"sdf"},
    "target_psnr": {"image", "volume", "video"},
    "frames": {"video"}, "stride": {"video"}, "resize": {"video"}, "layout": {"video"},
}


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a batch; ``rows`` holds the manifest rows of this run (finished and cancelled)."""

    def __init__(self, rows: list[dict]):
        super().__init__("batch interrupted")
        self.rows = rows


# ----------------------------------------------------------------------------- fit options


class _FitArguments:
    """Replays ``finr3d.cli.fit.add_arguments`` onto another parser, minus the arguments batch sets itself.

    It stands in for the parser (and its argument groups) and forwards every
    ``add_argument`` whose destination is not in ``skip``, recording each
    forwarded destination and its default. Top-level arguments go to
    ``target`` (a parser or one of its groups), new groups to ``root``.
    """

    def __init__(self, target, skip=frozenset(), defaults=None, root=None):
        self._target, self._skip, self._root = target, skip, root if root is not None else target
        self.defaults = {} if defaults is None else defaults

    def add_argument(self, *names, **kwargs):
        dest = kwargs.get("dest")
        if dest is None:
            longs = [n for n in names if n.startswith("--")]
            dest = (longs[0] if longs else names[0]).lstrip("-").replace("-", "_")
        if dest in self._skip:
            return None
        self.defaults[dest] = kwargs.get("default")
        return self._target.add_argument(*names, **kwargs)

    def add_argument_group(self, *args, **kwargs):
        return _FitArguments(self._root.add_argument_group(*args, **kwargs), self._skip, self.defaults, self._root)

    def add_mutually_exclusive_group(self, *args, **kwargs):
        return _FitArguments(self._target.add_mutually_exclusive_group(*args, **kwargs), self._skip,
                             self.defaults, self._root)


def add_fit_arguments(parser, group=None) -> dict:
    """Add ``finr3d fit``'s options (all but input, output, kind, progress, force, threads) to ``parser``.

    Its ungrouped options go to ``group`` (default: the parser), its groups stay groups.
    Returns ``{dest: default}`` of the options added.
    """
    from finr3d.cli import fit as fit_cli

    proxy = _FitArguments(group if group is not None else parser, _BATCH_OWN, root=parser)
    fit_cli.add_arguments(proxy)
    return proxy.defaults


def _fit_parser():
    import argparse

    from finr3d.cli import fit as fit_cli

    parser = argparse.ArgumentParser(prog="finr3d fit", add_help=False)
    proxy = _FitArguments(parser)
    fit_cli.add_arguments(proxy)
    return parser, proxy.defaults


def fit_option_names() -> list[str]:
    """The fit options :func:`batch` accepts: ``finr3d fit``'s flags as keywords (``seconds``, ``budget_kb``...)."""
    _, defaults = _fit_parser()
    return sorted(set(defaults) - _BATCH_OWN)


def _check_fit_options(options: dict) -> dict:
    """Validate option names and values once, before any asset is planned."""
    valid = fit_option_names()
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise InputError(f"unknown fit option(s) {unknown}; valid: {valid}")
    options = {k: v for k, v in options.items() if v is not None}
    for key in ("frames", "resize"):  # the CLI's text forms, from the tuples a Python caller may pass
        value = options.get(key)
        if isinstance(value, (tuple, list)):
            sep = ":" if key == "frames" else "x"
            options[key] = sep.join("" if v is None else str(int(v)) for v in value)
    targets = [k for k in ("budget_kb", "target_psnr", "target_chamfer") if k in options]
    if len(targets) > 1:
        raise InputError(f"give only one of budget_kb, target_psnr and target_chamfer, got {targets}")
    import finr3d

    for config in (finr3d.FieldConfig, finr3d.FitConfig):
        names = {f.name for f in dataclasses.fields(config)}
        config(**{k: v for k, v in options.items() if k in names}).validate()
    return options


def _settings_for(kind: Optional[str], options: dict) -> dict:
    # an on/off flag at its default (editable=False, detail=False from the CLI) is no setting: the API and the
    # CLI then agree on resume
    return {k: v for k, v in options.items()
            if kind in KIND_OPTIONS.get(k, (kind,)) and not (k in _OFF_FLAGS and v is False)}


#: ``finr3d fit`` flags that are off unless given (``store_true``)
_OFF_FLAGS = ("editable", "detail")


# ----------------------------------------------------------------------------- inputs


@dataclasses.dataclass
class _Asset:
    path: Path
    kind: Optional[str] = None
    name: str = ""
    sha256: Optional[str] = None
    error: Optional[str] = None  # found while planning: the asset is recorded without a fit


def _kind(path: Path) -> str:
    from finr3d.targets import detect_kind

    return detect_kind(path)


def _has_kind(path: Path) -> bool:
    try:
        _kind(path)
        return True
    except InputError:
        return False


def _walk(folder: Path, skip: set[Path]) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (Path(root) / d).resolve() not in skip)
        for name in sorted(files):
            path = Path(root) / name
            if not name.startswith(".") and path.suffix.lower() not in LIST_SUFFIXES and _has_kind(path):
                found.append(path)
    return found


def _expand(entry: str, base: Optional[Path], skip: set[Path], *, listed: bool, depth: int = 0) -> list[Union[Path, _Asset]]:
    text = os.path.expanduser(entry)
    path = Path(text) if base is None or os.path.isabs(text) else base / text
    if path.is_dir():
        return _walk(path, skip)
    if not path.exists() and _GLOB_CHARS & set(text):
        matches = sorted(glob.glob(str(path), recursive=True))
        if not matches:
            if listed:
                return [_Asset(path, error=f"{entry}: the pattern matches nothing")]
            raise InputError(f"{entry}: the pattern matches nothing; check it (quote it so the shell leaves ** to finr3d)")
        out = []
        for m in matches:
            p = Path(m)
            if skip & {p.resolve(), *p.resolve().parents}:
                continue
            out.extend(_walk(p, skip) if p.is_dir() else [p] if _has_kind(p) else [])
        return out
    if not path.exists():
        if listed:
            return [_Asset(path, error=f"{path}: no such file")]
        raise FileNotFoundError(f"{entry}: no such file or folder; check the path")
    if path.suffix.lower() in LIST_SUFFIXES:
        if depth > 4:
            raise InputError(f"{path}: lists nest more than 4 deep; flatten them")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: cannot read the list of inputs ({exc})") from None
        out = []
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                out.extend(_expand(line, path.parent, skip, listed=True, depth=depth + 1))
        return out
    return [path]  # named on its own: an asset even if its kind is unknown (recorded as an error)


def _stem(path: Path) -> str:
    name = path.name
    for double in (".nii.gz",):
        if name.lower().endswith(double):
            return name[: -len(double)]
    return path.stem or name


def _name_assets(assets: list[_Asset]) -> None:
    """``<stem>``, or ``<stem>-<8 hex of the absolute path>`` for every asset whose stem is shared.

    Stable: a name depends on the asset's own path and on whether its stem
    clashes, not on the order of the inputs. Stems compare case-insensitively
    (case-insensitive filesystems).
    """
    counts = collections.Counter(_stem(a.path).lower() for a in assets)
    for a in assets:
        stem = _stem(a.path)
        a.name = stem if counts[stem.lower()] == 1 else f"{stem}-{hashlib.sha1(str(a.path).encode()).hexdigest()[:8]}"


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def collect_inputs(inputs: Iterable, *, exclude: Iterable = ()) -> list[Path]:
    """The asset files ``inputs`` name, in order, each once.

    Parameters
    ----------
    inputs : iterable of str or path
        Folders (searched recursively for files whose kind is known; hidden
        files and folders skipped), globs (``**`` recurses), text files of paths
        (``.txt``: one path, folder or glob a line, relative to the list's
        folder; ``#`` comments), or files.
    exclude : iterable of paths
        Folders never searched (the output folder).

    Returns
    -------
    list of Path
        Absolute paths. A missing path or empty glob named directly raises;
        inside a list they are returned and :func:`batch` records them as errors.
    """
    return [a.path if isinstance(a, _Asset) else a for a in _collect(inputs, exclude)]


def _collect(inputs, exclude) -> list[Union[Path, _Asset]]:
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    skip = {Path(p).resolve() for p in exclude}
    seen, out = set(), []
    for entry in inputs:
        for item in _expand(os.fspath(entry), None, skip, listed=False):
            path = (item.path if isinstance(item, _Asset) else item).absolute()
            key = os.path.realpath(path)
            if key in seen:
                continue
            seen.add(key)
            out.append(dataclasses.replace(item, path=path) if isinstance(item, _Asset) else path)
    return out


def _plan(inputs, out_dir: Path) -> list[_Asset]:
    assets = []
    for item in _collect(inputs, [out_dir]):
        if isinstance(item, _Asset):
            assets.append(item)
            continue
        asset = _Asset(item)
        try:
            asset.kind = _kind(item)
            asset.sha256 = _sha256(item)
        except (InputError, OSError) as exc:
            asset.error = _one_line(exc)
        assets.append(asset)
    if not assets:
        raise InputError("no inputs found: give folders, globs or files of meshes (obj ply stl off glb gltf), "
                         "images (png jpg ...), volumes (npy npz raw nii) or video (mp4 webm avi ...)")
    _name_assets(assets)
    return assets


# ----------------------------------------------------------------------------- the manifest


def read_manifest(out_dir) -> list[dict]:
    """The rows of ``OUT_DIR/manifest.jsonl`` (all runs, oldest first); an unterminated or torn line is skipped."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.exists():
        return []
    rows = []
    with open(path, "rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                break  # a crash mid-append: the next resume cuts it off
            with contextlib.suppress(ValueError):
                row = json.loads(line)
                if isinstance(row, dict):
                    rows.append(row)
    return rows


class _Manifest:
    """Appends whole lines, each one ``write()`` then ``fsync``; the driver is the only writer."""

    def __init__(self, path: Path, *, fresh: bool):
        self.path = path
        if fresh:
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o666)
        else:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
            self._cut_torn_tail()

    def _cut_torn_tail(self):
        size = os.fstat(self.fd).st_size
        if size == 0:
            return
        with open(self.path, "rb") as handle:
            data = handle.read()
        if not data.endswith(b"\n"):
            os.ftruncate(self.fd, data.rfind(b"\n") + 1)

    def append(self, row: dict) -> None:
        line = (json.dumps(row, sort_keys=True, default=str, allow_nan=False) + "\n").encode()
        view = memoryview(line)
        while view:
            view = view[os.write(self.fd, view):]
        os.fsync(self.fd)

    def close(self):
        os.close(self.fd)


@contextlib.contextmanager
def _locked(out_dir: Path):
    """One batch at a time per output folder (an advisory lock; none where fcntl is absent)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(out_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{out_dir}: another finr3d batch is writing there; wait for it or choose another -o") from None
        yield
    finally:
        os.close(fd)


def _write_output(path: Path, blob: bytes) -> None:
    """Atomically and durably: finr3d's temporary beside ``path``, fsynced, then one rename."""
    from finr3d.files import atomic_write

    def write(tmp):
        with open(tmp, "wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())

    atomic_write(path, write)


def _output_reads(row: dict) -> bool:
    out = row.get("output")
    if not out or not os.path.exists(out) or os.path.getsize(out) != row.get("bytes"):
        return False
    from finr3d import codec

    try:
        codec.describe_file(out)
    except Exception:  # any failure means the file is not a usable result: refit it
        return False
    return True


# ----------------------------------------------------------------------------- one asset (runs on a worker)


def _one_line(exc: BaseException) -> str:
    """The error's first line; a type name in front unless it is one a user causes (bad input, a missing file)."""
    from finr3d.errors import Finr3dError

    text = str(exc).strip().splitlines()
    msg = text[0] if text else type(exc).__name__
    return msg if isinstance(exc, (Finr3dError, ValueError, OSError, ImportError)) else f"{type(exc).__name__}: {msg}"


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def fit_job(job: dict, data: Optional[bytes] = None) -> dict:
    """Fit one asset as ``finr3d fit`` would and return its manifest row, with the file's bytes as ``payload``.

    Parameters
    ----------
    job : dict
        ``input`` (path), ``filename``, ``kind``, ``settings`` (fit options as
        :func:`batch` takes them), ``threads`` (torch threads, or None) and the
        row fields to carry (``name``, ``sha256``...).
    data : bytes, optional
        The input's content, when it came through Ray's object store instead of
        a shared path; it is written to a temporary file named ``filename``.
    """
    t0 = time.perf_counter()
    row = {k: job[k] for k in ("input", "sha256", "kind", "name", "settings")}
    row.update(worker=_worker_name(), finr3d_version=__version__, attempts=job.get("attempt", 0) + 1)
    try:
        if job.get("threads"):
            import torch

            if torch.get_num_threads() != job["threads"]:
                torch.set_num_threads(job["threads"])
        with tempfile.TemporaryDirectory(prefix="finr3d-batch-", dir=job.get("tmp_root")) as tmp:
            source = job["input"]
            if data is not None:
                source = os.path.join(tmp, os.path.basename(job["filename"]))
                with open(source, "wb") as handle:
                    handle.write(data)
            out = os.path.join(tmp, "out.finr")
            _run_fit_command(source, out, job["kind"], job["settings"])
            from finr3d import codec

            header = codec.describe_file(out)
            with open(out, "rb") as handle:
                blob = handle.read()
        hist = header.get("history") or {}
        metric = hist.get("metric_name")
        metrics = hist.get("metrics") or {}
        row.update(status="ok", bytes=len(blob), parameters=header.get("parameters"),
                   metric={"name": metric, "value": metrics.get(metric)} if metric else None,
                   metrics=metrics, decomposition=header.get("decomposition"), ranks=header.get("ranks"),
                   fit_seconds=hist.get("seconds"), steps=hist.get("steps"), payload=blob)
    except Exception as exc:  # one broken asset is recorded and the batch goes on
        row.update(status="error", error=_one_line(exc))
    row["seconds"] = time.perf_counter() - t0
    return row


def _run_fit_command(source: str, out: str, kind: str, settings: dict) -> None:
    """``finr3d fit SOURCE -o OUT --kind KIND`` with ``settings`` as its flags (its printout discarded)."""
    from finr3d.cli import fit as fit_cli

    parser, _ = _fit_parser()
    args = parser.parse_args(["-o", out, "--kind", kind, "--progress", "none", "--force", "--", source])
    for key, value in settings.items():
        setattr(args, key, value)
    with contextlib.redirect_stdout(io.StringIO()):
        fit_cli.run(args)


# ----------------------------------------------------------------------------- the local engine


_EVENTS = None  # the worker's end of the driver's event queue


def _init_local_worker(threads: int, events, environ: dict) -> None:
    global _EVENTS
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    os.environ.update(environ)  # the driver's environment now, not the fork server's from its start
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    _EVENTS = events
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def _local_job(job: dict) -> dict:
    if _EVENTS is not None:
        _EVENTS.put((job["index"], os.getpid()))  # a SimpleQueue: in the pipe before the fit starts
    return fit_job(job)


def _died_row(job: dict, exitcode, pid) -> dict:
    how = "was killed" if exitcode is None else (f"was killed by signal {-exitcode}" if exitcode < 0
                                                  else f"exited with code {exitcode}")
    return {**{k: job[k] for k in ("input", "sha256", "kind", "name", "settings")}, "status": "error",
            "error": f"the worker process {how} on each of {job['attempt']} attempt(s) (out of memory?); "
                     "rerun with --resume, more memory or fewer --workers",
            "worker": f"{socket.gethostname()}:{pid}", "attempts": job["attempt"], "finr3d_version": __version__}


#: imported once by the fork server, so a worker (and a pool restarted after a crash) starts with them loaded
_PRELOAD = ["torch", "torch._dynamo", "finr3d.batch", "finr3d.fitting", "finr3d.cli.fit", "finr3d.sdf", "finr3d.codec"]


def _pool_context():
    """Workers forked from a clean fork server that preloaded torch and finr3d, or spawned where there is none.

    Never a plain fork of the driver, which may hold torch's thread pool, a GPU context or Ray's threads.
    """
    import multiprocessing

    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")  # pragma: no cover - Windows


def _local_rows(jobs: list[dict], *, workers: int, threads: int, retries: int, stop, emit) -> Iterator[dict]:
    import shutil

    ctx = _pool_context()
    # the workers' scratch folders live under one root the driver removes, even after it killed a worker
    tmp_root = tempfile.mkdtemp(prefix="finr3d-batch-")
    pending = collections.deque({**job, "tmp_root": tmp_root} for job in jobs)
    try:
        yield from _local_pool_rounds(pending, ctx, workers, threads, retries, stop, emit)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


def _local_pool_rounds(pending, ctx, workers, threads, retries, stop, emit) -> Iterator[dict]:
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    while pending:
        events = ctx.SimpleQueue()
        pool = ProcessPoolExecutor(max_workers=max(1, min(workers, len(pending))), mp_context=ctx,
                                   initializer=_init_local_worker, initargs=(threads, events, dict(os.environ)))
        futures = {pool.submit(_local_job, job): job for job in pending}
        pending.clear()
        running: dict[int, int] = {}  # job index -> worker pid
        processes: dict = {}
        broken = False

        def drain():
            while not events.empty():
                index, pid = events.get()
                running[index] = pid
                emit({"event": "start", "index": index, "worker": f"{socket.gethostname()}:{pid}"})

        try:
            while futures:
                done, _ = wait(futures, timeout=0.2, return_when=FIRST_COMPLETED)
                # the pool's processes, kept to read the exit codes if one dies (the executor keeps no record)
                processes.update(getattr(pool, "_processes", None) or {})
                drain()
                if stop.requested:
                    unfinished = {j["index"] for f, j in futures.items() if not f.done()}
                    for index, pid in running.items():
                        if index in unfinished:
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(pid, signal.SIGTERM)
                    pool.shutdown(wait=True, cancel_futures=True)
                    for future, job in futures.items():
                        if future.done() and not future.cancelled() and future.exception() is None:
                            yield future.result()  # it finished before the stop: keep it
                        else:
                            yield _cancelled_row(job)
                    return
                for future in done:
                    if isinstance(future.exception(), BrokenProcessPool):
                        broken = True
                        break
                    job = futures.pop(future)
                    running.pop(job["index"], None)
                    yield future.result()
                if broken:
                    break
            if broken:
                pool.shutdown(wait=True)  # the executor has ended and reaped every worker: exit codes are final
                drain()
                if not running and not any(f.exception() is None for f in futures):
                    codes = sorted({p.exitcode for p in processes.values() if p.exitcode is not None})
                    raise RuntimeError(
                        f"the worker processes could not start (exit codes {codes}); from a script, call "
                        "finr3d.batch under `if __name__ == '__main__':` (workers import the main module, as for "
                        "any multiprocessing pool), and check the workers' stderr")
                # a worker died: charge the fits that were running on a process that did not end by the
                # executor's SIGTERM (the one that died); if that cannot be told, charge every running fit
                dead = {idx for idx, pid in running.items()
                        if getattr(processes.get(pid), "exitcode", None) not in (None, -signal.SIGTERM)}
                charged = dead or set(running) or {j["index"] for j in futures.values()}
                for future, job in futures.items():
                    if future.exception() is None:
                        yield future.result()
                        continue
                    if job["index"] in charged:
                        job = {**job, "attempt": job.get("attempt", 0) + 1}
                        pid = running.get(job["index"])
                        if job["attempt"] > retries:
                            yield _died_row(job, getattr(processes.get(pid), "exitcode", None), pid)
                            continue
                        emit({"event": "retry", "index": job["index"], "attempt": job["attempt"]})
                    pending.append(job)
        finally:
            if futures and not broken:  # left by an exception (a second Ctrl-C): end the running fits now
                drain()
                for pid in running.values():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
            pool.shutdown(wait=True, cancel_futures=True)


def _cancelled_row(job: dict) -> dict:
    return {**{k: job[k] for k in ("input", "sha256", "kind", "name", "settings")}, "status": "cancelled",
            "error": "cancelled by the user (Ctrl-C)", "attempts": job.get("attempt", 0),
            "finr3d_version": __version__}


# ----------------------------------------------------------------------------- the Ray engine


#: seconds a cancelled Ray task gets to stop on its own before it is killed
RAY_CANCEL_GRACE_S = 5.0


def _ray_job(job: dict, data: Optional[bytes] = None) -> dict:
    return fit_job(job, data)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise InputError('--engine ray needs Ray: pip install "finr3d[ray]"') from None
    return ray


def _ray_rows(jobs: list[dict], *, address, workers, cpus_per_task, gpus_per_task, retries, ray_inputs,
              stop, emit) -> Iterator[dict]:
    import logging

    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        options = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=workers, num_gpus=None if gpus_per_task else 0, **options)
        started = True
    try:
        task = ray.remote(_ray_job).options(num_cpus=cpus_per_task, num_gpus=gpus_per_task,
                                            max_retries=retries, retry_exceptions=False)
        resources = ray.cluster_resources()
        slots = resources.get("CPU", 1) / cpus_per_task if cpus_per_task else math.inf
        if gpus_per_task:
            slots = min(slots, resources.get("GPU", 0) / gpus_per_task)
        if slots < 1:
            raise InputError(f"the Ray cluster has {resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} "
                             f"GPUs: not enough for one task of --cpus-per-task {cpus_per_task:g} "
                             f"--gpus-per-task {gpus_per_task:g}")
        # a bounded window of submitted tasks (Ray's pattern for many tasks): the object store holds only
        # the inputs in flight, and a Ctrl-C has little to cancel
        window = max(2, int(2 * min(slots, 10_000)))
        queue = collections.deque(jobs)
        in_flight: dict = {}
        while queue or in_flight:
            while queue and len(in_flight) < window and not stop.requested:
                job = queue.popleft()
                data = ray.put(Path(job["input"]).read_bytes()) if ray_inputs == "store" else None
                in_flight[task.remote(job, data)] = job
                emit({"event": "submit", "index": job["index"]})
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=0.2)
            if stop.requested:
                ready, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=0)
                for ref in ready:
                    yield _ray_result(ray, ref, in_flight.pop(ref), retries)
                # a KeyboardInterrupt in each running task first (its scratch folder is removed), then a
                # kill for any task still running after a grace period
                for ref in in_flight:
                    ray.cancel(ref, force=False)
                _, late = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=RAY_CANCEL_GRACE_S)
                for ref in late:
                    ray.cancel(ref, force=True)
                for ref, job in in_flight.items():
                    yield _cancelled_row(job)
                for job in queue:
                    yield _cancelled_row(job)
                return
            for ref in ready:
                yield _ray_result(ray, ref, in_flight.pop(ref), retries)
    finally:
        if started:
            ray.shutdown()


def _ray_result(ray, ref, job: dict, retries: int) -> dict:
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:  # the worker or its node died on every try
        text = str(exc).strip().splitlines()
        return {**{k: job[k] for k in ("input", "sha256", "kind", "name", "settings")}, "status": "error",
                "error": f"the Ray task failed on each of {retries + 1} attempt(s): {type(exc).__name__}: "
                         f"{text[0] if text else ''}".rstrip(": "),
                "attempts": retries + 1, "finr3d_version": __version__}


# ----------------------------------------------------------------------------- the driver


class _Stop:
    """The first SIGINT asks the batch to stop (checked between waits); a second one interrupts at once."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self._old or signal.default_int_handler)

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


class _Display:
    """Asset events to a tqdm bar on stderr, JSON lines on stdout, a callable, or nowhere."""

    def __init__(self, mode, total: int, reused: int, names: dict):
        self.mode, self.total, self.done, self.names = mode, total, reused, names
        self.t0, self.counts, self.bar = time.perf_counter(), collections.Counter(), None
        self.fitted = 0
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=reused, unit="asset", file=sys.stderr, dynamic_ncols=True)
        elif not (mode in ("json", "none", None) or callable(mode)):
            raise InputError(f"progress must be 'bar', 'json', 'none' or a callable, got {mode!r}")

    def __call__(self, event: dict) -> None:
        event = dict(event)
        if "index" in event:
            event.setdefault("input", self.names.get(event["index"]))
        if event.get("event") == "end":
            self.done += 1
            self.fitted += 1
            self.counts[event.get("status")] += 1
            rate = (time.perf_counter() - self.t0) / self.fitted
            event.update(done=self.done, total=self.total, eta=round(rate * (self.total - self.done), 1))
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix({s: self.counts[s] for s in STATUSES if self.counts[s]}, refresh=True)
                if self.done >= self.total:
                    self.close()
        if callable(self.mode):
            self.mode(event)
        elif self.mode == "json":
            print(json.dumps(event, default=str), flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def _positive(name, value, kind=int, minimum=1):
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < minimum:
        raise InputError(f"{name} must be a number >= {minimum}, got {value!r}")
    return kind(value)


def batch(inputs, out_dir, *, engine: str = "local", workers: Optional[int] = None, threads: Optional[int] = None,
          retries: int = 2, resume: bool = False, force: bool = False, ray_address: Optional[str] = None,
          cpus_per_task: float = 1, gpus_per_task: float = 0, ray_inputs: str = "path",
          progress: Union[str, Callable[[dict], None], None] = None, target_options: Optional[dict] = None,
          **fit_options) -> list[dict]:
    """Fit every asset that ``inputs`` names into ``out_dir`` and return this run's manifest rows.

    Parameters
    ----------
    inputs : str, path or iterable of them
        Folders (recursive), globs, text files of paths, or files; see :func:`collect_inputs`.
    out_dir : str or path
        Created if missing. Receives ``<name>.finr`` per asset and ``manifest.jsonl``.
    engine : local | ray
    workers : int, optional
        Local: processes (default: the cores, at most one per asset). Ray with no
        address: the local Ray's CPUs (default: the cores).
    threads : int, optional
        Torch threads per local worker (default ``cores // workers``, at least 1).
        Under Ray each task gets ``cpus_per_task`` threads.
    retries : int
        How often an asset whose worker died is tried again (Ray: ``max_retries``).
        A fit that raises is not retried: it is recorded as an error.
    resume : bool
        Skip inputs whose sha256, kind and settings match an ``ok`` row of the
        manifest whose file still reads; they come back as that row with
        ``"resumed": True``.
    force : bool
        Start a new manifest and overwrite existing outputs.
    ray_address : str, optional
        ``"auto"`` or ``"HOST:PORT"`` of a running cluster; None starts a local Ray.
    cpus_per_task, gpus_per_task : float
        Ray task resources (``num_cpus``, ``num_gpus``).
    ray_inputs : path | store
        ``path``: workers read the input at its path (shared filesystem).
        ``store``: the driver puts each input's bytes in Ray's object store.
    progress : bar | json | none | callable
        A bar over assets on stderr, one JSON line per asset event on stdout, or
        a callable receiving each event dict.
    target_options : dict, optional
        As for :func:`finr3d.fit`: ``resolution``/``sign`` for meshes,
        ``frames``/``stride``/``resize``/``layout`` for video; the same as
        passing them among ``fit_options``.
    **fit_options
        ``finr3d fit``'s flags as keywords: ``seconds=60``, ``steps=500``,
        ``rank=32``, ``budget_kb=64``, ``target_chamfer=0.002``,
        ``resolution=192``... Options for one kind (``resolution``, ``sign`` and
        ``target_chamfer`` for meshes; ``target_psnr`` for the others;
        ``frames``/``stride``/``resize``/``layout`` for video) reach that kind only.

    Returns
    -------
    list of dict
        One row per asset, in input order: ``input``, ``sha256``, ``kind``,
        ``name``, ``output``, ``status`` (ok | error | cancelled), ``error``,
        ``bytes``, ``parameters``, ``metric`` ``{"name", "value"}``, ``metrics``,
        ``settings``, ``fit_seconds``, ``seconds``, ``worker``, ``attempts``,
        ``engine``, ``finr3d_version``, ``ended``.

    Notes
    -----
    The local engine's workers import the caller's main module, as for any
    :mod:`multiprocessing` pool: from a script, call this under
    ``if __name__ == "__main__":``.

    Raises
    ------
    BatchInterrupted
        On Ctrl-C, after the manifest is complete; ``.rows`` holds the rows.
    """
    if engine not in ("local", "ray"):
        raise InputError(f"engine must be 'local' or 'ray', got {engine!r}")
    if ray_inputs not in ("path", "store"):
        raise InputError(f"ray_inputs must be 'path' or 'store', got {ray_inputs!r}")
    workers = _positive("workers", workers)
    threads = _positive("threads", threads)
    retries = _positive("retries", retries, minimum=0)
    cpus_per_task = _positive("cpus_per_task", cpus_per_task, float, minimum=0)
    gpus_per_task = _positive("gpus_per_task", gpus_per_task, float, minimum=0)
    if engine == "local" and (ray_address or gpus_per_task or cpus_per_task != 1 or ray_inputs != "path"):
        raise InputError("--ray-address, --cpus-per-task, --gpus-per-task and --ray-inputs apply to --engine ray")
    if engine == "ray":
        _import_ray()  # the one-line message before any work
    both = sorted(set(target_options or {}) & set(fit_options))
    if both:
        raise InputError(f"{both} given both in target_options and as keywords; give each once")
    options = _check_fit_options({**fit_options, **(target_options or {})})
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir}: exists and is not a folder; -o takes the output folder")
    manifest_path = out_dir / MANIFEST_NAME
    if not (resume or force) and manifest_path.exists() and manifest_path.stat().st_size:
        raise FileExistsError(f"{manifest_path} holds an earlier batch; pass --resume to continue it "
                              "or --force to start over")
    assets = _plan(inputs, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    with _locked(out_dir):
        earlier = read_manifest(out_dir) if resume else []
        done_before = {}
        for row in earlier:
            if row.get("status") == "ok":
                done_before[(row.get("sha256"), row.get("kind"), _key(row.get("settings")))] = row
        rows: dict[int, dict] = {}
        jobs = []
        for index, a in enumerate(assets):
            settings = _settings_for(a.kind, options)
            if a.error is not None:
                rows[index] = {"input": str(a.path), "sha256": a.sha256, "kind": a.kind, "name": a.name,
                               "settings": settings, "status": "error", "error": a.error, "attempts": 0,
                               "finr3d_version": __version__}
                continue
            previous = done_before.get((a.sha256, a.kind, _key(settings)))
            if previous is not None and _output_reads(previous):
                rows[index] = {**previous, "resumed": True}
                continue
            output = out_dir / f"{a.name}.finr"
            if output.exists() and not (force or resume):
                raise FileExistsError(f"{output} exists; pass --force to overwrite it, or --resume to continue "
                                      "the batch that wrote it")
            jobs.append({"index": index, "input": str(a.path), "filename": a.path.name, "name": a.name,
                         "kind": a.kind, "sha256": a.sha256, "settings": settings, "attempt": 0})
        cores = _cores()
        n_workers = workers or cores
        if engine == "local":
            n_workers = max(1, min(n_workers, len(jobs) or 1))
            threads = threads or max(1, cores // n_workers)
        if engine == "ray":
            threads = max(1, int(cpus_per_task or 1))
        for job in jobs:
            job["threads"] = threads
        reused = sum(1 for r in rows.values() if r.get("resumed"))
        display = _Display(progress, len(assets), reused, {i: str(a.path) for i, a in enumerate(assets)})
        manifest = _Manifest(manifest_path, fresh=not resume)
        try:
            display({"event": "plan", "total": len(assets), "to_fit": len(jobs), "resumed": reused,
                     "engine": engine, "workers": n_workers, "threads": threads,
                     "errors": sum(1 for r in rows.values() if r["status"] == "error")})
            for index, row in sorted(rows.items()):  # planning errors are part of this run's record
                if not row.get("resumed"):
                    _finish(row, engine, manifest, display, index)
            with _Stop() as stop:
                if engine == "local":
                    stream = _local_rows(jobs, workers=n_workers, threads=threads, retries=retries, stop=stop,
                                         emit=display)
                else:
                    stream = _ray_rows(jobs, address=ray_address, workers=n_workers, cpus_per_task=cpus_per_task,
                                       gpus_per_task=gpus_per_task, retries=retries, ray_inputs=ray_inputs,
                                       stop=stop, emit=display)
                by_name = {job["name"]: job for job in jobs}
                for row in stream:
                    job = by_name[row["name"]]
                    blob = row.pop("payload", None)
                    if row["status"] == "ok":
                        output = out_dir / f"{job['name']}.finr"
                        try:
                            _write_output(output, blob)
                            row["output"] = str(output)
                        except OSError as exc:
                            row.update(status="error", error=f"{output}: cannot write ({exc})")
                    rows[job["index"]] = row
                    _finish(row, engine, manifest, display, job["index"])
                interrupted = stop.requested
        finally:
            manifest.close()
            display.close()
    result = [rows[i] for i in sorted(rows)]
    if interrupted:
        raise BatchInterrupted(result)
    return result


def _key(settings) -> str:
    return json.dumps(settings or {}, sort_keys=True, default=str)


def _finish(row: dict, engine: str, manifest: _Manifest, display, index: int) -> None:
    row.setdefault("output", None)
    row.setdefault("error", None)
    row["engine"] = engine
    row["ended"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    manifest.append(row)
    display({"event": "end", "index": index, **{k: row.get(k) for k in
                                                ("name", "kind", "status", "error", "output", "bytes", "metric",
                                                 "fit_seconds", "worker")}})


def summarize(rows: list[dict]) -> dict:
    """Totals over rows: per kind and overall counts of each status, resumed rows, bytes, mean metric and fit time."""
    def totals(group):
        ok = [r for r in group if r.get("status") == "ok"]
        metrics = collections.defaultdict(list)
        for r in ok:
            m = r.get("metric") or {}
            if m.get("value") is not None:
                metrics[m["name"]].append(m["value"])
        fit = [r["fit_seconds"] for r in ok if r.get("fit_seconds") is not None and not r.get("resumed")]
        return {**{s: sum(1 for r in group if r.get("status") == s) for s in STATUSES},
                "resumed": sum(1 for r in group if r.get("resumed")),
                "bytes": sum(r.get("bytes") or 0 for r in ok),
                "metric": {k: sum(v) / len(v) for k, v in metrics.items()},
                "fit_seconds": sum(fit) / len(fit) if fit else None}

    kinds = sorted({r.get("kind") or "?" for r in rows})
    return {"by_kind": {k: totals([r for r in rows if (r.get("kind") or "?") == k]) for k in kinds},
            "total": totals(rows),
            "failed": [{"input": r["input"], "status": r["status"], "error": r.get("error")}
                       for r in rows if r.get("status") != "ok"]}


# ``finr3d.batch(...)`` calls :func:`batch`: the package's lazy loader and ``import finr3d.batch`` both bind
# the name ``finr3d.batch`` to this module, so the module itself is made callable.
class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return batch(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
