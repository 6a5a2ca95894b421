"""Worker processes read by a thread: Blender's UI thread only drains a queue.

A :class:`Job` runs a list of commands one after another (``finr3d fit
--progress json``, then ``bridge.py finish``). A daemon thread reads each
command's stdout line by line and puts every JSON object on a queue, tagged
with the command's index. Stderr goes to a file (a pipe nobody reads could
fill and stall the worker) and its last line becomes the error message.

Nothing here imports ``bpy``; the thread never touches Blender data.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
from pathlib import Path

__all__ = ["Job"]

#: Seconds a terminated worker gets to exit before it is killed.
KILL_GRACE = 3.0


class Job:
    """Commands run in sequence in worker processes; progress arrives on :attr:`events`.

    Parameters
    ----------
    commands : list of argv lists
    workdir : path
        Working folder; stderr logs go here.
    env : dict, optional
        Extra environment variables for the workers.

    Attributes
    ----------
    state : str
        ``pending``, ``running``, ``done``, ``failed`` or ``cancelled``.
    results : list of dict
        The last ``{"done": true, ...}`` line of each finished command.
    error : str
        Why the job failed (one line), when ``state == "failed"``.
    """

    def __init__(self, commands, workdir, env=None):
        self.commands = [list(map(str, c)) for c in commands]
        self.workdir = Path(workdir)
        self.env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.events: queue.Queue = queue.Queue()
        self.state = "pending"
        self.results: list[dict] = []
        self.error = ""
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control
    def start(self) -> "Job":
        self.state = "running"
        self._thread = threading.Thread(target=self._run, name="finr3d-worker", daemon=True)
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Stop the running worker (terminate, then kill) and skip the remaining commands."""
        self._cancelled.set()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            _stop(proc)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends; True when it has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.finished

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def drain(self) -> list[tuple[int, dict]]:
        """All events so far: (command index, JSON object) pairs."""
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out

    # ------------------------------------------------------------------- thread
    def _run(self) -> None:
        try:
            for index, cmd in enumerate(self.commands):
                if self._cancelled.is_set():
                    break
                result = self._run_one(index, cmd)
                if result is None:
                    break
                self.results.append(result)
        except Exception as exc:  # a crash in the reader must reach the UI as a message
            self.error = f"worker failed: {type(exc).__name__}: {exc}"
            self.state = "failed"
            return
        if self._cancelled.is_set():
            self.state = "cancelled"
        elif self.error:
            self.state = "failed"
        else:
            self.state = "done"

    def _run_one(self, index: int, cmd: list[str]) -> dict | None:
        log = self.workdir / f"worker{index}.stderr.txt"
        flags = {"creationflags": subprocess.CREATE_NO_WINDOW} if sys.platform == "win32" else {}
        with open(log, "wb") as err:
            with self._lock:
                if self._cancelled.is_set():
                    return None
                try:
                    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                            cwd=self.workdir, env=self.env, **flags)
                except OSError as exc:
                    self.error = f"could not start {cmd[0]}: {exc}"
                    return None
                self._proc = proc
            done = None
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("{"):
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not isinstance(obj, dict):
                    continue
                if obj.get("done"):
                    done = obj
                self.events.put((index, obj))
            proc.stdout.close()
            rc = proc.wait()
        if self._cancelled.is_set():
            return None
        if rc != 0 or done is None:
            self.error = _last_line(log) or f"{Path(cmd[2] if len(cmd) > 2 else cmd[0]).name} exited with code {rc}"
            return None
        return done


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(KILL_GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _last_line(path: Path) -> str:
    try:
        text = path.read_text("utf-8", "replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # the finr3d CLI and bridge.py print one line; a traceback's last line names the exception
    return re.sub(r"^finr3d( \w+)?: error: ", "", lines[-1]) if lines else ""
