"""PESF Segment's module test, run by Slicer's test runner (``ctest -R py_PESFSegmentModuleTest``).

It runs the module's self-test (``PESFSegmentTest``: the Logic on Slicer's CTChest sample: segment from a
point, review, export, send to training) and checks the Widget: Start is enabled only when the inputs are
valid, and the parameter node drives the GUI.
"""

import pathlib
import unittest

import slicer

from PESFSegment import PESFModelSource, PESFSegmentTest  # noqa: F401 - PESFSegmentTest is collected here


class PESFSegmentWidgetTest(unittest.TestCase):
    """The module panel, driven through its parameter node as a user would through the GUI."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def test_StartEnabledOnlyWithValidInputs(self):
        import SampleData

        slicer.util.selectModule("PESFSegment")
        widget = slicer.util.getModuleWidget("PESFSegment")
        params = widget.getParameterNode()
        params.inputVolume = None
        self.assertFalse(widget.ui.startButton.enabled)

        params.inputVolume = SampleData.downloadSample("MRHead")
        params.modelSource = PESFModelSource.Bundled
        self.assertTrue(widget.ui.startButton.enabled)

        params.modelSource = PESFModelSource.File
        params.modelFile = pathlib.Path(slicer.app.temporaryPath) / "no-such-model.pt"
        self.assertFalse(widget.ui.startButton.enabled)
        self.assertTrue(widget.ui.modelFilePathLineEdit.visible)

        params.modelSource = PESFModelSource.Bundled
        self.assertTrue(widget.ui.startButton.enabled)
        self.assertFalse(widget.ui.acceptButton.enabled)  # nothing segmented yet
        self.assertFalse(widget.ui.exportButton.enabled)
