import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    return Path(os.environ.get("FINR3D_SHARED", ROOT.parent / "shared"))


@pytest.fixture
def shared_assets() -> Path:
    """The shared test assets folder; tests using it skip when it is absent."""
    path = shared_dir() / "assets"
    if not path.is_dir():
        pytest.skip(f"shared assets not found at {path}; set FINR3D_SHARED")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep the ground-truth cache out of the user's home."""
    monkeypatch.setenv("FINR3D_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
