"""Leaving PESF Segment: label maps and Slicer segmentations of accepted organs, and cases for training.

Masks are read back from the segments (so edits made with the Segment Editor count) and resampled onto the
input volume's grid, so every export has exactly the volume's geometry. Label values are the organs' standard
values (see :mod:`.organs`); where organs overlap, the first organ given wins.

Sending a case to training writes the image, a partial label map and one record per organ into the PESF case
store: accepted organs are ``accepted``, pending ones ``pseudo`` (with their confidence, so the trainer's
confidence filter can drop weak ones), rejected ones ``rejected`` with their voxels in the unknown mask.
"""

from __future__ import annotations

import getpass
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import slicer

from .curation import ACCEPTED, PENDING, REJECTED, OrganState
from .geometry import gridShape, orientedImageToMask, volumeFromNode, volumeGeometry
from .translation import _

__all__ = ["EXPORT_EXTENSIONS", "exportLabelmap", "labelArray", "segmentMask", "sendToTraining"]

logger = logging.getLogger(__name__)

#: File types of :func:`exportLabelmap`.
EXPORT_EXTENSIONS = (".nii.gz", ".nrrd", ".seg.nrrd", ".nii")


def segmentMask(segmentationNode, segmentId: str, volumeNode) -> np.ndarray:
    """A segment's voxels on the volume's grid, bool ``[i, j, k]``."""
    image = slicer.vtkOrientedImageData()
    if not segmentationNode.GetBinaryLabelmapRepresentation(segmentId, image):
        return np.zeros(gridShape(volumeNode), dtype=bool)
    return orientedImageToMask(image, volumeNode)


def labelArray(segmentationNode, volumeNode, organs: Sequence[OrganState]) -> np.ndarray:
    """A label map of ``organs`` on the volume's grid (``uint8``/``uint16``); the first organ wins overlaps."""
    top = max((o.entry.labelValue for o in organs), default=0)
    labels = np.zeros(gridShape(volumeNode), dtype=np.uint8 if top <= 255 else np.uint16)
    for organ in reversed(organs):
        labels[segmentMask(segmentationNode, organ.segmentId, volumeNode)] = organ.entry.labelValue
    return labels


def _userName() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError, ImportError):
        return ""


def exportLabelmap(
    path: str | os.PathLike[str], volumeNode, segmentationNode, organs: Sequence[OrganState]
) -> Path:
    """Write ``organs`` as a label map on the volume's grid: NIfTI, NRRD or a Slicer ``.seg.nrrd``.

    ``.seg.nrrd`` keeps each organ's name, colour, label value and terminology codes.

    Raises:
        ValueError: no organs, or an unsupported file type.
    """
    from pesf.io import SegmentInfo, Volume, write_labelmap

    path = Path(path)
    if not organs:
        raise ValueError(_("No accepted organ to export: accept organs first."))
    if not path.name.lower().endswith(EXPORT_EXTENSIONS):
        raise ValueError(
            _("Cannot export to '{name}': use .nii.gz, .nrrd or .seg.nrrd.").format(name=path.name)
        )
    labels = labelArray(segmentationNode, volumeNode, organs)
    segments = {
        o.entry.labelValue: SegmentInfo(
            name=o.entry.displayName,
            value=o.entry.labelValue,
            color=o.entry.color,
            terminology=o.entry.terminology or None,
        )
        for o in organs
    }
    written = write_labelmap(Volume(labels, *volumeGeometry(volumeNode)), path, segments)
    logger.info("exported %d organs to %s", len(organs), written)
    return written


def sendToTraining(
    workspace: str | os.PathLike[str],
    volumeNode,
    segmentationNode,
    organs: Sequence[OrganState],
    caseId: str | None = None,
    overwrite: bool = False,
):
    """Write the volume and its reviewed organs as a case of the PESF case store at ``workspace``.

    Args:
        workspace: the case store (created when it is a new or empty folder).
        volumeNode: the image.
        segmentationNode: the organs' segments.
        organs: the organs; empty masks are left out.
        caseId: the case id (default: made from the volume's name).
        overwrite: replace an existing case of that id.

    Returns:
        The case's ``CaseRecord``.

    Raises:
        ValueError: nothing to send.
        pesf.errors.PesfError: the store refused the case (exists, bad id, busy workspace...).
    """
    from pesf.train.store import CaseStore, OrganRecord, case_id_from_name

    order = {ACCEPTED: 0, PENDING: 1, REJECTED: 2}
    ranked = sorted(organs, key=lambda o: order[o.status])
    masks = {o.name: segmentMask(segmentationNode, o.segmentId, volumeNode) for o in ranked}
    painted = [o for o in ranked if o.status != REJECTED and masks[o.name].any()]
    shape = gridShape(volumeNode)
    top = max((o.entry.labelValue for o in painted), default=0)
    labels = np.zeros(shape, dtype=np.uint8 if top <= 255 else np.uint16)
    for organ in reversed(painted):
        labels[masks[organ.name]] = organ.entry.labelValue
    unknown = np.zeros(shape, dtype=bool)
    user = _userName()
    records = []
    for organ in ranked:
        if organ.status == REJECTED:
            if not masks[organ.name].any():
                continue
            unknown |= masks[organ.name] & (labels == 0)
        elif not np.any(labels == organ.entry.labelValue):
            if masks[organ.name].any():
                logger.warning("%s lies entirely under other organs; it is not sent", organ.name)
            continue
        confidence = None if organ.confidence is None else min(1.0, max(0.0, float(organ.confidence)))
        records.append(
            OrganRecord(
                name=organ.name,
                value=organ.entry.labelValue,
                status={ACCEPTED: "accepted", PENDING: "pseudo", REJECTED: "rejected"}[organ.status],
                confidence=confidence,
                source=organ.source,
                author=user if organ.status != PENDING else f"pesf-model {organ.modelVersion}".strip(),
                model_version=organ.modelVersion or None,
                n_clicks=organ.clicks,
            )
        )
    if not records:
        raise ValueError(_("No organ to send: segment and review organs first."))
    image = volumeFromNode(volumeNode)
    store = CaseStore(workspace, create=True)
    record = store.add_case(
        image,
        image.with_array(labels),
        records,
        case_id=caseId or case_id_from_name(volumeNode.GetName() or "case"),
        unknown=unknown if unknown.any() else None,
        overwrite=overwrite,
    )
    logger.info("sent case %s (%d organs) to %s", record.case_id, len(records), workspace)
    return record
