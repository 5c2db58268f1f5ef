"""Small line charts as inline SVG (learning curves in the training panel): no plotting library, no images.

The chart is drawn from plain lists, so it redraws in microseconds whenever ``curves.json`` changes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

__all__ = ["Series", "line_chart"]

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")


class Series:
    """One line: ``x`` and ``y`` values (non-finite ``y`` values are gaps) and its legend label."""

    def __init__(self, label: str, x: Sequence[float], y: Sequence[float | None], color: str | None = None):
        self.label = label
        self.points = [
            (float(a), float(b))
            for a, b in zip(x, y, strict=False)
            if b is not None and math.isfinite(float(b)) and math.isfinite(float(a))
        ]
        self.color = color


def _fmt(value: float) -> str:
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.3g}"
    return f"{value:.1e}"


def line_chart(
    series: Sequence[Series], title: str, width: int = 360, height: int = 150, empty_text: str = "no data yet"
) -> str:
    """An SVG line chart of ``series`` sharing one pair of axes, with a legend and min/max tick labels."""
    left, right, top, bottom = 44, 8, 18, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f'<text x="{left}" y="12" font-size="11" fill="currentColor">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888" '
        'stroke-width="0.5"/>',
    ]
    points = [p for s in series for p in s.points]
    if not points:
        parts.append(
            f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" font-size="11" fill="#888" '
            f'text-anchor="middle">{escape(empty_text)}</text></svg>'
        )
        return "".join(parts)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * plot_h

    for label, x, anchor in ((_fmt(x0), left, "start"), (_fmt(x1), left + plot_w, "end")):
        parts.append(
            f'<text x="{x}" y="{top + plot_h + 12}" font-size="10" fill="#888" text-anchor="{anchor}">'
            f"{label}</text>"
        )
    for label, y in ((_fmt(y1), top + 8), (_fmt(y0), top + plot_h)):
        parts.append(
            f'<text x="{left - 4}" y="{y}" font-size="10" fill="#888" text-anchor="end">{label}</text>'
        )
    legend_x = left
    for index, line in enumerate(series):
        color = line.color or _PALETTE[index % len(_PALETTE)]
        if line.points:
            coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in line.points)
            parts.append(
                f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.5"/>'
                if len(line.points) > 1
                else f'<circle cx="{sx(line.points[0][0]):.1f}" cy="{sy(line.points[0][1]):.1f}" r="2.5" '
                f'fill="{color}"/>'
            )
        parts.append(
            f'<text x="{legend_x}" y="{height - 4}" font-size="10" fill="{color}">{escape(line.label)}</text>'
        )
        legend_x += 8 + 6 * len(line.label)
    parts.append("</svg>")
    return "".join(parts)
