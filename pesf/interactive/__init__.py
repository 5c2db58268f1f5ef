"""Interactive point-prompted segmentation on one volume."""

from __future__ import annotations

from pesf.interactive.result import OrganResult
from pesf.interactive.session import InteractiveSession, SessionConfig

__all__ = ["InteractiveSession", "OrganResult", "SessionConfig"]
