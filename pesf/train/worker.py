"""The background training process: one trainer per workspace, stoppable, resumable, never half-written.

``pesf train WORKSPACE`` (or ``python -m pesf.train WORKSPACE``, or the same under ``torchrun``) runs
:func:`run_training` in the calling process, which Slicer or Studio start as a subprocess. The workspace::

    WORKSPACE/
      cases/ ...              the case store (pesf.train.store)
      trainer.lock            held (flock) by the running trainer for its whole life
      status.json             progress, replaced atomically (schema in pesf.train.status)
      train.log               the run's log
      curves.json, curves.png loss and validation Dice against the step
      STOP                    written by `pesf train WORKSPACE --stop`: stop after the current step
      state/last.pt           resumable state (weights-only loadable), written atomically
      models/v1/              model.pt (pesf.load_model), metrics.json, card.json; built in
                              models/.tmp-v1-XXXX/ and renamed, so a version is complete or absent

A stop request (the STOP file, SIGTERM, or Ctrl-C once) finishes the current step, saves the state and a
model version, and ends in state ``stopped``. After a crash or SIGKILL, the next run resumes from
``state/last.pt``. Under ``torchrun`` only rank 0 holds the lock and writes files.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import torch

from pesf.errors import PesfError
from pesf.io.atomic import atomic_path, write_json_atomic, write_text_atomic
from pesf.train.config import TrainConfig, load_config
from pesf.train.distributed import DistContext, setup_distributed
from pesf.train.status import (
    ACTIVE_STATES,
    CheckpointRequest,
    Curves,
    CurvesHandler,
    LogHandler,
    ProgressHandler,
    RunOutcome,
    StatusFile,
    StatusHandler,
    now_iso,
    read_status,
    run_log,
)
from pesf.train.store_io import try_lock

__all__ = [
    "CheckpointHandler",
    "TrainerLock",
    "latest_version",
    "list_versions",
    "request_stop",
    "resolve_base_model",
    "run_training",
]

logger = logging.getLogger(__name__)

STOP_FILE, LOCK_FILE, STATUS_FILE, LOG_FILE = "STOP", "trainer.lock", "status.json", "train.log"
STATE_FILE = Path("state") / "last.pt"
_VERSION_RE = re.compile(r"^v(\d+)$")


# ---------------------------------------------------------------------------------------------- lock
class TrainerLock:
    """An exclusive OS lock on ``WORKSPACE/trainer.lock``, released when the process ends, however it ends."""

    def __init__(self, workspace: Path) -> None:
        self.path = Path(workspace) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise a :class:`PesfError` naming the running trainer's pid."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if not try_lock(fd):
            os.close(fd)
            pid = self.holder()
            raise PesfError(
                f"another trainer (pid {pid}) is already running on {self.path.parent}; stop it with "
                f"`pesf train {self.path.parent} --stop` or wait until it finishes"
            )
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def holder(self) -> str:
        """The pid of the process holding the lock, as it wrote it (else the one in status.json)."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            return str(int(self.path.read_text().split()[0]))
        return str((read_status(self.path.parent) or {}).get("pid") or "unknown")

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None

    @staticmethod
    def is_held(workspace: Path) -> bool:
        """Whether some process holds the lock of ``workspace`` now."""
        path = Path(workspace) / LOCK_FILE
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDWR)
        try:
            return not try_lock(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------------------- stopping
def request_stop(workspace: str | os.PathLike[str], wait: bool = False, timeout_s: float = 600.0) -> dict:
    """Ask the trainer of ``workspace`` to stop after its current step (writes ``WORKSPACE/STOP``).

    Args:
        workspace: the workspace.
        wait: wait until the status leaves ``starting``/``running`` (or the trainer process is gone).
        timeout_s: how long to wait.

    Returns:
        The last status read (``{}`` when there is none).

    Raises:
        PesfError: no such workspace, no trainer running, or the wait timed out.
    """
    root = Path(workspace).expanduser()
    if not root.is_dir():
        raise PesfError(f"workspace {root} does not exist")
    if not TrainerLock.is_held(root):
        status = read_status(root) or {}
        raise PesfError(f"no trainer is running on {root} (last state: {status.get('state', 'none')})")
    write_text_atomic(root / STOP_FILE, f"stop requested by pid {os.getpid()} at {now_iso()}\n")
    status = read_status(root) or {}
    deadline = time.monotonic() + timeout_s
    while wait and status.get("state", "starting") in ACTIVE_STATES and TrainerLock.is_held(root):
        if time.monotonic() > deadline:
            raise PesfError(
                f"the trainer on {root} did not stop within {timeout_s:g} s (state {status.get('state')})"
            )
        time.sleep(0.2)
        status = read_status(root) or status
    return status


class _StopSignals:
    """SIGTERM and the first Ctrl-C set a flag instead of killing the process (main thread only)."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        logger.warning("%s received: stopping after the current step", self.received)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------- versions
def list_versions(workspace: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``(number, folder)`` of the complete model versions ``models/vN`` (with a ``model.pt``), ascending."""
    models = Path(workspace) / "models"
    found = []
    for entry in models.iterdir() if models.is_dir() else []:
        match = _VERSION_RE.match(entry.name)
        if match and (entry / "model.pt").is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_version(workspace: str | os.PathLike[str]) -> Path | None:
    """The ``model.pt`` of the newest version in the workspace, or ``None``."""
    versions = list_versions(workspace)
    return versions[-1][1] / "model.pt" if versions else None


def resolve_base_model(base_model: str, workspace: Path) -> str | Path:
    """``latest`` becomes the newest version's ``model.pt`` (``default`` when there is none)."""
    if base_model != "latest":
        return base_model
    return latest_version(workspace) or "default"


def _git_commit() -> str | None:
    """The commit of the source tree ``pesf`` runs from, if it is a git checkout (not an installed copy)."""
    source = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel", "HEAD"],
            cwd=source,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split()
    if out.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != source:
        return None  # not a checkout, or site-packages inside some other repository
    return lines[1]


class CheckpointHandler:
    """Trainer handler writing model versions and the resumable state, atomically.

    A failed write (a full disk, ...) removes what it started and raises a :class:`PesfError`; the previous
    version and state stay as they were.
    """

    def __init__(
        self, workspace: Path, run: dict[str, Any], curves: Curves, status: StatusFile | None
    ) -> None:
        self.workspace = workspace
        self.run = run
        self.curves = curves
        self.status = status

    def on_checkpoint(self, trainer: Any, request: CheckpointRequest) -> None:
        try:
            if request.version:
                self.write_version(trainer)
            if request.state:
                self.write_state(trainer, finished=request.reason == "finished")
        except OSError as exc:
            raise _disk_error(exc, self.workspace, request.step) from None

    def write_state(self, trainer: Any, finished: bool = False) -> Path:
        payload = {
            "trainer": trainer.state_dict(),
            "curves": self.curves.to_dict(),
            "run": dict(self.run),
            "finished": bool(finished),
        }
        path = self.workspace / STATE_FILE
        path.parent.mkdir(exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        logger.info("saved the resumable state of step %d", trainer.step)
        return path

    def write_version(self, trainer: Any) -> Path:
        from pesf import __version__
        from pesf.models import save_checkpoint

        models = self.workspace / "models"
        models.mkdir(exist_ok=True)
        number = (list_versions(self.workspace) or [(0, None)])[-1][0] + 1
        name = f"v{number}"
        val = trainer.last_validation
        metrics = {
            "version": name,
            "step": trainer.step,
            "total_steps": trainer.total_steps,
            "epoch": trainer.epoch,
            "loss": trainer.last_loss,
            "loss_recent_mean": _mean(self.curves.loss[-20:]),
            "val_step": val.step if val else None,
            "val_dice": val.dice if val else None,
            "val_per_sample": val.per_sample if val else None,
        }
        card = {
            "version": name,
            "created": now_iso(),
            "base_model": self.run["base_model"],
            "architecture": trainer.model.config.name,
            "data": trainer.plan.summary(),
            "settings": trainer.config.to_dict(),
            "code": {"pesf_version": __version__, "git_commit": self.run.get("git_commit")},
            "time": {
                "started": self.run["started"],
                "saved": now_iso(),
                "resumed_from": self.run["resumed_from"],
            },
            "device": str(trainer.device),
            "world_size": trainer.dist.world_size,
            "metrics": metrics,
        }
        tmp = models / f".tmp-{name}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            trainer.model.trained = True
            meta = {
                "created": card["created"],
                "trained": True,
                "training": {
                    "version": name,
                    "step": trainer.step,
                    "base_model": self.run["base_model"],
                    "val_dice": metrics["val_dice"],
                },
            }
            if (trainer.config.augmentation or {}).get("extrude_mm", 0) > 0:
                meta["thin_scans"] = "extrude"  # sessions read few-slice scans as it was trained to
            save_checkpoint(trainer.model, tmp / "model.pt", metadata=meta)
            write_json_atomic(tmp / "metrics.json", metrics)
            write_json_atomic(tmp / "card.json", card)
            os.rename(tmp, models / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.run["versions"].append(name)
        logger.info("wrote model version %s (step %d) to %s", name, trainer.step, models / name)
        if self.status is not None:
            self.status.update(force=True, model_version=name)
        return models / name


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _disk_error(exc: OSError, workspace: Path, step: int) -> PesfError:
    versions = list_versions(workspace)
    kept = f"model version v{versions[-1][0]}" if versions else "no earlier model version"
    state = workspace / STATE_FILE
    kept += " and the resumable state" if state.is_file() else ""
    why = "no space left on the disk" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    return PesfError(
        f"could not write the checkpoint of step {step} in {workspace}: {why}; {kept} remain usable "
        "(free some space, then run `pesf train` again to resume)"
    )


# ---------------------------------------------------------------------------------------------- the run
def _load_state(path: Path) -> dict[str, Any] | None:
    from pesf.models.checkpoint import read_checkpoint

    if not path.is_file():
        return None
    try:
        state = read_checkpoint(path)
    except PesfError as exc:
        raise PesfError(f"the resumable state is damaged ({exc}); start over with --fresh") from None
    if not isinstance(state.get("trainer"), dict) or "run" not in state:
        raise PesfError(f"{path} is not a PESF training state; start over with --fresh")
    return state


def run_training(
    workspace: str | os.PathLike[str],
    config: TrainConfig | str | os.PathLike[str] | None = None,
    *,
    max_steps: int | None = None,
    device: str | None = None,
    fresh: bool = False,
    progress: bool = True,
) -> RunOutcome:
    """Train on a workspace's cases until the configured steps or a stop request.

    Args:
        workspace: the workspace (a case store).
        config: settings, or the path of a JSON settings file, or ``None`` for the defaults.
        max_steps: total steps of the run (overrides the settings' ``steps``).
        device: overrides the settings' ``device``.
        fresh: ignore an unfinished run's resumable state and start over.
        progress: show a tqdm bar on a terminal.

    Returns:
        The outcome (``finished`` or ``stopped``) on every rank.

    Raises:
        PesfError: bad input (missing workspace, empty store, unknown settings, corrupt base model), another
            trainer on the workspace, or a failed checkpoint write; the status then says ``failed``.
    """
    from pesf.train.store import CaseStore

    root = Path(workspace).expanduser()
    store = CaseStore(root)
    overrides = {"steps": max_steps, "device": device}
    if isinstance(config, TrainConfig):
        cfg = config.updated(**{k: v for k, v in overrides.items() if v is not None})
    else:
        cfg = load_config(config, **overrides)
    with setup_distributed(cfg.device) as dist:
        lock = TrainerLock(root) if dist.is_main else None
        error = None
        if lock is not None:
            try:
                lock.acquire()
            except PesfError as exc:
                error = exc
        if dist.any(error is not None):
            raise error or PesfError(f"rank 0 could not start training on {root}")
        try:
            return _run_locked(root, store, cfg, dist, fresh, progress)
        finally:
            if lock is not None:
                with contextlib.suppress(OSError):
                    (root / STOP_FILE).unlink()
                lock.release()


def _run_locked(
    root: Path, store: Any, cfg: TrainConfig, dist: DistContext, fresh: bool, progress: bool
) -> RunOutcome:
    """The run once the lock is held: resume or start, attach the handlers (rank 0), train."""
    from pesf.models import load_model
    from pesf.train.trainer import Trainer

    main = dist.is_main
    status = StatusFile(root / STATUS_FILE, str(dist.device), cfg.steps, dist.world_size) if main else None
    if main:
        with contextlib.suppress(OSError):
            (root / STOP_FILE).unlink()  # a request older than this trainer's lock is stale
        for stale in (root / "models").glob(".tmp-v*"):
            shutil.rmtree(stale, ignore_errors=True)
        status.update(force=True, message="loading the model and the cases")
    with run_log(root / LOG_FILE if main else None), _StopSignals() as signals:
        try:
            state = None if fresh else _load_state(root / STATE_FILE)
            if state is not None and state.get("finished"):
                logger.info(
                    "the previous run finished at step %d; starting a new run", state["trainer"]["step"]
                )
                state = None
            base = state["run"]["base_model"] if state else str(resolve_base_model(cfg.base_model, root))
            model = load_model(base, device="cpu")
            trainer = Trainer(store, cfg, model, dist)
            run = {
                "base_model": base,
                "started": now_iso(),
                "versions": [],
                "resumed_from": [],
                "git_commit": _git_commit(),
            }
            curves = Curves()
            if state is not None:
                trainer.load_state_dict(state["trainer"])
                run = {
                    **run,
                    **state["run"],
                    "resumed_from": [*state["run"].get("resumed_from", []), trainer.step],
                }
                curves = Curves.from_dict(state.get("curves"), up_to_step=trainer.step)
                changed = TrainConfig.from_dict(state["trainer"]["config"]).differences(cfg)
                logger.info(
                    "resumed from step %d%s",
                    trainer.step,
                    f" (settings changed: {', '.join(changed)})" if changed else "",
                )
            if main:
                handlers = [CheckpointHandler(root, run, curves, status), CurvesHandler(root, curves)]
                handlers += [StatusHandler(status), LogHandler()] + ([ProgressHandler()] if progress else [])
                for handler in handlers:
                    trainer.add_handler(handler)
            stop_file = root / STOP_FILE
            outcome = trainer.run(lambda: signals.received is not None or stop_file.exists())
        except BaseException as exc:
            if status is not None:
                message = str(exc) if isinstance(exc, PesfError) else f"{type(exc).__name__}: {exc}"
                message = "interrupted" if isinstance(exc, KeyboardInterrupt) else message
                status.update(
                    force=True, state="failed", message=message.splitlines()[0] if message else "failed"
                )
            logger.error("training failed: %s", exc)
            raise
    if signals.received:
        outcome.message += f" ({signals.received})"
    elif outcome.state == "stopped":
        outcome.message += " (STOP file)"
    if status is not None:
        status.update(force=True, message=outcome.message)
    outcome.extra.update(is_main=main, versions=list(run["versions"]), resumed_from=run["resumed_from"])
    return outcome
