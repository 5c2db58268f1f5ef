"""PESF Train's Logic: a workspace's cases, its training run and model versions, as MRML nodes.

Follows a run only through the workspace's files, so a run started by hand, by PESF Studio or by another
Slicer is followed too: ``status.json`` (progress, ETA, loss, Dice), ``curves.json`` (plots), ``train.log``
(the log) and ``models/vN`` (versions). :meth:`PESFTrainLogic.poll` reads what changed and is cheap; a GUI
calls it from a timer. Starting, stopping and cancelling go through :class:`~.process.TrainingProcess`.
"""

from __future__ import annotations

import enum
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import slicer
from PESFSegmentLib.modelchoice import activeTrainedModel, setActiveTrainedModel
from PESFSegmentLib.translation import _

from .plots import TrainingCurves, readCurves
from .process import TrainingProcess
from .tables import fillCasesTable, fillVersionsTable

__all__ = ["PESFTrainLogic", "TrainEvent", "TrainingProgress", "progressFromStatus"]

logger = logging.getLogger(__name__)

_LOG_FIRST_READ = 64 * 1024


class TrainEvent(enum.Enum):
    """What :class:`PESFTrainLogic` reports to its ``eventCallback`` (``info`` holds the details)."""

    STARTED = "started"  # command
    PROGRESS = "progress"  # progress
    ENDED = "ended"  # state, message
    VERSION_USED = "versionUsed"  # version, path
    ERROR = "error"  # message


@dataclass
class TrainingProgress:
    """A run's progress as read from ``status.json`` (``state`` is ``idle`` when there is no run)."""

    state: str = "idle"
    step: int = 0
    totalSteps: int = 0
    loss: float | None = None
    valDice: dict | None = None
    etaSeconds: float | None = None
    modelVersion: str | None = None
    message: str = ""
    device: str = ""
    pid: int | None = None

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.totalSteps) if self.totalSteps else 0.0

    @property
    def active(self) -> bool:
        return self.state in ("starting", "running")

    def etaText(self) -> str:
        if self.etaSeconds is None or not self.active:
            return ""
        minutes, seconds = divmod(int(round(self.etaSeconds)), 60)
        hours, minutes = divmod(minutes, 60)
        if hours:
            return _("{hours} h {minutes} min").format(hours=hours, minutes=minutes)
        if minutes:
            return _("{minutes} min {seconds} s").format(minutes=minutes, seconds=seconds)
        return _("{seconds} s").format(seconds=seconds)

    def summary(self) -> str:
        """One line for the status label."""
        if self.state == "idle":
            return _("No training run in this workspace yet.")
        parts = [
            _("{state}: step {step} of {total}").format(
                state=self.state, step=self.step, total=self.totalSteps
            )
        ]
        if self.loss is not None:
            parts.append(_("loss {loss:.3f}").format(loss=self.loss))
        if self.valDice:
            last = sorted(self.valDice)[-1]
            if self.valDice[last] is not None:
                parts.append(
                    _("Dice {dice:.3f} ({clicks})").format(
                        dice=self.valDice[last], clicks=last.replace("_", " ")
                    )
                )
        if self.etaText():
            parts.append(_("about {eta} left").format(eta=self.etaText()))
        if self.message and not self.message.startswith(self.state):
            parts.append(self.message)
        return ", ".join(parts)


def _pidAlive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        import psutil

        return psutil.pid_exists(pid)
    except ImportError:
        pass
    if os.name == "nt":  # pragma: no cover - no cheap check without psutil
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def progressFromStatus(status: dict | None) -> TrainingProgress:
    """A :class:`TrainingProgress` from a ``status.json`` dict (``idle`` for ``None``); an active status whose
    process is gone becomes ``interrupted``."""
    if not status:
        return TrainingProgress()

    def number(key, cast=float):
        value = status.get(key)
        try:
            return cast(value) if value is not None else None
        except (TypeError, ValueError):
            return None

    progress = TrainingProgress(
        state=str(status.get("state") or "idle"),
        step=number("step", int) or 0,
        totalSteps=number("total_steps", int) or 0,
        loss=number("loss"),
        valDice=status.get("val_dice") if isinstance(status.get("val_dice"), dict) else None,
        etaSeconds=number("eta_s"),
        modelVersion=status.get("model_version"),
        message=str(status.get("message") or ""),
        device=str(status.get("device") or ""),
        pid=number("pid", int),
    )
    if progress.active and not _pidAlive(progress.pid):
        progress.state = "interrupted"
        progress.message = _("the trainer is no longer running; start it again to resume")
    return progress


