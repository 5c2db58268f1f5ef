"""PESFSegment: point-prompted organ segmentation with confidence, review and curation."""

from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import ScriptedLoadableModule


class PESFSegment(ScriptedLoadableModule):
    """Module metadata: where PESFSegment appears in Slicer and who made it."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("PESF Segment")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["The PESF Authors"]
        self.parent.helpText = _(
            "Place positive and negative points on a volume to segment organs with a SAM-Med3D-compatible "
            "model; review each organ's confidence, accept or reject it, export label maps and send curated "
            "cases to PESF training."
        )
        self.parent.acknowledgementText = _(
            "PESF follows Jin et al., Neural Networks 2025, and is compatible with SAM-Med3D checkpoints."
        )
