"""What a training run reports: its event records, the status file, the learning curves, the log and the console.

Observers (PESFTrain in Slicer, PESF Studio, ``pesf train --stop --wait``) poll ``WORKSPACE/status.json``,
replaced atomically, so they always read a complete file::

    {"state": "running",          # starting | running | finished | stopped | failed
     "pid": 4242,                 # the training process (rank 0 under torchrun)
     "epoch": 3,                  # completed passes over the training samples
     "step": 120, "total_steps": 1000,
     "loss": 0.412,               # last step's loss (mean over ranks), null before the first step
     "val_dice": {"click_1": 0.71, "click_3": 0.83},   # last validation, null before the first
     "eta_s": 1530.0,             # estimated seconds to the end, null while unknown
     "model_version": "v2",       # newest version written by this run, null before the first
     "message": "resumed from step 100",
     "started": "2025-01-01T10:00:00+00:00", "updated": "2025-01-01T10:20:00+00:00",
     "device": "cpu", "world_size": 1}

The learning curves go to ``curves.json`` (raw numbers) and ``curves.png`` (loss and validation Dice vs step).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pesf.io.atomic import atomic_path, write_json_atomic

__all__ = [
    "ACTIVE_STATES",
    "STATES",
    "CheckpointRequest",
    "Curves",
    "CurvesHandler",
    "LogHandler",
    "ProgressHandler",
    "RunOutcome",
    "StatusFile",
    "StatusHandler",
    "StepResult",
    "ValidationResult",
    "read_status",
    "run_log",
]

logger = logging.getLogger(__name__)

STATES = ("starting", "running", "finished", "stopped", "failed")
ACTIVE_STATES = ("starting", "running")


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------- event records
@dataclass
class StepResult:
    """One optimizer step: ``loss`` is the mean over ranks, ``click_losses`` one per click iteration."""

    step: int
    total_steps: int
    loss: float
    click_losses: list[float]
    lr: float
    epoch: int
    samples: list[str]
    seconds: float


@dataclass
class ValidationResult:
    """Mean Dice on the held-back samples after 1 and after ``val_clicks`` clicks (``dice``), and per sample
    (``per_sample``: ``"case/organ"`` -> Dice after click 1, 2, ...)."""

    step: int
    dice: dict[str, float]
    per_sample: dict[str, list[float]]
    seconds: float


@dataclass
class CheckpointRequest:
    """What to write at ``step``: resumable ``state``, a model ``version``, or both; ``reason`` says why."""

    step: int
    state: bool
    version: bool
    reason: str


@dataclass
class RunOutcome:
    """How a run ended: ``state`` is ``"finished"`` or ``"stopped"``."""

    state: str
    step: int
    total_steps: int
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- status file
def read_status(workspace: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The workspace's ``status.json``, or ``None`` when it is missing or unreadable."""
    path = Path(workspace) / "status.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _finite(value: float | None, digits: int = 6) -> float | None:
    if value is None or not math.isfinite(float(value)):
        return None
    return round(float(value), digits)


class StatusFile:
    """Writes ``status.json`` atomically, at most once per ``min_interval_s`` unless forced.

    Args:
        path: the status file.
        device: the training device, as text.
        total_steps: steps of the run.
        world_size: processes of the run.
        min_interval_s: throttle of unforced updates.
    """

    def __init__(
        self, path: Path, device: str, total_steps: int, world_size: int = 1, min_interval_s: float = 1.0
    ) -> None:
        self.path = Path(path)
        self.min_interval_s = float(min_interval_s)
        self.data: dict[str, Any] = {
            "state": "starting",
            "pid": os.getpid(),
            "epoch": 0,
            "step": 0,
            "total_steps": int(total_steps),
            "loss": None,
            "val_dice": None,
            "eta_s": None,
            "model_version": None,
            "message": "",
            "started": now_iso(),
            "updated": now_iso(),
            "device": device,
            "world_size": int(world_size),
        }
        self._last_write = -math.inf

    def update(self, force: bool = False, **fields: Any) -> bool:
        """Merge ``fields``; write when forced or when ``min_interval_s`` has passed. Returns whether it wrote.

        A failed write (e.g. a full disk) is logged, not raised: the status is advisory.
        """
        unknown = set(fields) - set(self.data)
        if unknown:
            raise KeyError(f"unknown status fields: {', '.join(sorted(unknown))}")
        self.data.update(fields)
        now = time.monotonic()
        if not force and now - self._last_write < self.min_interval_s:
            return False
        self.data["updated"] = now_iso()
        try:
            write_json_atomic(self.path, self.data)
        except OSError as exc:
            logger.warning("could not write %s: %s", self.path, exc)
            return False
        self._last_write = now
        return True


