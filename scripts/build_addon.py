"""Build the Blender extension zip: ``python scripts/build_addon.py`` -> ``dist/finr3d-<version>.zip``.

The zip holds ``blender_manifest.toml`` and ``__init__.py`` at its root. When
the bpy wheel is installed, Blender's own packaging tool (``blender_ext.py``,
what ``blender --command extension build`` runs) validates the manifest and
builds the zip; without it a plain zip writer does the same, leaving out the
files that match the manifest's ``[build] paths_exclude_pattern``.
Install the zip with Edit > Preferences > Get Extensions > Install from Disk,
or ``blender --command extension install-file -r user_default dist/finr3d-<version>.zip``.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ADDON = ROOT / "blender_addon"


def _excluded(rel: str, patterns: list[str]) -> bool:
    """gitignore-style subset: ``dir/`` matches a folder anywhere, ``/x`` anchors at the root, globs per name."""
    parts = rel.split("/")
    for pat in patterns:
        anchored = pat.startswith("/")
        pat = pat.lstrip("/")
        if pat.endswith("/"):
            name = pat.rstrip("/")
            folders = parts[:-1]
            if (anchored and folders[:1] and fnmatch.fnmatch(folders[0], name)) or \
                    (not anchored and any(fnmatch.fnmatch(p, name) for p in folders)):
                return True
        elif anchored:
            if fnmatch.fnmatch(rel, pat):
                return True
        elif any(fnmatch.fnmatch(p, pat) for p in parts):
            return True
    return False


def blender_ext_tool() -> Path | None:
    """Blender's extension packaging script inside the installed bpy wheel, if any (bpy is not imported)."""
    spec = importlib.util.find_spec("bpy")
    for base in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(Path(base).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
        if found:
            return found[-1]
    return None


def validate(source: Path = ADDON) -> None:
    """Check the manifest with Blender's validator; raises ValueError with its message."""
    tool = blender_ext_tool()
    if tool is None:
        raise RuntimeError("Blender's blender_ext.py was not found; install bpy (pip install bpy) to validate")
    done = subprocess.run([sys.executable, str(tool), "validate", str(source)], capture_output=True, text=True)
    if done.returncode != 0 or "error" in done.stdout.lower():
        raise ValueError(f"the extension does not validate: {(done.stdout + done.stderr).strip()}")


def build(out_dir: Path = ROOT / "dist", source: Path = ADDON, *, use_blender: bool = True) -> Path:
    """Write ``<out_dir>/<id>-<version>.zip`` from the extension folder; returns its path."""
    tool = blender_ext_tool() if use_blender else None
    if tool is not None:
        manifest = tomllib.loads((source / "blender_manifest.toml").read_text("utf-8"))
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
        done = subprocess.run([sys.executable, str(tool), "build", "--source-dir", str(source),
                               "--output-dir", str(out_dir)], capture_output=True, text=True)
        if done.returncode != 0 or not target.is_file():
            raise ValueError(f"blender_ext.py build failed: {(done.stdout + done.stderr).strip()}")
        return target
    manifest = tomllib.loads((source / "blender_manifest.toml").read_text("utf-8"))
    for key in ("schema_version", "id", "version", "name", "type", "blender_version_min", "license"):
        if key not in manifest:
            raise ValueError(f"blender_manifest.toml lacks {key!r}")
    patterns = list(manifest.get("build", {}).get("paths_exclude_pattern", ["__pycache__/", ".*"]))
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    files = sorted(p for p in source.rglob("*") if p.is_file())
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            rel = path.relative_to(source).as_posix()
            if not _excluded(rel, patterns):
                zf.write(path, rel)
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out-dir", type=Path, default=ROOT / "dist", help="folder for the zip (default dist/)")
    parser.add_argument("--plain", action="store_true", help="use the plain zip writer even when bpy is installed")
    args = parser.parse_args(argv)
    path = build(args.out_dir, use_blender=not args.plain)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
