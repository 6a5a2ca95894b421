"""Temporary files for atomic writes, named so that they are never taken for a user's file.

Every output finr3d writes (``.finr``, meshes, decoded arrays, images) goes to
a temporary file beside it and is renamed over it in one step. A process
killed mid-write leaves that temporary behind; its name says what it is::

    .bunny.finr.finr3d-tmp-<pid>-<random>.finr

hidden (leading dot), marked ``finr3d-tmp``, carrying the writer's process id,
and ending in the output's own suffix (writers such as ``np.save`` pick the
format from it). The next write of the same output removes the stale ones:
those whose process is gone.

Standard library only: :mod:`finr3d.codec` uses it where torch is absent.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["TEMP_MARK", "create_temp", "remove_stale", "check_writable", "is_temp"]

TEMP_MARK = ".finr3d-tmp-"


def _prefix(path: str) -> str:
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}{TEMP_MARK}")


def is_temp(name: str) -> bool:
    """Whether a file name is one of finr3d's temporaries."""
    return os.path.basename(name).startswith(".") and TEMP_MARK in name


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's live process, or we cannot tell: leave its file alone
    return True


def remove_stale(path) -> list[str]:
    """Delete the temporaries of ``path`` left by writers that no longer run; return what was removed."""
    prefix = _prefix(os.fspath(path))
    directory, start = os.path.split(prefix)
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(start):
            continue
        pid_text = name[len(start):].split("-", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        try:
            os.unlink(os.path.join(directory, name))
            removed.append(name)
        except OSError:
            pass
    return removed


def create_temp(path) -> str:
    """Create an empty, exclusive temporary file beside ``path`` and return its name.

    Stale temporaries of the same output are removed first. ``os.open(...,
    0o666)`` lets the umask set the permissions, as a plain ``open(path, "wb")``
    would. An ``OSError`` names ``path``, not the temporary.
    """
    path = os.fspath(path)
    remove_stale(path)
    suffix = Path(path).suffix
    for _ in range(16):
        temp = f"{_prefix(path)}{os.getpid()}-{secrets.token_hex(4)}{suffix}"
        try:
            os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return temp
        except FileExistsError:
            continue
        except OSError as exc:
            raise type(exc)(f"cannot write {path}: {exc.strerror or exc}") from None
    raise FileExistsError(f"could not create a temporary file next to {path}")


def check_writable(path) -> None:
    """Prove that ``path`` can be written (create and remove a temporary beside it), before slow work.

    Raises
    ------
    IsADirectoryError, FileNotFoundError, PermissionError, OSError
        Naming ``path``.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory; give a file name such as "
                                f"{os.path.join(path, 'out' + Path(path).suffix)}")
    temp = create_temp(path)
    os.unlink(temp)
