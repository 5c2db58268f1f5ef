"""The organ list: standard names, display names, colours, label values and Slicer terminology entries.

Standard organs come from the engine's organ table (``pesf/data/organs.json``: TotalSegmentator names,
Slicer General Anatomy colours, SNOMED CT codes); their label value is their position in that table, so
label maps exported from different cases agree. Other organs ("tumour", "cyst 2") get a stable colour and
the next free value above the standard ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from .translation import _

__all__ = ["OrganEntry", "applyOrganToSegment", "organEntry", "standardOrgans"]


@dataclass(frozen=True)
class OrganEntry:
    """One organ of the list.

    Attributes:
        name: engine name, e.g. ``"kidney_left"`` (also the segment id and the case store's organ name).
        displayName: shown to the user, e.g. ``"Left kidney"`` (the segment name).
        color: RGB in ``0..1``.
        labelValue: value in exported label maps.
        terminology: Slicer terminology entry string, or ``""`` for organs outside the table.
    """

    name: str
    displayName: str
    color: tuple[float, float, float]
    labelValue: int
    terminology: str = ""

    @property
    def standard(self) -> bool:
        return bool(self.terminology)


def standardOrgans() -> list[OrganEntry]:
    """Every organ of the standard table, in table order (label values 1, 2, ...)."""
    from pesf.io.labels import organ_table, terminology_to_string

    return [
        OrganEntry(
            name=info.name,
            displayName=info.display_name,
            color=tuple(float(c) for c in info.color),
            labelValue=index + 1,
            terminology=terminology_to_string(info.terminology) if info.terminology else "",
        )
        for index, info in enumerate(organ_table().values())
    ]


def organEntry(text: str, usedValues: set[int] | frozenset[int] = frozenset()) -> OrganEntry:
    """The organ a user typed or picked: a standard organ by name or display name, else a custom organ.

    Args:
        text: ``"liver"``, ``"Left kidney"``, ``"kidney left"`` or a new name such as ``"tumour"``.
        usedValues: label values already taken (a custom organ gets the next free value above the table).

    Raises:
        ValueError: empty text.
    """
    from pesf.io.labels import normalize_organ_name, organ_color

    text = (text or "").strip()
    if not text:
        raise ValueError(_("Type or pick an organ name."))
    organs = standardOrgans()
    key = normalize_organ_name(text)
    for entry in organs:
        if key in (entry.name, normalize_organ_name(entry.displayName)):
            return entry
    value = len(organs) + 1
    while value in usedValues:
        value += 1
    color = tuple(float(c) for c in organ_color(key))
    return OrganEntry(name=key, displayName=text, color=color, labelValue=value)  # type: ignore[arg-type]


def applyOrganToSegment(segment, entry: OrganEntry) -> None:
    """Give a ``vtkSegment`` the organ's name, colour and terminology entry (so exports carry the codes)."""
    segment.SetName(entry.displayName)
    segment.SetColor(*entry.color)
    if not entry.terminology:
        return
    if hasattr(segment, "SetTerminology"):  # Slicer >= 5.9
        segment.SetTerminology(entry.terminology)
    else:
        segment.SetTag(segment.GetTerminologyEntryTagName(), entry.terminology)
