"""The training panel of PESF Studio: PESF Train's Logic driven from the page.

:class:`PESFTrainLib.PESFTrainLogic` starts and stops the ``pesf train`` subprocess and follows any run on the
workspace through its files; its tables (cases, model versions) and curves (loss, validation Dice) are MRML
nodes. This class polls it and copies what it produced into trame state:

=======================  ===================================================================
``train_workspace``      the workspace folder (the case store)
``train_active``         a run is starting or running
``train_progress``       0..100; ``train_summary`` and ``train_eta`` say the rest
``train_loss_svg``       the loss curve, ``train_dice_svg`` the validation Dice curves (SVG)
``train_versions``       the model versions with their metrics and which one is in use
``train_cases``          how many cases the workspace holds
=======================  ===================================================================
"""

from __future__ import annotations

import logging
from pathlib import Path

from pesf.studio.svgplot import Series, line_chart

__all__ = ["TrainPanel"]

logger = logging.getLogger(__name__)


def _columns(table_node) -> dict[str, list]:
    """A table node's columns by name (numbers for numeric columns, strings otherwise)."""
    table = table_node.GetTable()
    out = {}
    for index in range(table.GetNumberOfColumns()):
        column = table.GetColumn(index)
        values = [column.GetValue(row) for row in range(table.GetNumberOfRows())]
        out[column.GetName()] = values
    return out


class TrainPanel:
    """The background trainer of one workspace: start, stop, progress, curves, versions.

    Args:
        studio: the :class:`~pesf.studio.app.StudioApp`.
        workspace: the workspace to open at start (optional).
        max_steps: default number of steps of a run (``None``: the trainer's configuration).
    """

    def __init__(self, studio, workspace: str | None = None, max_steps: int | None = None) -> None:
        from PESFTrainLib import PESFTrainLogic, TrainEvent

        self.studio = studio
        self.state = studio.state
        self._events = TrainEvent
        self.logic = PESFTrainLogic(studio.scene.scene, eventCallback=self._on_event)
        self.state.update(
            {
                "train_workspace": str(workspace or ""),
                "train_open": "",
                "train_max_steps": max_steps,
                "train_active": False,
                "train_state": "idle",
                "train_progress": 0,
                "train_summary": "No workspace yet: choose a folder, or send a case to training.",
                "train_eta": "",
                "train_loss_svg": line_chart([], "training loss"),
                "train_dice_svg": line_chart([], "validation Dice"),
                "train_versions": [],
                "train_cases": 0,
            }
        )

    # ------------------------------------------------------------------ workspace
    def set_workspace(self, path: str | None = None) -> None:
        """Follow the workspace at ``path`` (an empty or new folder becomes an empty workspace)."""
        from pesf.train.store import CaseStore

        text = (path if path is not None else self.state.train_workspace or "").strip()
        if not text:
            raise ValueError("Type the folder of a training workspace.")
        folder = Path(text).expanduser()
        if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
            CaseStore(folder, create=True)
        self.logic.setWorkspace(folder)
        self.state.train_workspace = str(folder)
        self.refresh_cases()
        self.poll()

    def refresh_cases(self) -> None:
        if self.logic.workspace is not None:
            case_ids = next(iter(_columns(self.logic.updateCasesTable()).values()), [])
            self.state.train_cases = len(set(case_ids))

    # ------------------------------------------------------------------ the run
    def start(self, workspace: str | None = None, max_steps: int | str | None = None) -> None:
        """Start the trainer on ``workspace`` (default: the one followed) for ``max_steps`` steps (default:
        its configuration's)."""
        if workspace and (
            self.logic.workspace is None or Path(workspace).expanduser() != self.logic.workspace
        ):
            self.set_workspace(workspace)
        elif self.logic.workspace is None:
            self.set_workspace()
        steps = None if max_steps in (None, "") else int(max_steps)
        if steps is not None and steps < 1:
            raise ValueError(f"The number of steps must be at least 1, got {steps}.")
        self.logic.startTraining(maxSteps=steps)
        self.state.train_active = True
        self.studio.report("Training started in the background.")

    def stop(self) -> None:
        """Ask the run to finish its step and save a model version."""
        if not self.logic.running:
            raise ValueError("No training run started from this page is running.")
        self.logic.stopTraining()
        self.studio.report("Stopping: the trainer saves a model version, then exits.")

    def use_version(self, version: str):
        """Make ``version`` the model PESF Segment and Studio use; returns its ``ModelChoice``."""
        choice = self.logic.useVersion(version)
        self.poll()
        return choice

    def _on_event(self, event, info: dict) -> None:
        if event == self._events.ERROR:
            self.studio.report(info.get("message", "training error"), error=True)
        elif event == self._events.ENDED:
            self.studio.report(f"Training {info.get('state', 'ended')}.")

    # ------------------------------------------------------------------ polling
    def poll(self) -> None:
        """Read the workspace's status, curves and versions into the page (cheap when nothing changed)."""
        if self.logic.workspace is None:
            return
        progress = self.logic.poll()
        self.state.train_state = progress.state
        self.state.train_active = progress.active or self.logic.running
        self.state.train_progress = round(100.0 * progress.fraction, 1)
        self.state.train_summary = progress.summary()
        self.state.train_eta = progress.etaText()
        self._copy_curves()
        self._copy_versions()

    def _copy_curves(self) -> None:
        curves = self.logic.curves
        if curves is None:
            return
        loss = _columns(curves.lossTable)
        dice = _columns(curves.diceTable)
        steps = dice.pop("step", [])
        self.state.train_loss_svg = line_chart(
            [Series("loss", loss.get("step", []), loss.get("loss", []))], "training loss"
        )
        self.state.train_dice_svg = line_chart(
            [Series(name.replace("_", " "), steps, values) for name, values in dice.items()],
            "validation Dice",
        )

    def _copy_versions(self) -> None:
        table = self.logic.versionsTable
        if table is None:
            return
        columns = list(_columns(table).values())
        rows = list(zip(*columns, strict=True)) if columns else []
        self.state.train_versions = [
            {
                "version": row[0],
                "step": row[1],
                "loss": row[2],
                "dice_first": row[3],
                "dice_last": row[4],
                "active": bool(row[5]),
            }
            for row in rows
        ]

    def status(self) -> dict:
        return {
            "workspace": str(self.logic.workspace or ""),
            "state": self.state.train_state,
            "progress": self.state.train_progress,
            "versions": [v["version"] for v in self.state.train_versions],
        }

    def cleanup(self) -> None:
        self.logic.cleanup()
