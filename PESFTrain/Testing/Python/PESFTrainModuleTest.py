"""PESF Train's module test, run by Slicer's test runner (``ctest -R py_PESFTrainModuleTest``).

It runs the module's self-test (``PESFTrainTest``: a real two-step training run on a case made from Slicer's
CTChest sample, followed through status, curves, log and versions) and checks the Widget: Start needs a
workspace, and choosing one fills the cases table.
"""

import pathlib
import tempfile
import unittest

import slicer

from PESFTrain import PESFTrainTest  # noqa: F401 - collected here


class PESFTrainWidgetTest(unittest.TestCase):
    """The module panel, driven through its parameter node as a user would through the GUI."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def test_WorkspaceFillsCasesTable(self):
        import numpy as np
        import SampleData
        from PESFSegmentLib.geometry import volumeFromNode

        from pesf.train.store import CaseStore, OrganRecord

        slicer.util.selectModule("PESFTrain")
        widget = slicer.util.getModuleWidget("PESFTrain")
        params = widget.getParameterNode()
        params.workspace = pathlib.Path(tempfile.mkdtemp(prefix="PESFTrainWidgetTest-")) / "missing"
        self.assertFalse(widget.ui.startButton.enabled)

        image = volumeFromNode(SampleData.downloadSample("MRHead"))
        label = np.zeros(image.shape, np.uint8)
        label[100:120, 100:120, 60:70] = 1
        workspace = pathlib.Path(tempfile.mkdtemp(prefix="PESFTrainWidgetTest-")) / "workspace"
        CaseStore(workspace, create=True).add_case(
            image,
            image.with_array(label),
            [OrganRecord("brain", 1, "accepted", source="import")],
            case_id="mrhead",
        )
        params.workspace = workspace
        self.assertTrue(widget.ui.startButton.enabled)
        self.assertFalse(widget.ui.stopButton.enabled)
        self.assertEqual(widget.logic.casesTable.GetNumberOfRows(), 1)
