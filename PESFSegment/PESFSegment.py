"""PESFSegment: point-prompted organ segmentation with confidence, review and curation.

Module, Widget and self-test. Everything that computes lives in ``PESFSegmentLib`` (no Qt there); the Widget
binds the GUI to a typed parameter node, forwards user actions to the Logic inside ``tryWithErrorDisplay``
and applies inference results on the GUI thread from a timer.
"""

import enum
import logging
import pathlib
import tempfile
from typing import Annotated

import qt
import slicer
import vtk
from PESFSegmentLib import (
    ACCEPTED,
    PENDING,
    REJECTED,
    ModelChoice,
    PESFSegmentLogic,
    SegmentEvent,
    activeTrainedModel,
    dependencies,
    organEntry,
    sharedSettingsNode,
    standardOrgans,
)
from PESFSegmentLib.organtable import organAtRow
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


class PESFSegment(ScriptedLoadableModule):
    """Module metadata: where PESFSegment appears in Slicer and who made it."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("PESF Segment")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Markups", "Segmentations"]
        self.parent.contributors = ["The PESF Authors"]
        self.parent.helpText = _(
            "Place positive and negative points on a volume to segment organs with a SAM-Med3D-compatible "
            "model; review each organ's confidence, accept or reject it, export label maps and send curated "
            "cases to PESF training."
        )
        self.parent.acknowledgementText = _(
            "PESF follows Jin et al., Neural Networks 2025, and is compatible with SAM-Med3D checkpoints."
        )


class PESFModelSource(enum.Enum):
    """Where the model comes from."""

    Bundled = "bundled"
    File = "file"
    Trained = "trained"

    def label(self):
        return {
            PESFModelSource.Bundled: _("Bundled default model"),
            PESFModelSource.File: _("Checkpoint file"),
            PESFModelSource.Trained: _("Version chosen in PESF Train"),
        }[self]


class PESFExportFormat(enum.Enum):
    """File type of exports (the value is the extension)."""

    NIfTI = ".nii.gz"
    NRRD = ".nrrd"
    Segmentation = ".seg.nrrd"

    def label(self):
        return {
            PESFExportFormat.NIfTI: _("Label map, NIfTI (.nii.gz)"),
            PESFExportFormat.NRRD: _("Label map, NRRD (.nrrd)"),
            PESFExportFormat.Segmentation: _("Slicer segmentation (.seg.nrrd)"),
        }[self]


@parameterNodeWrapper
class PESFSegmentParameterNode:
    """The module's settings, bound to the GUI through ``SlicerParameterName`` in the .ui file."""

    inputVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    modelSource: PESFModelSource = PESFModelSource.Bundled
    modelFile: pathlib.Path
    negative: bool = False
    acceptThreshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.8
    showConfidence: bool = True
    confidenceOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    exportFormat: PESFExportFormat = PESFExportFormat.NIfTI
    exportDirectory: pathlib.Path
    workspace: pathlib.Path
    caseId: str = ""
    overwriteCase: bool = False


def _isSet(path) -> bool:
    return str(path) not in ("", ".")


def ensureDependencies() -> bool:
    """Install the Python packages PESF lacks, after the user agrees (at first use). False if declined.

    PyTorch comes through the PyTorch extension (``PyTorchUtils``) in the version PESF needs; the rest from
    ``Resources/requirements.txt`` with pip. Nothing is imported to check: package metadata is read.
    """
    missing = dependencies.missingRequirements()
    torchMissing = not dependencies.torchSatisfied()
    if not missing and not torchMissing:
        return True
    packages = ([dependencies.TORCH_REQUIREMENT] if torchMissing else []) + missing
    if not slicer.util.confirmOkCancelDisplay(
        _(
            "PESF needs Python packages that are not installed yet:\n{packages}\n\nInstall them now? "
            "This downloads them and may take several minutes."
        ).format(packages="\n".join(packages))
    ):
        return False
    with slicer.util.WaitCursor():
        if torchMissing:
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                raise RuntimeError(
                    _(
                        "PESF needs the PyTorch extension: install 'PyTorch' from the Extensions Manager, "
                        "restart Slicer and try again."
                    )
                ) from None
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=False, torchVersionRequirement=dependencies.TORCH_VERSION_REQUIREMENT
            )
            if torch is None:
                raise RuntimeError(_("PyTorch could not be installed."))
        if missing:
            slicer.util.pip_install(missing)
    return True


class PESFSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: inputs, prompts, review, export, send to training."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._shortcuts = []
        self._resultTimer = None
        self._started = None  # (volume, segmentation, model choice) of the running session

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PESFSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = PESFSegmentLogic(slicer.mrmlScene, eventCallback=self.onLogicEvent)
        self.logic.polarityProvider = self.nextPointPositive

        self.ui.organComboBox.addItems([organ.displayName for organ in standardOrgans()])
        self.ui.placeWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.placeWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
        self.ui.placeWidget.buttonsVisible = False
        self.ui.placeWidget.placeButton().show()
        self.ui.organTableView.setMRMLScene(slicer.mrmlScene)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.observeSharedSettings()

        self.ui.startButton.connect("clicked(bool)", self.onStartButton)
        self.ui.addOrganButton.connect("clicked(bool)", self.onAddOrganButton)
        self.ui.organComboBox.connect("currentTextChanged(QString)", self.onOrganTextChanged)
        self.ui.undoButton.connect("clicked(bool)", self.onUndoButton)
        self.ui.acceptButton.connect("clicked(bool)", self.onAcceptButton)
        self.ui.rejectButton.connect("clicked(bool)", self.onRejectButton)
        self.ui.removeOrganButton.connect("clicked(bool)", self.onRemoveOrganButton)
        self.ui.acceptAboveButton.connect("clicked(bool)", self.onAcceptAboveButton)
        self.ui.organTableView.connect("selectionChanged()", self.onOrganTableSelectionChanged)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.ui.exportDicomButton.connect("clicked(bool)", self.onExportDicomButton)
        self.ui.sendToTrainingButton.connect("clicked(bool)", self.onSendToTrainingButton)

        self._resultTimer = qt.QTimer()
        self._resultTimer.setInterval(50)
        self._resultTimer.connect("timeout()", self.onResultTimer)
        self._resultTimer.start()

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        self.removeShortcuts()
        if self._resultTimer is not None:
            self._resultTimer.stop()
        if self.logic is not None:
            self.logic.cleanup()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.installShortcuts()

    def exit(self) -> None:
        self.removeShortcuts()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified
            )

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        self.logic.clear()
        self._started = None
        self.ui.placeWidget.setCurrentNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        self.observeSharedSettings()
        if self.parent.isEntered:
            self.initializeParameterNode()

    def observeSharedSettings(self) -> None:
        """Follow PESF Train's "Use this version" (the shared settings node, recreated with a new scene)."""
        node = sharedSettingsNode(slicer.mrmlScene)
        if not self.hasObserver(node, vtk.vtkCommand.ModifiedEvent, self.onSharedSettingsModified):
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self.onSharedSettingsModified)

    # ------------------------------------------------------------------ parameter node
    def getParameterNode(self) -> PESFSegmentParameterNode:
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
            node = slicer.mrmlScene.AddNode(node)
        return PESFSegmentParameterNode(node)

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode
        if not _isSet(self._parameterNode.workspace):
            workspace = sharedSettingsNode(slicer.mrmlScene).GetParameter("Workspace")
            if workspace:
                self._parameterNode.workspace = pathlib.Path(workspace)
        if not _isSet(self._parameterNode.exportDirectory):
            self._parameterNode.exportDirectory = pathlib.Path(slicer.app.defaultScenePath)

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
        params = self._parameterNode
        if params is None:
            return
        choice, reason = self.modelChoice()
        canStart = params.inputVolume is not None and choice is not None
        self.ui.startButton.enabled = canStart
        self.ui.startButton.toolTip = (
            _("Load the model and start segmenting the input volume.")
            if canStart
            else (reason or _("Select an input volume."))
        )
        isFile = params.modelSource == PESFModelSource.File
        self.ui.modelFileLabel.visible = self.ui.modelFilePathLineEdit.visible = isFile
        isTrained = params.modelSource == PESFModelSource.Trained
        self.ui.trainedModelTitleLabel.visible = self.ui.trainedModelLabel.visible = isTrained
        trained, reason = self.trainedChoice()
        self.ui.trainedModelLabel.text = (
            trained.version if trained else reason or _("none chosen in PESF Train")
        )
        if self.logic.confidenceMap is not None:
            self.logic.showConfidenceMap(params.showConfidence, params.confidenceOpacity)
        self.updateButtons()

    def modelChoice(self):
        """``(ModelChoice, None)`` for the chosen model, or ``(None, reason)`` when it is not usable yet."""
        params = self._parameterNode
        if params.modelSource == PESFModelSource.Bundled:
            return ModelChoice.bundled(), None
        if params.modelSource == PESFModelSource.File:
            if not _isSet(params.modelFile):
                return None, _("Choose a checkpoint file.")
            try:
                return ModelChoice.checkpoint(params.modelFile), None
            except ValueError as exc:
                return None, str(exc)
        trained, reason = self.trainedChoice()
        return trained, None if trained else reason or _("Choose a model version in PESF Train first.")

    def trainedChoice(self):
        """The version chosen in PESF Train as ``(ModelChoice, None)``; ``(None, None)`` when none is chosen,
        ``(None, reason)`` when the chosen one is unusable."""
        workspace = self._parameterNode.workspace
        try:
            trained = activeTrainedModel(slicer.mrmlScene, workspace if _isSet(workspace) else None)
        except ValueError as exc:
            return None, str(exc)
        return trained, None

    # ------------------------------------------------------------------ actions
    def onStartButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to start segmenting."), waitCursor=True):
            if not ensureDependencies():
                return
            params = self._parameterNode
            choice, reason = self.modelChoice()
            if choice is None:
                raise ValueError(reason)
            if self.logic.model != choice:
                self.logic.setModel(choice)
            if self._started is None or self._started[:2] != (params.inputVolume, params.segmentation):
                self.logic.setInputVolume(params.inputVolume, params.segmentation)
                params.segmentation = self.logic.segmentationNode
                self.ui.organTableView.setMRMLTableNode(self.logic.tableNode)
                slicer.util.setSliceViewerLayers(background=params.inputVolume)
            self._started = (params.inputVolume, params.segmentation, choice)
            self.logic.showConfidenceMap(params.showConfidence, params.confidenceOpacity)
            self.ui.statusLabel.text = _("Loading model {version}...").format(version=choice.version)
            self.updateButtons()

    def currentOrgan(self):
        """The organ shown in the organ box if it has been added, else ``None``."""
        text = self.ui.organComboBox.currentText
        if not text.strip() or self.logic.segmentationNode is None:
            return None
        name = organEntry(text).name
        return name if name in self.logic.organs else None

    def onOrganTextChanged(self, text) -> None:
        organ = self.currentOrgan()
        self.ui.placeWidget.setCurrentNode(self.logic.promptsNode(organ) if organ else None)
        self.updateButtons()

    def onAddOrganButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to add the organ."), waitCursor=True):
            state = self.logic.addOrgan(self.ui.organComboBox.currentText)
            self.ui.placeWidget.setCurrentNode(self.logic.promptsNode(state.name))
            self.ui.placeWidget.setPlaceModeEnabled(True)
            self.updateButtons()

    def nextPointPositive(self) -> bool:
        """Polarity of a point placed in a view: the Negative toggle, inverted while Ctrl is held."""
        negative = bool(self._parameterNode and self._parameterNode.negative)
        if qt.QApplication.keyboardModifiers() & qt.Qt.ControlModifier:
            negative = not negative
        return not negative

    def onUndoButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to undo the last point.")):
            organ = self.currentOrgan()
            if organ:
                self.logic.undoLastPrompt(organ)

    def onAcceptButton(self) -> None:
        self._setStatus(ACCEPTED)

    def onRejectButton(self) -> None:
        self._setStatus(REJECTED)

    def _setStatus(self, status) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to change the organ's status.")):
            organ = self.currentOrgan()
            if organ:
                self.logic.setOrganStatus(organ, status)

    def onRemoveOrganButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to remove the organ.")):
            organ = self.currentOrgan()
            if organ:
                self.logic.removeOrgan(organ)
                self.ui.placeWidget.setCurrentNode(None)
                self.updateButtons()

    def onAcceptAboveButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to accept organs.")):
            accepted = self.logic.acceptAboveThreshold(self._parameterNode.acceptThreshold)
            self.ui.statusLabel.text = _("Accepted {count} organs.").format(count=len(accepted))

    def onOrganTableSelectionChanged(self) -> None:
        indexes = self.ui.organTableView.selectionModel().selectedRows()
        if not indexes:
            return
        index = indexes[0]
        model = self.ui.organTableView.model()
        if hasattr(model, "mapToSource"):
            index = model.mapToSource(index)
        organ = organAtRow(self.logic.tableNode, index.row())
        if organ in self.logic.organs:
            self.ui.organComboBox.setCurrentText(self.logic.organs[organ].entry.displayName)

    def onExportButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to export the accepted organs."), waitCursor=True):
            params = self._parameterNode
            folder = pathlib.Path(params.exportDirectory)
            path = folder / f"{params.inputVolume.GetName()}_pesf{params.exportFormat.value}"
            written = self.logic.exportAccepted(path)
            self.ui.statusLabel.text = _("Exported to {path}").format(path=written)

    def onExportDicomButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to export DICOM SEG."), waitCursor=True):
            import DICOMSegmentationPlugin

            node = self.logic.acceptedSegmentationNode()
            try:
                hierarchy = slicer.mrmlScene.GetSubjectHierarchyNode()
                exporter = DICOMSegmentationPlugin.DICOMSegmentationPluginClass()
                exportables = exporter.examineForExport(hierarchy.GetItemByDataNode(node))
                folder = str(self._parameterNode.exportDirectory)
                for exportable in exportables:
                    exportable.directory = folder
                error = exporter.export(exportables)
                if error:
                    raise RuntimeError(error)
            finally:
                slicer.mrmlScene.RemoveNode(node)
            self.ui.statusLabel.text = _("DICOM SEG written to {path}").format(path=folder)

    def onSendToTrainingButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to send the case to training."), waitCursor=True):
            if not ensureDependencies():
                return
            params = self._parameterNode
            record = self.logic.sendToTraining(params.workspace, params.caseId or None, params.overwriteCase)
            sharedSettingsNode(slicer.mrmlScene).SetParameter("Workspace", str(params.workspace))
            self.ui.statusLabel.text = _("Sent case {case} ({count} organs) to {workspace}").format(
                case=record.case_id, count=len(record.organs), workspace=params.workspace
            )

    # ------------------------------------------------------------------ results and state
    def onResultTimer(self) -> None:
        if self.logic is not None:
            self.logic.processResults()

    def onLogicEvent(self, event, info) -> None:
        if event == SegmentEvent.ERROR:
            slicer.util.errorDisplay(info["message"])
        elif event == SegmentEvent.MODEL_LOADED:
            self.ui.statusLabel.text = _("Model {version} ready: place points in a slice view.").format(
                version=info["version"]
            )
        self.updateButtons()

    def onSharedSettingsModified(self, caller=None, event=None) -> None:
        if self._parameterNode is None:
            return
        self.onParameterNodeModified()
        if self._started is not None and self._parameterNode.modelSource == PESFModelSource.Trained:
            choice, _reason = self.modelChoice()
            if choice is not None and choice != self.logic.model:
                self.logic.setModel(choice)
                self._started = (*self._started[:2], choice)

    def updateButtons(self) -> None:
        started = self.logic is not None and self.logic.segmentationNode is not None
        organ = self.currentOrgan() if started else None
        state = self.logic.organs.get(organ) if organ else None
        self.ui.addOrganButton.enabled = started and not organ
        self.ui.placeWidget.enabled = organ is not None
        self.ui.undoButton.enabled = organ is not None
        self.ui.acceptButton.enabled = state is not None and state.status != ACCEPTED
        self.ui.rejectButton.enabled = state is not None and state.status != REJECTED
        self.ui.removeOrganButton.enabled = organ is not None
        pending = started and any(s.status == PENDING for s in self.logic.organs.values())
        self.ui.acceptAboveButton.enabled = pending
        accepted = started and bool(self.logic.acceptedOrgans())
        self.ui.exportButton.enabled = accepted
        volume = self._parameterNode.inputVolume if self._parameterNode else None
        fromDicom = volume is not None and bool(volume.GetAttribute("DICOM.instanceUIDs"))
        self.ui.exportDicomButton.enabled = accepted and fromDicom
        workspace = self._parameterNode.workspace if self._parameterNode else None
        self.ui.sendToTrainingButton.enabled = started and bool(self.logic.organs) and _isSet(workspace)

    # ------------------------------------------------------------------ shortcuts
    def installShortcuts(self) -> None:
        self.removeShortcuts()
        mainWindow = slicer.util.mainWindow()
        if mainWindow is None:
            return
        keys = {
            "A": self.onAcceptButton,
            "R": self.onRejectButton,
            "U": self.onUndoButton,
            "N": lambda: setattr(self._parameterNode, "negative", not self._parameterNode.negative),
        }
        for key, callback in keys.items():
            shortcut = qt.QShortcut(mainWindow)
            shortcut.setKey(qt.QKeySequence(key))
            shortcut.connect("activated()", callback)
            self._shortcuts.append(shortcut)

    def removeShortcuts(self) -> None:
        for shortcut in self._shortcuts:
            shortcut.disconnect("activated()")
            shortcut.setParent(None)
        self._shortcuts = []


