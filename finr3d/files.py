"""Writing files so that an interrupted write never leaves a half-written output.

Every writer in finr3d (``.finr`` files, decoded images, arrays and videos,
extracted meshes, the SDF cache, frame folders) goes through
:func:`atomic_write`: the data goes to a temporary file beside the output,
which then replaces the output in one rename. The temporary file is created
with mode ``0666`` less the umask, so the output gets the permissions a plain
``open(path, "wb")`` gives (``tempfile.mkstemp`` would leave 0600). Its name
(:mod:`finr3d.atomic_files`: ``.NAME.finr3d-tmp-PID-HEX.SUFFIX``) is hidden,
marks it as finr3d's, and keeps the output's suffix for writers that choose a
format by it; stale temporaries of a killed writer are removed first.

Needs the standard library alone (``finr3d.codec`` uses it without torch).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Union

from finr3d.atomic_files import TEMP_MARK, create_temp
from finr3d.errors import InputError

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_folder", "TEMP_MARK", "existing_file",
           "IMAGE_SUFFIXES", "VOLUME_SUFFIXES", "MESH_SUFFIXES", "VIDEO_SUFFIXES"]

#: File suffixes finr3d reads, by kind (:func:`finr3d.targets.detect_kind` dispatches on them).
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
VOLUME_SUFFIXES = {".npy", ".npz", ".raw", ".nii", ".gz"}
MESH_SUFFIXES = {".obj", ".ply", ".stl", ".off", ".glb", ".gltf"}
VIDEO_SUFFIXES = {".mp4", ".webm", ".avi", ".mov", ".mkv", ".gif"}


def existing_file(source) -> Path:
    """``source`` as a Path to a readable, non-empty file; a FileNotFoundError or InputError that says which
    it is not."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise InputError(f"{path} is a directory; give a file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty (0 bytes)")
    return path

PathLike = Union[str, os.PathLike]



def _create_temp(path: Path) -> Path:
    """An empty, exclusive temporary beside ``path`` (mode 0666 less the umask); stale ones of ``path`` go first."""
    return Path(create_temp(path))


def _link_no_clobber(temp: Path, path: Path) -> None:
    # link() fails if path exists, closing the race between an exists() check and the rename;
    # filesystems without hard links fall back to the check.
    try:
        os.link(temp, path)
    except FileExistsError:
        raise FileExistsError(f"{str(path)!r} already exists; pass overwrite=True to replace it") from None
    except OSError:
        if os.path.exists(path):
            raise FileExistsError(f"{str(path)!r} already exists; pass overwrite=True to replace it") from None
        os.replace(temp, path)
        return
    os.unlink(temp)


def _fsync_directory(directory: Path) -> None:
    # makes the rename itself durable on POSIX; Windows cannot open directories
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[str], object], *, overwrite: bool = True,
                 durable: bool = False) -> Path:
    """Call ``write(temp_path)``, then move the temporary file over ``path`` in one step.

    Parameters
    ----------
    path : path
        The output. Its folder must exist.
    write : callable
        Writes the whole output to the path it is given (a string that ends in
        ``path``'s suffix).
    overwrite : bool
        False: raise ``FileExistsError`` rather than replace an existing ``path``
        (also when another process creates it meanwhile).
    durable : bool
        fsync the file and its folder, so the new content survives a power cut.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    temp = _create_temp(parent / path.name)
    try:
        write(str(temp))
        if durable:
            with open(temp, "rb+") as handle:
                os.fsync(handle.fileno())
        if overwrite:
            os.replace(temp, path)
        else:
            _link_no_clobber(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        _fsync_directory(parent)
    return path


def atomic_write_bytes(path: PathLike, data: bytes, *, overwrite: bool = True, durable: bool = False) -> int:
    """:func:`atomic_write` of ``data``; returns the bytes written."""

    def write(temp: str) -> None:
        with open(temp, "wb") as handle:
            handle.write(data)

    atomic_write(path, write, overwrite=overwrite, durable=durable)
    return len(data)


def atomic_folder(folder: PathLike, fill: Callable[[Path], object]) -> Path:
    """Create ``folder`` whole or not at all: ``fill(temp_folder)`` then one rename (``folder`` must not exist)."""
    folder = Path(folder)
    temp = Path(tempfile.mkdtemp(prefix=f".{folder.name}{TEMP_MARK}", dir=folder.parent))
    try:
        os.chmod(temp, 0o777 & ~_umask())
        fill(temp)
        os.replace(temp, folder)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
