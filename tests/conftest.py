import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Under pytest-xdist each worker gets its own temporary folder (inherited by the subprocesses it starts), so a
# test that checks "no finr3d-fit-* folder left behind" does not see another worker's fit in progress.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _worker_tmp = Path(tempfile.gettempdir()) / f"finr3d-tests-{os.environ['PYTEST_XDIST_WORKER']}-{os.getpid()}"
    _worker_tmp.mkdir(parents=True, exist_ok=True)
    os.environ["TMPDIR"] = str(_worker_tmp)
    tempfile.tempdir = None  # re-read TMPDIR
    atexit.register(shutil.rmtree, _worker_tmp, ignore_errors=True)


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


class FakeClock:
    """A ``time.perf_counter`` that advances ``tick`` seconds per call: budgets tested without wall-clock asserts."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now


@pytest.fixture
def fake_clock(monkeypatch):
    """Replace the fitting modules' clock with a :class:`FakeClock`; call it with the tick in seconds."""
    import types

    import finr3d.closed_form
    import finr3d.fitting

    def install(tick: float = 0.01) -> FakeClock:
        clock = FakeClock(tick)
        fake = types.SimpleNamespace(perf_counter=clock.perf_counter)
        for module in (finr3d.fitting, finr3d.closed_form):
            monkeypatch.setattr(module, "time", fake)
        return clock

    return install
