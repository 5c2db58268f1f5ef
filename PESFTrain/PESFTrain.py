"""PESFTrain: the background PESF training loop on a workspace of curated cases.

Module, Widget and self-test. The Logic (``PESFTrainLib``) launches ``pesf train`` as a separate process and
reads its progress from the workspace's files; the Widget polls it from a timer, so Slicer never waits.
"""

import json
import logging
import pathlib
import tempfile
from typing import Annotated

import qt
import slicer
import vtk
from PESFSegmentLib import sharedSettingsNode
from PESFTrainLib import PESFTrainLogic, TrainEvent, versionAtRow
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from PESFSegment import ensureDependencies


class PESFTrain(ScriptedLoadableModule):
    """Module metadata: where PESFTrain appears in Slicer and who made it."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("PESF Train")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["PESFSegment", "Plots", "Tables"]
        self.parent.contributors = ["The PESF Authors"]
        self.parent.helpText = _(
            "Start and stop the background PESF training loop on a case store, follow its progress, and choose "
            "which trained model version PESF Segment uses."
        )
        self.parent.acknowledgementText = _(
            "PESF follows Jin et al., Neural Networks 2025, and is compatible with SAM-Med3D checkpoints."
        )


@parameterNodeWrapper
class PESFTrainParameterNode:
    """The module's settings, bound to the GUI through ``SlicerParameterName`` in the .ui file."""

    workspace: pathlib.Path
    configFile: pathlib.Path
    maxSteps: Annotated[int, WithinRange(0, 1000000)] = 0
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"


def _isSet(path) -> bool:
    return str(path) not in ("", ".")


class PESFTrainWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: workspace and cases, training run, curves and log, model versions."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._pollTimer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PESFTrain.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = PESFTrainLogic(slicer.mrmlScene, eventCallback=self.onLogicEvent)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.refreshButton.connect("clicked(bool)", self.onRefreshButton)
        self.ui.startButton.connect("clicked(bool)", self.onStartButton)
        self.ui.stopButton.connect("clicked(bool)", self.onStopButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.showCurvesButton.connect("clicked(bool)", self.onShowCurvesButton)
        self.ui.useVersionButton.connect("clicked(bool)", self.onUseVersionButton)
        self.ui.versionsTableView.connect("selectionChanged()", self.updateButtons)

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(1000)
        self._pollTimer.connect("timeout()", self.onPollTimer)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        if self._pollTimer is not None:
            self._pollTimer.stop()
        if self.logic is not None:
            self.logic.cleanup()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified
            )

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        self._pollTimer.stop()
        self.logic.workspace = None  # reopened, with new table and plot nodes, in the next scene
        self.logic.casesTable = self.logic.versionsTable = self.logic.curves = None

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ------------------------------------------------------------------ parameter node
    def getParameterNode(self) -> PESFTrainParameterNode:
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
            node = slicer.mrmlScene.AddNode(node)
        return PESFTrainParameterNode(node)

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.getParameterNode())
        if not _isSet(self._parameterNode.workspace):
            workspace = sharedSettingsNode(slicer.mrmlScene).GetParameter("Workspace")
            if workspace:
                self._parameterNode.workspace = pathlib.Path(workspace)

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified
            )
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        workspace = self._parameterNode.workspace if self._parameterNode else None
        if workspace is not None and _isSet(workspace) and workspace != self.logic.workspace:
            self.openWorkspace(workspace)
        self.updateButtons()

    def openWorkspace(self, workspace) -> None:
        """Follow a workspace; a folder that is not one yet only shows a hint."""
        try:
            self.logic.setWorkspace(workspace)
        except Exception as exc:  # noqa: BLE001 - shown as a hint while the user is still typing the path
            self.logic.workspace = None
            self.ui.statusLabel.text = str(exc)
            self._pollTimer.stop()
            return
        self.ui.statusLabel.text = ""
        self.ui.casesTableView.setMRMLTableNode(self.logic.casesTable)
        self.ui.versionsTableView.setMRMLTableNode(self.logic.versionsTable)
        self.ui.logTextEdit.clear()
        self.onPollTimer()
        self._pollTimer.start()

    # ------------------------------------------------------------------ actions
    def onRefreshButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to read the workspace."), waitCursor=True):
            self.logic.updateCasesTable()
            self.logic.updateVersionsTable()

    def onStartButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to start training."), waitCursor=True):
            if not ensureDependencies():
                return
            params = self._parameterNode
            self.logic.startTraining(
                maxSteps=params.maxSteps or None,
                configFile=str(params.configFile) if _isSet(params.configFile) else None,
                device=None if params.device == "auto" else params.device,
            )
            self._pollTimer.start()
            self.updateButtons()

    def onStopButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to stop training.")):
            self.logic.stopTraining()
            self.ui.statusLabel.text = _("Stopping after the current step...")

    def onCancelButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to cancel training."), waitCursor=True):
            self.logic.cancelTraining()
            self.updateButtons()

    def onShowCurvesButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to show the curves.")):
            if self.logic.curves is None:
                raise ValueError(_("Choose a workspace first."))
            slicer.modules.plots.logic().ShowChartInLayout(self.logic.curves.chartNode)

    def selectedVersion(self):
        indexes = self.ui.versionsTableView.selectionModel().selectedRows()
        if not indexes:
            return None
        index = indexes[0]
        model = self.ui.versionsTableView.model()
        if hasattr(model, "mapToSource"):
            index = model.mapToSource(index)
        return versionAtRow(self.logic.versionsTable, index.row())

    def onUseVersionButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to choose the model version.")):
            version = self.selectedVersion()
            if version:
                self.logic.useVersion(version)
                self.ui.statusLabel.text = _("PESF Segment now uses model {version}.").format(version=version)

    # ------------------------------------------------------------------ polling
    def onPollTimer(self) -> None:
        if self.logic.workspace is None:
            return
        try:
            progress = self.logic.poll()
            lines = self.logic.newLogLines()
        except Exception as exc:  # noqa: BLE001 - a vanished workspace: say so once and stop polling
            self._pollTimer.stop()
            slicer.util.errorDisplay(_("Stopped following the workspace: {error}").format(error=exc))
            return
        self.ui.progressBar.value = int(round(progress.fraction * 1000))
        self.ui.progressLabel.text = progress.summary()
        for line in lines:
            self.ui.logTextEdit.appendPlainText(line)
        self.updateButtons()

    def onLogicEvent(self, event, info) -> None:
        if event == TrainEvent.ERROR:
            slicer.util.errorDisplay(info["message"])
        elif event == TrainEvent.ENDED:
            self.ui.statusLabel.text = _("Training {state}.").format(state=info["state"])
            self.logic.updateCasesTable()
        elif event == TrainEvent.STARTED:
            self.ui.statusLabel.text = _("Training started.")

    def updateButtons(self, *args) -> None:
        hasWorkspace = self.logic is not None and self.logic.workspace is not None
        running = hasWorkspace and self.logic.running
        self.ui.startButton.enabled = hasWorkspace and not running
        self.ui.stopButton.enabled = running
        self.ui.cancelButton.enabled = running
        self.ui.useVersionButton.enabled = hasWorkspace and self.selectedVersion() is not None


