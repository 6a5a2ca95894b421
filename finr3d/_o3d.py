"""Import open3d, preloading the libusb it needs.

open3d 0.20 links ``libusb-1.0.so.0`` at import time, which many machines lack.
The ``libusb-package`` wheel ships that library; loading it globally first lets
open3d import without a system package.
"""

from __future__ import annotations

import ctypes
import functools


@functools.lru_cache(maxsize=1)
def import_open3d():
    """Return the ``open3d`` module, or raise ImportError with the fix."""
    try:
        import libusb_package

        path = libusb_package.get_library_path()
        if path is not None:
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    except (ImportError, OSError):
        pass  # fall back to a system libusb, if any
    try:
        import open3d
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise ImportError(
            f"open3d could not be imported ({exc}); install it with `pip install open3d` "
            "and, on Linux, the system package libusb-1.0-0 (or `pip install libusb-package`)"
        ) from exc
    return open3d
