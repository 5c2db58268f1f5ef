"""PESF Studio: the trame application, its state and the page's actions.

The work is done by the Slicer modules' Logic on slicer-core (see :mod:`.segment_panel`, :mod:`.train_panel`),
the views by trame-slicer (:mod:`.scene`). This module wires them to the page:

* every action of the page goes through :func:`guarded`: an error becomes a message in the page (snackbar and
  alert) and a log record, the state stays as it was, and the server keeps serving;
* an asyncio task polls the inference thread (10 times a second) and the training workspace (every second);
* loading a volume reads it on a thread (the page shows progress), and the previous volume stays until the
  new one is in the scene.

State of the application itself (panels have their own, see their modules):

=========================  ===============================================================
``studio_path``            the volume path typed in the page
``studio_loading``         a volume is being read
``studio_volume_name``     the volume shown
``studio_message``         the last message (``studio_snackbar`` shows it, ``studio_message_error``
                           says whether it is an error); ``studio_error`` keeps the last error
=========================  ===============================================================
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from trame.app import TrameApp

from pesf.errors import PesfError
from pesf.studio.downloads import Downloads
from pesf.studio.modules import add_module_paths
from pesf.studio.scene import SliceClick, StudioScene

__all__ = ["StudioApp", "StudioConfig", "guarded"]

logger = logging.getLogger(__name__)

_RESULT_POLL_S = 0.1
_TRAIN_POLL_EVERY = 10  # result polls per training poll


@dataclass
class StudioConfig:
    """What ``pesf studio`` was asked for."""

    image: str | None = None
    workspace: str | None = None
    model: str | None = None
    max_steps: int | None = None
    token: str | None = None


def _user_message(exc: BaseException) -> str:
    if isinstance(exc, PesfError | ValueError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
    return f"{type(exc).__name__}: {exc}"


def guarded(action: str):
    """Run a page action so that a failure is reported in the page, logged, and never escapes to the server."""

    def decorate(fn):
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(self, *args, **kwargs):
                try:
                    return await fn(self, *args, **kwargs)
                except Exception as exc:  # noqa: BLE001 - reported to the user, the server goes on
                    self.fail(action, exc)
                    return None

            return run_async

        @functools.wraps(fn)
        def run(self, *args, **kwargs):
            try:
                return fn(self, *args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - reported to the user, the server goes on
                self.fail(action, exc)
                return None

        return run

    return decorate


class StudioApp(TrameApp):
    """The PESF Studio trame application.

    Args:
        server: a trame server (or its name); a new one when ``None``.
        config: image, workspace, model and access token.
    """

    def __init__(self, server=None, config: StudioConfig | None = None) -> None:
        super().__init__(server, client_type="vue3")
        add_module_paths()
        from pesf.studio.segment_panel import SegmentPanel, model_choice
        from pesf.studio.train_panel import TrainPanel
        from pesf.studio.ui import build_ui

        self.config = config or StudioConfig()
        self.state.trame__title = "PESF Studio"
        self.state.update(
            {
                "studio_path": self.config.image or "",
                "studio_loading": False,
                "studio_volume_name": "",
                "studio_message": "",
                "studio_message_error": False,
                "studio_snackbar": False,
                "studio_error": "",
                "studio_tab": "segment",
            }
        )
        self.downloads = Downloads(self.config.token)
        self.scene = StudioScene(self.server, on_click=self.on_slice_click)
        self.segment = SegmentPanel(self)
        self.segment.load_organ_names()
        self.train = TrainPanel(self, self.config.workspace, self.config.max_steps)
        self.ui = build_ui(self)
        self._poll_task: asyncio.Task | None = None
        self._last_failure: dict[str, str] = {}
        self._volume_node = None
        self._loading = False
        if self.config.workspace:
            self.attempt(self.train.set_workspace, "Opening the workspace")
        choice = self.attempt(
            lambda: model_choice(self.config.model, self.config.workspace, self.scene.scene),
            "Choosing the model",
        )
        if choice is not None:
            self.segment.set_model(choice)
        self.ctrl.on_server_ready.add(self._on_server_ready)

    # ------------------------------------------------------------------ messages
    def report(self, message: str, error: bool = False) -> None:
        """Show ``message`` in the page (errors also stay in the alert until closed)."""
        self.state.studio_message = message
        self.state.studio_message_error = error
        self.state.studio_snackbar = True
        if error:
            self.state.studio_error = message

    def fail(self, action: str, exc: BaseException, repeated: bool = False) -> None:
        """Report a failed action; unexpected exceptions are logged with their traceback.

        ``repeated``: the same failure as the last one of a periodic task; logged at debug level only.
        """
        message = _user_message(exc)
        if repeated:
            logger.debug("%s failed again: %s", action, message)
            return
        if isinstance(exc, PesfError | ValueError | OSError):
            logger.warning("%s failed: %s", action, message)
        else:
            logger.exception("%s failed", action)
        with self.state:
            self.report(f"{action} failed: {message}", error=True)

    def attempt(self, fn, action: str):
        """``fn()``, or ``None`` after reporting its failure (for callbacks that are not page actions).

        A periodic task failing the same way again and again is reported once.
        """
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - reported in the page
            message = _user_message(exc)
            self.fail(action, exc, repeated=self._last_failure.get(action) == message)
            self._last_failure[action] = message
            return None
        self._last_failure.pop(action, None)
        return result

    # ------------------------------------------------------------------ life cycle
    def _on_server_ready(self, **_) -> None:
        self._poll_task = asyncio.ensure_future(self._poll_loop())
        image = self.config.image or str(_sample_image())
        asyncio.ensure_future(self.on_load_volume(image))

    async def _poll_loop(self) -> None:
        tick = 0
        while True:
            await asyncio.sleep(_RESULT_POLL_S)
            tick += 1
            with self.state:
                self.attempt(self.segment.poll, "Updating the segments")
                if tick % _TRAIN_POLL_EVERY == 0:
                    self.attempt(self.train.poll, "Following the training")

    def cleanup(self) -> None:
        """Stop the inference thread (a running trainer keeps running: it is its own process)."""
        if self._poll_task is not None:
            self._poll_task.cancel()
        self.segment.cleanup()
        self.train.cleanup()
        self.downloads.clear()

    # ------------------------------------------------------------------ volume
    @guarded("Loading the volume")
    async def on_load_volume(self, path: str | None = None) -> None:
        from pesf.io import read_volume

        text = str(path if path is not None else self.state.studio_path or "").strip()
        if not text:
            raise ValueError("Type the path of a volume file or DICOM folder.")
        if self._loading:
            raise ValueError("A volume is already loading; wait for it.")
        source = Path(text).expanduser()
        self._loading = True
        self.state.studio_loading = True
        self.state.studio_path = text
        self.report(f"Reading {source.name}…")
        self.state.flush()
        try:
            volume = await asyncio.get_running_loop().run_in_executor(None, read_volume, source)
            with self.state:
                self._show_volume(volume, _volume_name(source))
        finally:
            self._loading = False
            with self.state:
                self.state.studio_loading = False

    def _show_volume(self, volume, name: str) -> None:
        previous = [self._volume_node, *self.segment.volume_nodes()] if self._volume_node is not None else []
        node = self.scene.add_volume(volume, name)
        try:
            self.segment.set_volume(node)
        except Exception:
            self.scene.remove_nodes([node])
            raise
        self.scene.show_volume(node)
        self.scene.remove_nodes(previous)
        self._volume_node = node
        self.state.studio_volume_name = node.GetName()
        self.report(
            f"Loaded {node.GetName()} {'x'.join(map(str, volume.shape))}: add an organ, then click on it."
        )

    # ------------------------------------------------------------------ organs
    @guarded("Adding the organ")
    def on_add_organ(self, name: str | None = None) -> None:
        self.segment.add_organ(name)

    @guarded("Selecting the organ")
    def on_select_organ(self, name: str) -> None:
        self.segment.select(name)

    @guarded("Placing the point")
    def on_slice_click(self, click: SliceClick) -> None:
        with self.state:
            self.segment.on_click(click)

    @guarded("Undo")
    def on_undo(self) -> None:
        self.segment.undo()

    @guarded("Accepting the organ")
    def on_accept(self, name: str) -> None:
        self.segment.accept(name)

    @guarded("Rejecting the organ")
    def on_reject(self, name: str) -> None:
        self.segment.reject(name)

    @guarded("Accepting organs above the threshold")
    def on_accept_above(self, threshold: float | None = None) -> None:
        self.segment.accept_above(threshold)

    @guarded("Exporting")
    def on_export(self) -> None:
        self.segment.export()

    @guarded("Sending to training")
    def on_send_to_training(
        self, workspace: str | None = None, case_id: str | None = None, overwrite: bool | None = None
    ) -> None:
        workspace = workspace if workspace is not None else self.state.train_workspace
        self.segment.send_to_training(workspace, case_id, overwrite)
        self.train.set_workspace(workspace)

    # ------------------------------------------------------------------ training
    @guarded("Opening the workspace")
    def on_set_workspace(self, workspace: str | None = None) -> None:
        self.train.set_workspace(workspace)

    @guarded("Starting the training")
    def on_start_training(self, workspace: str | None = None, max_steps: int | str | None = None) -> None:
        self.train.start(workspace, max_steps)

    @guarded("Stopping the training")
    def on_stop_training(self) -> None:
        self.train.stop()

    @guarded("Switching the model")
    def on_use_version(self, version: str) -> None:
        choice = self.train.use_version(version)
        if choice is not None:
            self.segment.set_model(choice)

    # ------------------------------------------------------------------ status (tests, monitoring)
    def status(self) -> dict:
        """What the server holds: volume, views, organs with voxel counts, training, last error."""
        node = self._volume_node
        volume = None
        if node is not None:
            from PESFSegmentLib.geometry import gridShape, ijkToRasArray

            volume = {
                "name": node.GetName(),
                "shape": list(gridShape(node)),
                "ijk_to_ras": ijkToRasArray(node).ravel().tolist(),
            }
        return {
            "volume": volume,
            "loading": bool(self.state.studio_loading),
            "views": self.scene.view_geometry(),
            "segment": self.segment.status(),
            "train": self.train.status(),
            "error": self.state.studio_error,
            "pid": os.getpid(),
        }


def _sample_image() -> Path:
    """The bundled sample CT, as a path relative to the working folder when it lies below it."""
    from pesf.resources import sample_data_dir

    path = sample_data_dir() / "A_ts_ct" / "A_ct_full_image.nii.gz"
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def _volume_name(path: Path) -> str:
    from pesf.io.atomic import split_extension

    return split_extension(path.name)[0] if path.is_file() else path.name