class PESFSegmentTest(ScriptedLoadableModuleTest):
    """Runs the Logic on Slicer's sample data: segment, review, export, send to training."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentReviewExport()

    def test_SegmentReviewExport(self):
        import SampleData
        import SimpleITK as sitk
        from PESFSegmentLib.curation import TAG_CONFIDENCE, TAG_STATUS, readTag

        from pesf.models import build_model, save_checkpoint
        from pesf.train.store import CaseStore

        self.delayDisplay("Loading sample data")
        volumeNode = SampleData.downloadSample("CTChest")
        temp = pathlib.Path(tempfile.mkdtemp(prefix="PESFSegmentTest-"))
        checkpoint = save_checkpoint(build_model("tiny", seed=0), temp / "tiny.pt")

        errors = []
        logic = PESFSegmentLogic(
            slicer.mrmlScene,
            eventCallback=lambda event, info: errors.append(info) if event == SegmentEvent.ERROR else None,
        )
        try:
            logic.setModel(ModelChoice.checkpoint(checkpoint))
            logic.setInputVolume(volumeNode)
            state = logic.addOrgan("liver")
            bounds = [0.0] * 6
            volumeNode.GetRASBounds(bounds)
            center = [(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2]
            self.delayDisplay("Segmenting from one point")
            logic.addPrompt("liver", center)
            self.assertTrue(logic.waitForResults(600))
            self.assertEqual(errors, [])
            segment = logic.segmentationNode.GetSegmentation().GetSegment(state.segmentId)
            self.assertEqual(readTag(segment, TAG_STATUS), "pending")
            self.assertTrue(0.0 <= float(readTag(segment, TAG_CONFIDENCE)) <= 1.0)
            self.assertEqual(state.clicks, 1)

            logic.acceptOrgan("liver")
            self.assertEqual(readTag(segment, TAG_STATUS), "accepted")
            exported = logic.exportAccepted(temp / "liver.nii.gz")
            image = sitk.ReadImage(str(exported))
            self.assertEqual(list(image.GetSize()), list(volumeNode.GetImageData().GetDimensions()))

            record = logic.sendToTraining(temp / "workspace", caseId="ctchest")
            stored = CaseStore(temp / "workspace").get(record.case_id)
            self.assertEqual(stored.organs["liver"].status, "accepted")

            self.assertTrue(logic.undoLastPrompt("liver"))
            self.assertTrue(logic.waitForResults(600))
            self.assertEqual(state.clicks, 0)
        finally:
            logic.cleanup()
        logging.info("PESFSegment test passed")
        self.delayDisplay("Test passed")
