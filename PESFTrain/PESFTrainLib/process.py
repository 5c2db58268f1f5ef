"""The training subprocess: launch ``python -m pesf.train WORKSPACE``, read its output, stop or cancel it.

The process is started in its own process group (POSIX session / Windows process group) so that cancelling
can kill the whole tree (the trainer and anything it started) at once. Its output is read on a small thread
into a buffer the GUI polls; nothing here blocks. Progress itself comes from the workspace's status files
(see :mod:`.trainlogic`), so a run started elsewhere is followed the same way.

* :meth:`TrainingProcess.stop` asks the trainer to finish its step, save a model version and exit (the
  engine's ``STOP`` file, or SIGTERM).
* :meth:`TrainingProcess.cancel` kills the process tree at once and records in the workspace that the user
  cancelled (``status.json`` says ``stopped``, "cancelled by the user", and ``train.log`` says so too).
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["CANCELLED_MESSAGE", "TrainingProcess", "killTree", "pythonExecutable", "recordCancellation"]

logger = logging.getLogger(__name__)

CANCELLED_MESSAGE = "cancelled by the user"


def pythonExecutable() -> str:
    """The Python to run the trainer: Slicer's ``PythonSlicer`` when there is one, else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def _engineDir() -> str:
    """The folder holding the ``pesf`` package (shipped beside the module scripts inside Slicer)."""
    import pesf

    return str(Path(pesf.__file__).resolve().parent.parent)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def recordCancellation(workspace: str | os.PathLike[str], pid: int | None = None) -> None:
    """Write into the workspace that the user cancelled the run: ``status.json`` and ``train.log``.

    The status is rewritten only when it still shows an active run (of ``pid`` when given): a trainer that had
    already finished or stopped keeps its own final word.
    """
    from pesf.io.atomic import write_json_atomic
    from pesf.train.status import ACTIVE_STATES, read_status

    workspace = Path(workspace)
    status = read_status(workspace) or {}
    if status.get("state") in ACTIVE_STATES and (pid is None or status.get("pid") in (None, pid)):
        status.update(state="stopped", message=CANCELLED_MESSAGE, eta_s=None, updated=_now())
        write_json_atomic(workspace / "status.json", status)
    try:
        with open(workspace / "train.log", "a", encoding="utf-8") as log:
            log.write(f"{_now()} training {CANCELLED_MESSAGE} (process tree of pid {pid} killed)\n")
    except OSError as exc:
        logger.warning("could not record the cancellation in %s: %s", workspace, exc)


class TrainingProcess:
    """One training run in a subprocess.

    Args:
        workspace: the case store to train on.
        maxSteps: total steps (``--max-steps``), or ``None`` for the configuration's.
        configFile: a training settings JSON (``--config``), or ``None``.
        device: ``cpu``, ``cuda``... (``--device``), or ``None`` for the configuration's.
        python: the interpreter (default :func:`pythonExecutable`).
    """

    def __init__(
        self,
        workspace: str | os.PathLike[str],
        maxSteps: int | None = None,
        configFile: str | os.PathLike[str] | None = None,
        device: str | None = None,
        python: str | None = None,
    ) -> None:
        self.workspace = Path(workspace)
        self.command = [python or pythonExecutable(), "-m", "pesf.train", str(self.workspace)]
        if maxSteps is not None:
            self.command += ["--max-steps", str(int(maxSteps))]
        if configFile:
            self.command += ["--config", str(configFile)]
        if device:
            self.command += ["--device", device]
        self.cancelled = False
        self.stopRequested = False
        self._process: subprocess.Popen | None = None
        self._output: collections.deque[str] = collections.deque(maxlen=2000)
        self._new: collections.deque[str] = collections.deque()
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None

    # ------------------------------------------------------------------ launching
    def start(self) -> None:
        """Launch the trainer (returns at once)."""
        if self._process is not None:
            raise RuntimeError("this training process was already started")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_engineDir(), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        kwargs: dict = {}
        if os.name == "nt":  # pragma: no cover - Windows
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        else:
            kwargs["start_new_session"] = True
        logger.info("starting training: %s", " ".join(self.command))
        self._process = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=env,
            **kwargs,
        )
        self._reader = threading.Thread(target=self._read, name="PESF training output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = self._process.stdout
        for line in iter(stream.readline, ""):
            with self._lock:
                self._output.append(line.rstrip("\n"))
                self._new.append(line.rstrip("\n"))
        stream.close()

    # ------------------------------------------------------------------ state
    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def poll(self) -> int | None:
        """The exit code, or ``None`` while running (or before :meth:`start`)."""
        return self._process.poll() if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def state(self) -> str:
        """``new``, ``running``, ``finished`` (exit 0), ``stopped`` (stop request), ``cancelled`` or ``failed``."""
        if self._process is None:
            return "new"
        code = self._process.poll()
        if code is None:
            return "running"
        if self.cancelled:
            return "cancelled"
        if code == 0:
            return "stopped" if self.stopRequested else "finished"
        return "failed"

    def newOutput(self) -> list[str]:
        """Output lines printed since the last call."""
        with self._lock:
            lines = list(self._new)
            self._new.clear()
        return lines

    def outputTail(self, lines: int = 20) -> list[str]:
        with self._lock:
            return list(self._output)[-lines:]

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the process ends (tests and scripts); returns the exit code or ``None`` on timeout."""
        if self._process is None:
            return None
        try:
            code = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        if self._reader is not None:
            self._reader.join(5.0)
        return code

    # ------------------------------------------------------------------ ending
    def stop(self) -> None:
        """Ask the trainer to stop after its current step (it saves a model version and exits)."""
        if not self.running:
            return
        self.stopRequested = True
        from pesf.errors import PesfError
        from pesf.train.worker import request_stop

        try:
            request_stop(self.workspace)
        except PesfError:  # not holding its lock yet (still starting): signal it instead
            if os.name != "nt":
                os.kill(self._process.pid, signal.SIGTERM)
            else:  # pragma: no cover - Windows
                self._process.send_signal(signal.CTRL_BREAK_EVENT)

    def cancel(self, timeout: float = 10.0) -> None:
        """Kill the whole process tree now and record in the workspace that the user cancelled."""
        if self._process is None or self._process.poll() is not None:
            return
        self.cancelled = True
        pid = self._process.pid
        killTree(pid)
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("training process %d did not end within %g s after being killed", pid, timeout)
        recordCancellation(self.workspace, pid)


def killTree(pid: int) -> None:
    """Kill process ``pid`` and all its descendants (its process group, plus any child that left it)."""
    children = []
    try:
        import psutil

        children = psutil.Process(pid).children(recursive=True)
    except Exception:  # noqa: BLE001 - psutil missing or the process already gone: the group kill suffices
        children = []
    if os.name == "nt":  # pragma: no cover - Windows
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, check=False)
    else:
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for child in children:
        try:
            child.kill()
        except Exception:  # noqa: BLE001 - already gone
            pass
