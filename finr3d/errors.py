"""Errors raised at finr3d's boundary.

Every error a user can cause derives from :class:`Finr3dError`. The CLI turns
these (and ``ValueError`` / ``FileNotFoundError``) into exit code 2 with a
one-line message; anything else is a bug and exits 1.

This module imports nothing heavy: ``finr3d.codec`` and the Blender add-on use
it in processes where torch is absent.
"""

from __future__ import annotations

__all__ = ["Finr3dError", "InputError", "FormatError", "SurfaceError", "FitCancelled"]


class Finr3dError(Exception):
    """Base class of every error finr3d raises on purpose."""


class InputError(Finr3dError, ValueError):
    """An input file, array or argument is unusable; the message says why and how to fix it."""


class FormatError(Finr3dError, ValueError):
    """A ``.finr`` file is truncated, corrupted, of an unknown version, or hostile."""


class SurfaceError(Finr3dError, RuntimeError):
    """Valid input with no surface to extract (no crossing of the level, or NaN/Inf field values).

    A ``RuntimeError``, as scikit-image's ``marching_cubes`` raises for the same case.
    """


class FitCancelled(Finr3dError):
    """A fit was stopped by its callback; the best state so far is kept on the exception."""

    def __init__(self, message: str = "fit cancelled", field=None):
        super().__init__(message)
        self.field = field
