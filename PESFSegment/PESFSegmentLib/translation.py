"""User-facing text of the Logic, translated inside Slicer and left as is elsewhere.

Inside 3D Slicer ``slicer.i18n.tr`` translates through the application's translators; slicer-core (the
Python wheel used by tests and PESF Studio) has no translations, so the text stays English there.
"""

from __future__ import annotations

__all__ = ["_"]

try:
    from slicer.i18n import tr as _
except ImportError:  # slicer-core without the Slicer application

    def _(text: str) -> str:
        """Return ``text`` unchanged (no translator outside the Slicer application)."""
        return text