class StatusHandler:
    """Trainer handler that keeps ``status.json`` current (``running`` with loss, Dice, ETA; final state)."""

    def __init__(self, status: StatusFile) -> None:
        self.status = status
        self._t0: float | None = None
        self._first_step: int = 0

    def on_start(self, trainer: Any) -> None:
        self._t0, self._first_step = time.monotonic(), trainer.step
        message = f"resumed from step {trainer.step}" if trainer.resumed_from else "training"
        self.status.update(
            force=True, state="running", step=trainer.step, epoch=trainer.epoch, message=message
        )

    def on_step_end(self, trainer: Any, result: StepResult) -> None:
        eta = None
        done = result.step - self._first_step
        if self._t0 is not None and done > 0:
            eta = (time.monotonic() - self._t0) / done * (result.total_steps - result.step)
        self.status.update(
            step=result.step, epoch=result.epoch, loss=_finite(result.loss), eta_s=_finite(eta, 1)
        )

    def on_validation_end(self, trainer: Any, result: ValidationResult) -> None:
        self.status.update(val_dice={k: _finite(v, 4) for k, v in result.dice.items()})

    def on_checkpoint(self, trainer: Any, request: CheckpointRequest) -> None:
        self.status.update(force=True)

    def on_end(self, trainer: Any, outcome: RunOutcome) -> None:
        self.status.update(
            force=True,
            state=outcome.state,
            step=outcome.step,
            epoch=trainer.epoch,
            eta_s=0.0,
            message=outcome.message,
        )


# ---------------------------------------------------------------------------------------------- curves
@dataclass
class Curves:
    """Loss per step and validation Dice per validation, as plain lists (saved in the resumable state)."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    val_step: list[int] = field(default_factory=list)
    val_dice: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": list(self.step),
            "loss": list(self.loss),
            "lr": list(self.lr),
            "val_step": list(self.val_step),
            "val_dice": {k: list(v) for k, v in self.val_dice.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, up_to_step: int | None = None) -> Curves:
        """Inverse of :meth:`to_dict`, keeping only points at or before ``up_to_step``."""
        if not data:
            return cls()
        keep = [i for i, s in enumerate(data.get("step", [])) if up_to_step is None or s <= up_to_step]
        vkeep = [i for i, s in enumerate(data.get("val_step", [])) if up_to_step is None or s <= up_to_step]
        return cls(
            step=[int(data["step"][i]) for i in keep],
            loss=[float(data["loss"][i]) for i in keep],
            lr=[float(data.get("lr", [0.0] * len(data["step"]))[i]) for i in keep],
            val_step=[int(data["val_step"][i]) for i in vkeep],
            val_dice={k: [float(v[i]) for i in vkeep] for k, v in data.get("val_dice", {}).items()},
        )

    def save(self, folder: Path, plot: bool = True) -> None:
        """Write ``curves.json`` and (with ``plot``) ``curves.png`` into ``folder``, atomically."""
        json_ready = self.to_dict()
        json_ready["loss"] = [_finite(v) for v in self.loss]
        write_json_atomic(folder / "curves.json", json_ready, indent=None)
        if plot:
            self.plot(folder / "curves.png")

    def plot(self, path: Path) -> None:
        """Loss (left) and validation Dice (right) against the step, as a PNG (matplotlib, Agg)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(9, 3.5), dpi=100)
        FigureCanvasAgg(fig)
        ax_loss, ax_dice = fig.subplots(1, 2)
        if self.step:
            ax_loss.plot(self.step, self.loss, lw=0.8, color="tab:blue", alpha=0.5, label="step")
            if len(self.loss) >= 10:
                k = max(2, len(self.loss) // 20)
                smooth = [
                    sum(self.loss[max(0, i - k + 1) : i + 1]) / min(k, i + 1) for i in range(len(self.loss))
                ]
                ax_loss.plot(self.step, smooth, lw=1.5, color="tab:blue", label=f"mean of {k}")
            ax_loss.legend(loc="upper right", fontsize=8)
        ax_loss.set(xlabel="step", ylabel="loss (Dice + CE)", title="training loss")
        for name, values in sorted(self.val_dice.items()):
            ax_dice.plot(self.val_step, values, marker="o", ms=3, label=name.replace("_", " "))
        if self.val_dice:
            ax_dice.legend(loc="lower right", fontsize=8)
        ax_dice.set(xlabel="step", ylabel="Dice", title="validation Dice", ylim=(0.0, 1.0))
        for ax in (ax_loss, ax_dice):
            ax.grid(alpha=0.3)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")


class CurvesHandler:
    """Trainer handler that records the curves and writes them at validations, checkpoints and the end."""

    def __init__(self, folder: Path, curves: Curves | None = None, plot_every_s: float = 30.0) -> None:
        self.folder = Path(folder)
        self.curves = curves or Curves()
        self.plot_every_s = float(plot_every_s)
        self._plotted = -math.inf

    def on_step_end(self, trainer: Any, result: StepResult) -> None:
        self.curves.step.append(result.step)
        self.curves.loss.append(float(result.loss))
        self.curves.lr.append(float(result.lr))

    def on_validation_end(self, trainer: Any, result: ValidationResult) -> None:
        self.curves.val_step.append(result.step)
        for name, value in result.dice.items():
            self.curves.val_dice.setdefault(name, []).append(float(value))
        self._save()

    def on_checkpoint(self, trainer: Any, request: CheckpointRequest) -> None:
        self._save()

    def on_end(self, trainer: Any, outcome: RunOutcome) -> None:
        self._save(force_plot=True)

    def _save(self, force_plot: bool = False) -> None:
        """``curves.json`` every time; ``curves.png`` at most every ``plot_every_s`` unless forced."""
        plot = force_plot or time.monotonic() - self._plotted >= self.plot_every_s
        try:
            self.curves.save(self.folder, plot=plot)
        except OSError as exc:  # the curves are a convenience; never fail a run over them
            logger.warning("could not write the learning curves: %s", exc)
            return
        if plot:
            self._plotted = time.monotonic()


# ---------------------------------------------------------------------------------------------- console and log file
class ProgressHandler:
    """A tqdm bar on stderr (hidden when stderr is not a terminal)."""

    def __init__(self) -> None:
        self.bar: Any = None

    def on_start(self, trainer: Any) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=trainer.total_steps,
            initial=trainer.step,
            desc="train",
            unit="step",
            disable=not sys.stderr.isatty(),
        )

    def on_step_end(self, trainer: Any, result: StepResult) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{result.loss:.4f}", refresh=False)

    def on_end(self, trainer: Any, outcome: RunOutcome) -> None:
        self.bar.close()


