"""The persistent inference worker: one thread that keeps the model warm and turns prompts into masks.

The GUI thread never runs the model. It submits jobs (load a model, set the image, "organ X now has these
clicks") and collects results, either by polling :meth:`InferenceWorker.results` (Slicer's Widget does so from
a ``QTimer`` and applies them to MRML on the GUI thread) or through a callback run on the worker thread.

Jobs run one at a time in submission order. A prompts job states the organ's whole click list; the worker
reaches it from what the session already holds with the fewest steps (undo the clicks that changed, add the
new ones), so placing a point costs one decode and moving the last point an undo and a decode. When several
prompts jobs for one organ are queued (a point dragged across the view), only the newest runs.

Each prompts job gives a ``mask`` result at once and, unless a newer job for that organ is waiting, a
``confidence`` result after it (the organ score and the voxel confidence map cost extra decoder runs). A
failure gives an ``error`` result and leaves the organ as it was before the job.

This module imports neither Slicer nor Qt; torch and the engine are imported on the worker thread.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Click", "InferenceWorker", "WorkerResult"]

logger = logging.getLogger(__name__)

MASK, CONFIDENCE, ERROR, MODEL = "mask", "confidence", "error", "model"


@dataclass(frozen=True)
class Click:
    """One prompt point: LPS millimetres and its polarity."""

    lps: tuple[float, float, float]
    positive: bool = True


@dataclass
class WorkerResult:
    """What the worker reports.

    Attributes:
        kind: ``"mask"``, ``"confidence"``, ``"error"`` or ``"model"`` (a model is loaded).
        jobId: the job it answers.
        organ: the organ, or ``None`` for model jobs.
        result: the engine's ``OrganResult`` (masks are crops ``[i, j, k]`` with a bounding box).
        clicks: the clicks the mask was made from.
        confidence: organ confidence (``confidence`` results).
        confidenceCrop: voxel confidence on ``result.bbox`` (``confidence`` results).
        message: error text for the user (``error``) or a description of the loaded model (``model``).
        modelVersion: the model that made the result.
    """

    kind: str
    jobId: int
    organ: str | None = None
    result: Any = None
    clicks: tuple[Click, ...] = ()
    confidence: float | None = None
    confidenceCrop: np.ndarray | None = None
    message: str = ""
    modelVersion: str = ""


@dataclass
class _Job:
    id: int
    kind: str  # "model", "image" or "prompts"
    organ: str | None = None
    clicks: tuple[Click, ...] = ()
    loader: Callable[[], Any] | None = None
    version: str = ""
    image: Any = None


def _message(exc: BaseException) -> str:
    from pesf.errors import PesfError

    if isinstance(exc, PesfError | ValueError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class InferenceWorker:
    """A thread holding the model and one interactive session.

    Args:
        resultCallback: called on the worker thread with every :class:`WorkerResult` (also kept for
            :meth:`results`); it must not touch MRML or Qt.
        sessionConfig: the engine's ``SessionConfig`` (default settings when ``None``).
    """

    def __init__(self, resultCallback: Callable[[WorkerResult], None] | None = None, sessionConfig=None):
        self.resultCallback = resultCallback
        self.sessionConfig = sessionConfig
        self._cond = threading.Condition()
        self._jobs: collections.deque[_Job] = collections.deque()
        self._results: collections.deque[WorkerResult] = collections.deque()
        self._ids = itertools.count(1)
        self._lastSubmitted = 0
        self._finished = 0
        self._running = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        # worker-thread state
        self._model = None
        self._modelVersion = ""
        self._sessionModelVersion = ""  # the version of the model the session segments with
        self._image = None
        self._session = None
        self._applied: dict[str, tuple[Click, ...]] = {}
        self._targets: dict[str, tuple[Click, ...]] = {}

    # ------------------------------------------------------------------ GUI-thread API
    def start(self) -> None:
        """Start the thread (submitting a job starts it too)."""
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(target=self._loop, name="PESF inference", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Drop queued jobs, let the current one finish, end the thread and release the model."""
        with self._cond:
            self._stopping = True
            self._jobs.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None
        self._model = self._session = self._image = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def busy(self) -> bool:
        """Whether jobs are queued or running."""
        with self._cond:
            return bool(self._jobs) or self._running != 0

    def setModel(self, loader: Callable[[], Any], version: str) -> int:
        """Load a model with ``loader()`` on the worker thread; organs with clicks are segmented again."""
        return self._submit(_Job(0, "model", loader=loader, version=version))

    def setImage(self, image) -> int:
        """Segment ``image`` (a :class:`pesf.io.Volume`) from now on; every organ starts empty."""
        return self._submit(_Job(0, "image", image=image))

    def setPrompts(self, organ: str, clicks: Sequence[Click]) -> int:
        """Make ``organ``'s clicks exactly ``clicks`` (in order) and segment it; an empty list clears it."""
        return self._submit(_Job(0, "prompts", organ=organ, clicks=tuple(clicks)))

    def results(self) -> list[WorkerResult]:
        """Take the results reported since the last call, oldest first."""
        with self._cond:
            out = list(self._results)
            self._results.clear()
        return out

    def wait(self, jobId: int | None = None, timeout: float | None = None) -> bool:
        """Block until job ``jobId`` (default: every job submitted so far) is done. For tests and scripts.

        Returns:
            Whether it finished in time.
        """
        with self._cond:
            target = self._lastSubmitted if jobId is None else jobId
            return self._cond.wait_for(lambda: self._finished >= target or not self.alive, timeout)

    # ------------------------------------------------------------------ internals
    def _submit(self, job: _Job) -> int:
        self.start()
        with self._cond:
            job.id = next(self._ids)
            self._lastSubmitted = job.id
            self._jobs.append(job)
            self._cond.notify_all()
        return job.id

    def _emit(self, result: WorkerResult) -> None:
        with self._cond:
            self._results.append(result)
        if self.resultCallback is not None:
            try:
                self.resultCallback(result)
            except Exception:  # noqa: BLE001 - a faulty observer must not stop the worker
                logger.exception("PESF result callback failed")

    def _newerPromptsQueued(self, organ: str | None) -> bool:
        return any(j.kind == "prompts" and j.organ == organ for j in self._jobs)

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._jobs or self._stopping)
                if self._stopping:
                    self._cond.notify_all()
                    return
                job = self._jobs.popleft()
                superseded = (job.kind == "prompts" and self._newerPromptsQueued(job.organ)) or (
                    job.kind == "model" and any(j.kind == "model" for j in self._jobs)
                )
                self._running = job.id
            try:
                if not superseded:
                    self._process(job)
            except Exception as exc:  # noqa: BLE001 - report, keep the thread alive
                logger.exception("PESF inference job %d failed", job.id)
                self._emit(WorkerResult(ERROR, job.id, job.organ, message=_message(exc)))
            finally:
                with self._cond:
                    self._finished = job.id
                    self._running = 0
                    self._cond.notify_all()

    def _process(self, job: _Job) -> None:
        if job.kind == "model":
            model = job.loader()
            self._model, self._modelVersion = model, job.version
            self._session = None
            self._applied.clear()
            self._emit(
                WorkerResult(
                    MODEL, job.id, message=str(getattr(model, "source", "")), modelVersion=job.version
                )
            )
            for organ, clicks in list(self._targets.items()):
                if clicks and self._image is not None:
                    self._segment(job.id, organ, clicks)
        elif job.kind == "image":
            self._image, self._session = job.image, None
            self._applied.clear()
            self._targets.clear()
        else:
            self._targets[job.organ] = job.clicks
            self._segment(job.id, job.organ, job.clicks)

    def _ensureSession(self):
        from pesf.errors import PesfError
        from pesf.interactive import InteractiveSession, SessionConfig

        if self._session is None:
            if self._model is None:
                raise PesfError("no model is loaded; choose a model first")
            if self._image is None:
                raise PesfError("no volume is set; choose an input volume first")
            self._session = InteractiveSession(
                self._model, self._image, self.sessionConfig or SessionConfig()
            )
            # the version of the model it segments with: the chosen one's, or the variant's name the chosen
            # model names for the volume (the bundled default's MR weights ``default-mr``, or its weights for
            # few-slice CT scans ``default-thin``)
            self._sessionModelVersion = self._session.variant or self._modelVersion
        return self._session

    def _reach(self, session, organ: str, target: tuple[Click, ...]):
        """Bring ``organ`` from its applied clicks to ``target``: undo what differs, add the rest."""
        current = self._applied.get(organ, ())
        common = 0
        while common < min(len(current), len(target)) and current[common] == target[common]:
            common += 1
        if common == 0 and current:
            session.reset(organ)
            current = self._applied[organ] = ()
        while len(current) > common:
            session.undo(organ)
            current = self._applied[organ] = current[:-1]
        result = session.result(organ)
        for click in target[common:]:
            result = session.add_click_lps(organ, np.asarray(click.lps, dtype=np.float64), click.positive)
            current = self._applied[organ] = current + (click,)
        return result

    def _segment(self, jobId: int, organ: str, clicks: tuple[Click, ...]) -> None:
        session = self._ensureSession()
        previous = self._applied.get(organ, ())
        try:
            result = self._reach(session, organ, clicks)
        except Exception as exc:  # noqa: BLE001 - reported as one message; the organ goes back
            logger.debug("segmenting %s failed", organ, exc_info=True)
            self._emit(WorkerResult(ERROR, jobId, organ, clicks=clicks, message=_message(exc)))
            self._restore(session, organ, previous)
            return
        version = self._sessionModelVersion
        self._emit(WorkerResult(MASK, jobId, organ, result, clicks, modelVersion=version))
        with self._cond:
            if self._newerPromptsQueued(organ) or not clicks:
                return
        try:
            confidence, crop = result.confidence, result.confidence_map
        except Exception as exc:  # noqa: BLE001 - the mask stands; only its confidence is missing
            logger.debug("confidence of %s failed", organ, exc_info=True)
            self._emit(WorkerResult(ERROR, jobId, organ, clicks=clicks, message=_message(exc)))
            return
        self._emit(
            WorkerResult(
                CONFIDENCE,
                jobId,
                organ,
                result,
                clicks,
                float(confidence),
                crop,
                modelVersion=version,
            )
        )

    def _restore(self, session, organ: str, previous: tuple[Click, ...]) -> None:
        """After a failure, put the organ's clicks back as they were (cheap: embeddings are cached)."""
        try:
            self._reach(session, organ, previous)
            self._targets[organ] = previous
        except Exception:  # noqa: BLE001 - start the organ over on its next job
            logger.debug("restoring %s failed; it starts over", organ, exc_info=True)
            session.reset(organ)
            self._applied[organ] = ()
