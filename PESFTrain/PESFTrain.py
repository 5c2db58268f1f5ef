"""PESFTrain: the background PESF training loop on a workspace of curated cases."""

from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import ScriptedLoadableModule


class PESFTrain(ScriptedLoadableModule):
    """Module metadata: where PESFTrain appears in Slicer and who made it."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("PESF Train")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["The PESF Authors"]
        self.parent.helpText = _(
            "Start and stop the background PESF training loop on a case store, follow its progress, and choose "
            "which trained model version PESF Segment uses."
        )
