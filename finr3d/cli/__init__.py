"""The ``finr3d`` command line: one module per command.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Errors a user can fix (bad paths, formats, values) exit 2
with a one-line message on stderr and no traceback; anything else exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from finr3d import __version__

COMMANDS = ("fit", "batch", "mesh", "decode", "info", "eval", "sweep", "demo")

EPILOG = """\
examples:
  finr3d demo                                   fit a built-in shape, write a mesh, print metrics
  finr3d fit bunny.obj -o bunny.finr --seconds 60
  finr3d batch assets/ -o out/ --seconds 60          every asset in a folder, one .finr each, and a manifest
  finr3d mesh bunny.finr -o bunny.ply --resolution 512 --rank 16
  finr3d fit photo.png -o photo.finr --decomposition cp --rank 256
  finr3d decode photo.finr -o photo_decoded.png
  finr3d eval bunny.finr --reference bunny.obj
  finr3d info bunny.finr

exit codes: 0 success, 2 bad usage or bad input (one line on stderr), 1 unexpected failure.
"""


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit 2 (the contract in DESIGN.md)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="finr3d",
        description="Turn meshes, volumes, images and videos into compact factorized neural fields (F-INR).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"finr3d {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"finr3d.cli.{name}")
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            epilog=getattr(module, "EPILOG", None),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def _user_errors():
    from finr3d.errors import Finr3dError

    return (Finr3dError, ValueError, FileNotFoundError, FileExistsError, IsADirectoryError,
            PermissionError, NotADirectoryError, ImportError)


def _raised_by_finr3d(exc: BaseException) -> bool:
    """Whether the innermost frame that raised ``exc`` is finr3d's own code (a deliberate user-facing error).

    A ``ValueError`` raised inside a library (scikit-image's "Input images must have the same
    dimensions", a numpy shape error) is a bug in how finr3d called it, not the user's input.
    """
    import finr3d

    root = os.path.dirname(os.path.abspath(finr3d.__file__))
    tb, last = exc.__traceback__, None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return True
    return os.path.abspath(last.tb_frame.f_code.co_filename).startswith(root + os.sep)


def _format_warning(message, category, filename, lineno, line=None) -> str:
    text = " ".join(str(message).split())
    kind = "" if category in (UserWarning, RuntimeWarning) else f" ({category.__name__})"
    return f"finr3d: warning{kind}: {text}\n"


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    debug = bool(os.environ.get("FINR3D_DEBUG"))
    import warnings

    previous = warnings.formatwarning
    if not debug:
        warnings.formatwarning = _format_warning  # one line, without the source line Python quotes under it
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        print("finr3d: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except _user_errors() as exc:
        from finr3d.errors import Finr3dError

        if debug:
            raise
        if isinstance(exc, ValueError) and not isinstance(exc, Finr3dError) and not _raised_by_finr3d(exc):
            print(f"finr3d {args.command}: unexpected {type(exc).__name__}: {exc} "
                  "(set FINR3D_DEBUG=1 for a traceback and report it)", file=sys.stderr)
            return 1
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"finr3d {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except Exception as exc:  # an unexpected failure is a bug: keep it short, point at the debug switch
        if debug:
            raise
        print(f"finr3d {args.command}: unexpected {type(exc).__name__}: {exc} "
              "(set FINR3D_DEBUG=1 for a traceback and report it)", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = previous


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