class PESFTrainLogic:
    """The training side of PESF: cases, background run, curves, model versions.

    Args:
        scene: the MRML scene (default ``slicer.mrmlScene``).
        eventCallback: ``callback(event: TrainEvent, info: dict)``, called from :meth:`poll` and the actions.
    """

    def __init__(self, scene=None, eventCallback: Callable[[TrainEvent, dict], None] | None = None):
        if scene is None:
            scene = getattr(slicer, "mrmlScene", None)
        if scene is None:
            raise ValueError("PESFTrainLogic needs an MRML scene")
        self.scene = scene
        self.eventCallback = eventCallback
        self.workspace: Path | None = None
        self.process: TrainingProcess | None = None
        self.casesTable = None
        self.versionsTable = None
        self.curves: TrainingCurves | None = None
        self._curvesStamp = None
        self._logOffset = 0
        self._logStarted = False
        self._lastVersion = None
        self._endReported = True

    def _emit(self, event: TrainEvent, **info) -> None:
        if self.eventCallback is not None:
            self.eventCallback(event, info)

    # ------------------------------------------------------------------ workspace
    def setWorkspace(self, path: str | os.PathLike[str]) -> None:
        """Follow the case store at ``path``.

        Raises:
            pesf.errors.PesfError: ``path`` is not a PESF workspace.
        """
        from pesf.train.store import CaseStore

        CaseStore(Path(path).expanduser())  # checks it is a workspace
        self.workspace = Path(path).expanduser()
        self._curvesStamp, self._logOffset, self._logStarted, self._lastVersion = None, 0, False, None
        self.updateCasesTable()
        self.updateVersionsTable()

    def _requireWorkspace(self) -> Path:
        if self.workspace is None:
            raise ValueError(_("Choose a workspace first."))
        return self.workspace

    def updateCasesTable(self):
        """Refill the cases table (one row per case and organ, with status and confidence); returns it."""
        from pesf.train.store import CaseStore

        if self.casesTable is None:
            self.casesTable = self.scene.AddNewNodeByClass("vtkMRMLTableNode", "PESF training cases")
        fillCasesTable(self.casesTable, CaseStore(self._requireWorkspace()).list_cases())
        return self.casesTable

    def modelVersions(self) -> list[dict]:
        """The workspace's complete model versions, oldest first: ``version``, ``path`` and their metrics."""
        from pesf.train.worker import list_versions

        versions = []
        for number, folder in list_versions(self._requireWorkspace()):
            try:
                metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                metrics = {}
            versions.append({"version": f"v{number}", "path": folder / "model.pt", "metrics": metrics})
        return versions

    def updateVersionsTable(self):
        """Refill the model versions table (step, loss, validation Dice, which one PESF Segment uses)."""
        if self.versionsTable is None:
            self.versionsTable = self.scene.AddNewNodeByClass("vtkMRMLTableNode", "PESF model versions")
        active = activeTrainedModel(self.scene, self._requireWorkspace())
        fillVersionsTable(self.versionsTable, self.modelVersions(), active.version if active else None)
        return self.versionsTable

    def useVersion(self, version: str):
        """Make PESF Segment use a trained version (shared scene setting and ``active_model.json``)."""
        match = [v for v in self.modelVersions() if v["version"] == version]
        if not match:
            raise ValueError(_("Model version {version} is not in this workspace.").format(version=version))
        setActiveTrainedModel(self.scene, self.workspace, version, str(match[0]["path"]))
        self.updateVersionsTable()
        self._emit(TrainEvent.VERSION_USED, version=version, path=str(match[0]["path"]))
        return activeTrainedModel(self.scene, self.workspace)

    # ------------------------------------------------------------------ the run
    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    def startTraining(
        self,
        maxSteps: int | None = None,
        configFile: str | None = None,
        device: str | None = None,
        python: str | None = None,
    ) -> TrainingProcess:
        """Launch the trainer on the workspace in the background (returns at once).

        Raises:
            ValueError: no workspace, no cases, or a trainer already running on it.
        """
        from pesf.train.status import read_status
        from pesf.train.store import CaseStore

        workspace = self._requireWorkspace()
        if self.running:
            raise ValueError(_("Training is already running."))
        current = progressFromStatus(read_status(workspace))
        if current.active:
            raise ValueError(
                _("A trainer (process {pid}) is already running on this workspace.").format(pid=current.pid)
            )
        if not CaseStore(workspace).case_ids():
            raise ValueError(_("The workspace has no cases yet: send cases from PESF Segment first."))
        self.process = TrainingProcess(workspace, maxSteps, configFile, device, python)
        self.process.start()
        self._endReported = False
        self._emit(TrainEvent.STARTED, command=" ".join(self.process.command))
        return self.process

    def stopTraining(self) -> None:
        """Ask the run to stop after its current step (it saves a model version)."""
        if self.process is not None:
            self.process.stop()

    def cancelTraining(self) -> None:
        """Kill the run's process tree at once and record that the user cancelled."""
        if self.process is not None:
            self.process.cancel()

    def poll(self) -> TrainingProgress:
        """Read the workspace's status, curves, log and versions; report the run's end once."""
        from pesf.train.status import read_status

        workspace = self._requireWorkspace()
        progress = progressFromStatus(read_status(workspace))
        process = self.process
        if process is not None and process.state == "cancelled":
            progress.state, progress.message = "cancelled", _("cancelled by the user")
        self._updateCurves(workspace)
        if progress.modelVersion != self._lastVersion:
            self._lastVersion = progress.modelVersion
            self.updateVersionsTable()
        self._emit(TrainEvent.PROGRESS, progress=progress)
        if process is not None and not process.running and not self._endReported:
            self._endReported = True
            self._reportEnd(process, progress)
        return progress

    def _reportEnd(self, process: TrainingProcess, progress: TrainingProgress) -> None:
        state = process.state
        self.updateVersionsTable()
        if state == "failed":
            reason = progress.message if progress.state == "failed" else ""
            tail = [line for line in process.outputTail(10) if line.strip()]
            message = reason or (tail[-1] if tail else _("exit code {code}").format(code=process.poll()))
            self._emit(TrainEvent.ERROR, message=_("Training failed: {message}").format(message=message))
        self._emit(TrainEvent.ENDED, state=state, message=progress.message)

    def _updateCurves(self, workspace: Path) -> None:
        path = workspace / "curves.json"
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            stamp = None
        if stamp == self._curvesStamp and self.curves is not None:
            return
        self._curvesStamp = stamp
        if self.curves is None:
            self.curves = TrainingCurves(self.scene)
        self.curves.update((readCurves(path) if stamp is not None else None) or {})

    def newLogLines(self) -> list[str]:
        """Lines added to ``train.log`` since the last call (the first call gives the end of the log)."""
        path = self._requireWorkspace() / "train.log"
        try:
            size = path.stat().st_size
            if size < self._logOffset:  # replaced or truncated: read it again
                self._logOffset, self._logStarted = 0, False
            start = self._logOffset if self._logStarted else max(0, size - _LOG_FIRST_READ)
            with open(path, "rb") as stream:
                stream.seek(start)
                data = stream.read(size - start)
        except OSError:
            return []
        complete = data.rfind(b"\n") + 1  # a half-written last line waits for the next call
        lines = data[:complete].decode("utf-8", errors="replace").splitlines()
        if not self._logStarted and start > 0:
            lines = lines[1:]  # the first line read from the middle of the file is partial
        self._logOffset, self._logStarted = start + complete, True
        return lines

    def cleanup(self) -> None:
        """Leave a running trainer running (it is a separate process), forget it here."""
        self.process = None
