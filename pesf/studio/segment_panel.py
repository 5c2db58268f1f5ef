"""The organ panel of PESF Studio: PESF Segment's Logic driven from the page.

Everything here delegates to :class:`PESFSegmentLib.PESFSegmentLogic` (the Logic of the Slicer module):
prompts become segments on its persistent inference thread, review and export are its own. This class only
turns page actions into Logic calls and the Logic's state into trame state:

=======================  ===================================================================
``seg_organs``           one dict per organ: name, display name, colour, status, confidence...
``seg_selected``         the organ clicks go to (engine name)
``seg_positive``         polarity of the next click (Ctrl inverts it, as in Slicer)
``seg_place``            whether a click in a slice view places a prompt
``seg_busy``             inference running; ``seg_busy_text`` says what
``seg_confidence_*``     the voxel confidence overlay: ``visible``, ``opacity``
``seg_surfaces``         segment surfaces in the 3D view
``seg_export_*``         export ``format``, and the ``url``/``name`` of the last export
=======================  ===================================================================
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from pesf.studio.scene import SliceClick

__all__ = ["EXPORT_FORMATS", "SegmentPanel", "model_choice"]

logger = logging.getLogger(__name__)

#: page label -> file extension of exports
EXPORT_FORMATS = {
    "Label map (.nii.gz)": ".nii.gz",
    "Slicer segmentation (.seg.nrrd)": ".seg.nrrd",
    "Label map (.nrrd)": ".nrrd",
}


def model_choice(model: str | None, workspace: str | os.PathLike[str] | None, scene):
    """The model to start with: ``model`` (a bundled name or a checkpoint file) when given, else the version
    chosen for ``workspace`` in PESF Train, else the bundled default."""
    from PESFSegmentLib import ModelChoice, activeTrainedModel
    from PESFSegmentLib.modelchoice import BUNDLED

    from pesf.models.checkpoint import available_models

    if model:
        if model in available_models():
            return ModelChoice(BUNDLED, model, model)
        return ModelChoice.checkpoint(model)
    trained = activeTrainedModel(scene, workspace) if workspace else None
    return trained or ModelChoice.bundled()


def _hex(color) -> str:
    return "#" + "".join(f"{max(0, min(255, round(255 * c))):02x}" for c in color[:3])


class SegmentPanel:
    """Organs of the current volume: prompts, review, export, sending to training.

    Args:
        studio: the :class:`~pesf.studio.app.StudioApp` (state, scene, reporting, downloads).
    """

    def __init__(self, studio) -> None:
        from PESFSegmentLib import PESFSegmentLogic, SegmentEvent

        self.studio = studio
        self.state = studio.state
        self._events = SegmentEvent
        self.logic = PESFSegmentLogic(studio.scene.scene, eventCallback=self._on_event)
        self.logic.polarityProvider = lambda: bool(self.state.seg_positive)
        self.export_dir = Path(tempfile.mkdtemp(prefix="pesf-studio-exports-"))
        self._fitted_3d = False
        self._updated_at: dict[str, float] = {}
        self._voxel_counts: dict[str, tuple[float | None, int]] = {}
        self.state.update(
            {
                "seg_organs": [],
                "seg_selected": None,
                "seg_new_organ": "",
                "seg_organ_names": [],
                "seg_positive": True,
                "seg_place": True,
                "seg_busy": False,
                "seg_busy_text": "",
                "seg_confidence_visible": True,
                "seg_confidence_opacity": 0.5,
                "seg_surfaces": True,
                "seg_threshold": 0.9,
                "seg_export_format": next(iter(EXPORT_FORMATS)),
                "seg_export_formats": list(EXPORT_FORMATS),
                "seg_export_url": "",
                "seg_export_name": "",
                "seg_case_id": "",
                "seg_overwrite": False,
                "seg_model": "",
            }
        )
        self.state.change("seg_confidence_visible", "seg_confidence_opacity")(
            lambda **_: studio.attempt(self._on_confidence_display, "Showing the confidence map")
        )
        self.state.change("seg_surfaces")(
            lambda **_: studio.attempt(self._on_surfaces, "Showing the surfaces")
        )

    def load_organ_names(self) -> None:
        from PESFSegmentLib import standardOrgans

        self.state.seg_organ_names = [entry.displayName for entry in standardOrgans()]

    # ------------------------------------------------------------------ Logic events and polling
    def _on_event(self, event, info: dict) -> None:
        if event == self._events.ERROR:
            self.studio.report(info.get("message", "error"), error=True)
        elif event == self._events.SEGMENT_UPDATED:
            self._updated_at[info.get("organ")] = time.time()
            if self.state.seg_surfaces:  # new segments get a surface too (no-op for up-to-date ones)
                self.logic.segmentationNode.CreateClosedSurfaceRepresentation()
            if not self._fitted_3d:
                self._fitted_3d = self.studio.scene.fit_threed_view()
        elif event == self._events.MODEL_LOADED:
            self.state.seg_model = info.get("version", "")
            self.studio.report(f"Model {info.get('version', '')} ready: click an organ in a slice view.")

    def poll(self) -> bool:
        """Apply the inference thread's results to the scene; returns whether anything changed."""
        start = time.perf_counter()
        count = self.logic.processResults()
        if count:
            logger.debug("applied %d inference result(s) in %.3f s", count, time.perf_counter() - start)
        busy = self.logic.busy
        if busy != self.state.seg_busy:
            self.state.seg_busy = busy
            self.state.seg_busy_text = "Segmenting…" if busy else ""
        if count:
            self.refresh()
        return bool(count)

    def refresh(self) -> None:
        """Copy the organs' review state into the page."""
        organs = []
        for state in self.logic.organs.values():
            organs.append(
                {
                    "name": state.name,
                    "label": state.entry.displayName,
                    "color": _hex(state.entry.color),
                    "status": state.status,
                    "confidence": None if state.confidence is None else round(float(state.confidence), 3),
                    "volume_ml": round(float(state.volumeMl), 1),
                    "clicks": state.clicks,
                    "model": state.modelVersion,
                }
            )
        self.state.seg_organs = organs
        if self.state.seg_selected not in self.logic.organs:
            self.state.seg_selected = organs[-1]["name"] if organs else None

    # ------------------------------------------------------------------ model and volume
    def set_model(self, choice) -> None:
        """Use ``choice`` (a ``ModelChoice``); it loads on the inference thread."""
        self.logic.setModel(choice)
        self.state.seg_busy, self.state.seg_busy_text = True, f"Loading model {choice.version}…"

    def set_volume(self, node) -> None:
        """Segment ``node`` from now on (raises ``ValueError`` for a volume the Logic refuses)."""
        self.logic.setInputVolume(node)
        self._fitted_3d = False
        self._updated_at.clear()
        self._voxel_counts.clear()
        self.state.seg_export_url = self.state.seg_export_name = ""
        self._on_confidence_display()
        self._on_surfaces()
        self.refresh()

    def volume_nodes(self) -> list:
        """The nodes made for the current volume (segmentation, organ table, point lists)."""
        logic = self.logic
        nodes = [logic.segmentationNode, logic.tableNode]
        nodes += [logic.scene.GetNodeByID(s.promptsNodeId) for s in logic.organs.values()]
        return nodes

    # ------------------------------------------------------------------ organs and prompts
    def add_organ(self, text: str | None = None) -> None:
        """Add an organ by name (default: the one typed in the page) and select it."""
        state = self.logic.addOrgan(text if text is not None else self.state.seg_new_organ)
        self.state.seg_new_organ = ""
        self.refresh()
        self.state.seg_selected = state.name

    def select(self, name: str) -> None:
        self.logic.organ(name)  # raises for an unknown organ
        self.state.seg_selected = name

    def _selected(self) -> str:
        name = self.state.seg_selected
        if not name or name not in self.logic.organs:
            raise ValueError("Add or pick an organ first, then click on it in a slice view.")
        return name

    def on_click(self, click: SliceClick) -> None:
        """A click in a slice view: a prompt for the selected organ (Ctrl inverts the polarity)."""
        if not self.state.seg_place:
            return
        if self.logic.volumeNode is None:
            raise ValueError("Load a volume first.")
        positive = bool(self.state.seg_positive) != click.control
        self.logic.addPrompt(self._selected(), click.ras, positive=positive)
        self.state.seg_busy, self.state.seg_busy_text = True, "Segmenting…"

    def undo(self) -> None:
        if not self.logic.undoLastPrompt(self._selected()):
            raise ValueError("This organ has no point to undo.")

    def remove(self, name: str) -> None:
        self.logic.removeOrgan(name)
        self.refresh()

    # ------------------------------------------------------------------ review
    def accept(self, name: str) -> None:
        self.logic.acceptOrgan(name)
        self.refresh()

    def reject(self, name: str) -> None:
        self.logic.rejectOrgan(name)
        self.refresh()

    def accept_above(self, threshold: float | None = None) -> None:
        """Accept every pending organ whose confidence reaches ``threshold`` (default: the page's)."""
        threshold = float(threshold if threshold is not None else self.state.seg_threshold)
        chosen = self.logic.acceptAboveThreshold(threshold)
        self.refresh()
        self.studio.report(f"Accepted {len(chosen)} organ(s) with confidence ≥ {threshold:.2f}.")

    def _on_confidence_display(self) -> None:
        self.logic.showConfidenceMap(
            bool(self.state.seg_confidence_visible), float(self.state.seg_confidence_opacity)
        )
        self.studio.scene.render_all()

    def _on_surfaces(self) -> None:
        node = self.logic.segmentationNode
        if node is None:
            return
        if self.state.seg_surfaces:
            node.CreateClosedSurfaceRepresentation()
        else:
            node.RemoveClosedSurfaceRepresentation()
        self.studio.scene.render_all()

    # ------------------------------------------------------------------ leaving
    def export(self) -> Path:
        """Write the accepted organs in the chosen format and offer the file for download."""
        extension = EXPORT_FORMATS.get(self.state.seg_export_format)
        if extension is None:
            raise ValueError(f"Unknown export format {self.state.seg_export_format!r}.")
        name = f"{self.logic.volumeNode.GetName() if self.logic.volumeNode else 'volume'}_accepted{extension}"
        written = self.logic.exportAccepted(self.export_dir / name)
        self.state.seg_export_url = self.studio.downloads.offer(written)
        self.state.seg_export_name = written.name
        self.studio.report(f"Exported {len(self.logic.acceptedOrgans())} organ(s) to {written.name}.")
        return written

    def send_to_training(
        self, workspace: str, case_id: str | None = None, overwrite: bool | None = None
    ) -> str:
        """Send the volume and its reviewed organs to the case store at ``workspace``; returns the case id.

        ``case_id`` defaults to the volume's name; ``overwrite`` replaces a case of that id.
        """
        if not workspace:
            raise ValueError("Choose a training workspace (folder) first.")
        overwrite = bool(self.state.seg_overwrite if overwrite is None else overwrite)
        record = self.logic.sendToTraining(Path(workspace).expanduser(), case_id or None, overwrite)
        self.studio.report(f"Sent case {record.case_id} ({len(record.organs)} organs) to {workspace}.")
        return record.case_id

    def _voxels(self, name: str, state) -> int:
        """Voxels of an organ's segment on the volume's grid, counted once per segment update."""
        from PESFSegmentLib.export import segmentMask

        stamp = self._updated_at.get(name)
        cached = self._voxel_counts.get(name)
        if cached is None or cached[0] != stamp:
            mask = segmentMask(self.logic.segmentationNode, state.segmentId, self.logic.volumeNode)
            cached = self._voxel_counts[name] = (stamp, int(mask.sum()))
        return cached[1]

    def status(self) -> dict:
        """The organs with their voxel counts in the scene (for the status endpoint)."""
        logic = self.logic
        organs = {}
        for name, state in logic.organs.items():
            organs[name] = {
                "status": state.status,
                "confidence": state.confidence,
                "volume_ml": state.volumeMl,
                "clicks": state.clicks,
                "voxels": self._voxels(name, state) if logic.segmentationNode is not None else 0,
                "label_value": state.entry.labelValue,
                "updated_at": self._updated_at.get(name),
            }
        return {"organs": organs, "busy": logic.busy, "model": logic.modelVersion}

    def cleanup(self) -> None:
        """Stop the inference thread and delete the exported files."""
        self.logic.cleanup()
        shutil.rmtree(self.export_dir, ignore_errors=True)