class LogHandler:
    """Writes the run's progress into the log: about 200 step lines per run, every validation."""

    def on_start(self, trainer: Any) -> None:
        plan = trainer.plan
        start = f"resuming at step {trainer.step}" if trainer.resumed_from else "starting"
        logger.info(
            "=== run %s (pid %d): %d steps on %s x %d, model %s",
            start,
            os.getpid(),
            trainer.total_steps,
            trainer.device,
            trainer.dist.world_size,
            trainer.model.config.name,
        )
        logger.info(
            "samples: %d for training (cases: %d), %d for validation (cases: %s), %d dropped",
            len(plan.train),
            len({i.case_id for i in plan.train}),
            len(plan.val),
            ", ".join(plan.val_cases) or "none",
            len(plan.dropped),
        )
        for item in plan.dropped:
            logger.info("dropped %s: %s", item.key, item.reason)

    def on_step_end(self, trainer: Any, result: StepResult) -> None:
        every = max(1, result.total_steps // 200)
        if result.step % every == 0 or result.step == result.total_steps:
            logger.info(
                "step %d/%d loss %.4f (per click %s) lr %.2e %.2f s [%s]",
                result.step,
                result.total_steps,
                result.loss,
                ", ".join(f"{v:.3f}" for v in result.click_losses),
                result.lr,
                result.seconds,
                ", ".join(result.samples),
            )

    def on_validation_end(self, trainer: Any, result: ValidationResult) -> None:
        dice = ", ".join(f"{k} {v:.4f}" for k, v in result.dice.items())
        logger.info("validation at step %d: Dice %s (%.1f s)", result.step, dice, result.seconds)

    def on_end(self, trainer: Any, outcome: RunOutcome) -> None:
        logger.info("%s", outcome.message)


@contextlib.contextmanager
def run_log(path: Path | None) -> Iterator[None]:
    """Send the ``pesf`` loggers' INFO records to ``path``; the console keeps its own level."""
    if path is None:
        yield
        return
    root = logging.getLogger("pesf")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console_level = root.getEffectiveLevel()
    quiet = {h: h.level for h in logging.getLogger().handlers if h.level < console_level}
    for h in quiet:
        h.setLevel(console_level)  # raising the pesf level to INFO must not flood the console
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(min(console_level, logging.INFO))
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
        for h, level in quiet.items():
            h.setLevel(level)