class PESFTrainTest(ScriptedLoadableModuleTest):
    """Trains two steps on a case made from Slicer's sample data and follows the run like the Widget does."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_TrainTwoSteps()

    def test_TrainTwoSteps(self):
        import numpy as np
        import SampleData
        from PESFSegmentLib import activeTrainedModel
        from PESFSegmentLib.geometry import volumeFromNode

        from pesf.models import build_model, save_checkpoint
        from pesf.train.store import CaseStore, OrganRecord

        self.delayDisplay("Making a workspace from sample data")
        volumeNode = SampleData.downloadSample("CTChest")
        image = volumeFromNode(volumeNode)
        temp = pathlib.Path(tempfile.mkdtemp(prefix="PESFTrainTest-"))
        label = np.zeros(image.shape, np.uint8)
        centre = [s // 2 for s in image.shape]
        label[
            centre[0] - 20 : centre[0] + 20, centre[1] - 20 : centre[1] + 20, centre[2] - 5 : centre[2] + 5
        ] = 1
        CaseStore(temp / "workspace", create=True).add_case(
            image,
            image.with_array(label),
            [OrganRecord("liver", 1, "accepted", source="import")],
            case_id="ctchest",
        )
        base = save_checkpoint(build_model("tiny", seed=0), temp / "tiny.pt")
        settings = {"base_model": str(base), "trainable": "decoder", "click_iterations": 1, "device": "cpu"}
        (temp / "settings.json").write_text(json.dumps(settings), encoding="utf-8")

        events = []
        logic = PESFTrainLogic(slicer.mrmlScene, eventCallback=lambda event, info: events.append(event))
        logic.setWorkspace(temp / "workspace")
        self.assertEqual(logic.casesTable.GetNumberOfRows(), 1)
        self.delayDisplay("Training two steps")
        process = logic.startTraining(maxSteps=2, configFile=str(temp / "settings.json"))
        self.assertEqual(process.wait(900), 0, "\n".join(process.outputTail()))
        progress = logic.poll()
        self.assertEqual((progress.state, progress.step, progress.totalSteps), ("finished", 2, 2))
        self.assertIn(TrainEvent.ENDED, events)
        self.assertNotIn(TrainEvent.ERROR, events)
        self.assertEqual(logic.curves.lossTable.GetNumberOfRows(), 2)
        self.assertEqual(logic.versionsTable.GetNumberOfRows(), 1)
        self.assertTrue(logic.newLogLines())
        logic.useVersion("v1")
        self.assertEqual(activeTrainedModel(slicer.mrmlScene).version, "v1")
        logging.info("PESFTrain test passed")
        self.delayDisplay("Test passed")
