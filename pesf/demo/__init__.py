"""``pesf demo``: the engine end to end on the bundled sample CT (segmentation, outputs, one PESF round)."""

from __future__ import annotations

from pesf.demo.run import (
    DEMO_ORGANS,
    DemoCallbacks,
    DemoOptions,
    DemoResult,
    format_demo_table,
    run_demo,
    sample_case,
)

__all__ = [
    "DEMO_ORGANS",
    "DemoCallbacks",
    "DemoOptions",
    "DemoResult",
    "format_demo_table",
    "run_demo",
    "sample_case",
]
