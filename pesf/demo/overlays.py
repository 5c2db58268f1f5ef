"""PNG overlays of one organ's segmentation: an axial and a coronal slice through the organ's centroid.

Each panel shows the image in grey, the voxel confidence as a heat map over the organ and its uncertain
surroundings, the predicted outline in the organ's colour, the reference outline dashed, and the clicks that
lie on the slice. Slices are shown in the radiological convention (patient right on the image's left,
anterior up in axial views, superior up in coronal views) whatever the volume's orientation, with axes in
millimetres so the aspect ratio follows the voxel spacing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pesf.io.atomic import atomic_path
from pesf.io.labels import organ_color
from pesf.io.volume import Volume

__all__ = ["OrganOverlay", "canonical_axes", "write_organ_overlay"]


def canonical_axes(volume: Volume) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """How to bring ``volume.array`` to the nearest L, P, S orientation by axis permutation and flips.

    Returns:
        ``(order, flip)``: canonical axis ``a`` is array axis ``order[a]``, reversed when ``flip[a]``; then index
        ``0`` of canonical axis 0 lies towards patient right (values grow towards L), axis 1 grows towards
        posterior, axis 2 towards superior.
    """
    d = np.abs(volume.direction)  # column a: LPS direction of array axis a
    order = [-1, -1, -1]
    used: set[int] = set()
    for lps in np.argsort(-d.max(axis=1)):  # the most clearly aligned patient axis chooses first
        for axis in np.argsort(-d[lps]):
            if int(axis) not in used:
                order[int(lps)] = int(axis)
                used.add(int(axis))
                break
    flip = tuple(bool(volume.direction[lps, order[lps]] < 0) for lps in range(3))
    return tuple(order), flip  # type: ignore[return-value]


def _canonical(array: np.ndarray, order: Sequence[int], flip: Sequence[bool]) -> np.ndarray:
    out = np.transpose(array, order)
    for axis, f in enumerate(flip):
        if f:
            out = np.flip(out, axis)
    return out


@dataclass
class OrganOverlay:
    """What one organ's figure shows.

    Attributes:
        name: organ name (title and colour).
        mask: predicted mask ``(I, J, K)``, boolean.
        confidence: voxel confidence ``(I, J, K)`` in 0..1, or ``None`` to leave the heat map out.
        reference: reference mask ``(I, J, K)`` drawn dashed, or ``None``.
        clicks: ``[(ijk, positive), ...]`` in voxel indices.
        subtitle: a second title line (e.g. Dice, confidence, clicks).
    """

    name: str
    mask: np.ndarray
    confidence: np.ndarray | None = None
    reference: np.ndarray | None = None
    clicks: list[tuple[np.ndarray, bool]] = field(default_factory=list)
    subtitle: str = ""


def _window(image: np.ndarray) -> tuple[float, float]:
    """Display range: a soft-tissue window for CT-like intensities, else the 1st..99th percentile."""
    if float(image.min()) <= -500.0 and float(image.max()) >= 200.0:
        return -160.0, 240.0  # W400 L40
    lo, hi = np.percentile(image, [1.0, 99.0])
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def _slice_through(mask: np.ndarray, axis: int, fallback: np.ndarray | None) -> int:
    """The slice along ``axis`` nearest the centroid of ``mask`` that holds some of it."""
    source = mask if mask.any() else fallback
    if source is None or not source.any():
        return mask.shape[axis] // 2
    other = tuple(a for a in range(3) if a != axis)
    counts = source.sum(axis=other)
    centroid = float((counts * np.arange(len(counts))).sum() / counts.sum())
    filled = np.flatnonzero(counts)
    return int(filled[np.argmin(np.abs(filled - centroid))])


def write_organ_overlay(
    path: str | os.PathLike[str], image: Volume, overlay: OrganOverlay, dpi: int = 110
) -> None:
    """Write ``overlay`` over ``image`` as a PNG with an axial and a coronal panel (atomically).

    Args:
        path: the ``.png`` file.
        image: the volume the masks belong to.
        overlay: what to draw.
        dpi: resolution of the figure.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    order, flip = canonical_axes(image)
    spacing = image.spacing[list(order)]

    def canon(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else _canonical(np.asarray(a), order, flip)

    img = canon(image.array).astype(np.float32)
    mask, ref, conf = canon(overlay.mask.astype(bool)), canon(overlay.reference), canon(overlay.confidence)
    shape = np.array(img.shape)
    clicks = []
    for ijk, positive in overlay.clicks:
        c = np.asarray(ijk, dtype=np.float64)[list(order)]
        c = np.where(flip, shape - 1 - c, c)
        clicks.append((c, positive))
    vmin, vmax = _window(img)
    color = organ_color(overlay.name)

    fig = Figure(figsize=(11.0, 5.6), dpi=dpi, layout="constrained")
    axes = fig.subplots(1, 2)
    heat = None
    for ax, (view, axis) in zip(axes, (("axial", 2), ("coronal", 1)), strict=True):
        index = _slice_through(mask, axis, ref)
        take = [slice(None)] * 3
        take[axis] = index  # type: ignore[call-overload]
        # rows, columns of the panel: axial (P down, L right), coronal (S up, L right)
        row_axis = 1 if view == "axial" else 2

        def panel(a: np.ndarray, _take=tuple(take)) -> np.ndarray:
            return a[_take].T  # (rows = canonical row axis, columns = canonical axis 0)

        width, height = shape[0] * spacing[0], shape[row_axis] * spacing[row_axis]
        # axial: row 0 (anterior) at the top; coronal: the highest row (superior) at the top
        extent = (0.0, width, height, 0.0) if view == "axial" else (0.0, width, 0.0, height)
        origin = "upper" if view == "axial" else "lower"
        ax.imshow(panel(img), cmap="gray", vmin=vmin, vmax=vmax, extent=extent, origin=origin)
        if conf is not None:
            c = panel(conf)
            show = panel(mask) | (c < 0.98)
            heat = ax.imshow(
                np.ma.masked_where(~show, c),
                cmap="inferno",
                vmin=0.0,
                vmax=1.0,
                alpha=0.55,
                extent=extent,
                origin=origin,
                interpolation="nearest",
            )
        rows, cols = panel(mask).shape
        x = (np.arange(cols) + 0.5) * spacing[0]
        y = (np.arange(rows) + 0.5) * spacing[row_axis]
        if ref is not None and panel(ref).any():
            ax.contour(
                x, y, panel(ref).astype(float), levels=[0.5], colors="white", linewidths=1.0, linestyles="--"
            )
        if panel(mask).any():
            ax.contour(x, y, panel(mask).astype(float), levels=[0.5], colors=[color], linewidths=1.8)
        for c, positive in clicks:
            if abs(c[axis] - index) <= 1.0:
                ax.plot(
                    (c[0] + 0.5) * spacing[0],
                    (c[row_axis] + 0.5) * spacing[row_axis],
                    marker="+" if positive else "x",
                    color="lime" if positive else "red",
                    markersize=11,
                    markeredgewidth=2.2,
                )
        ax.set_xlim(0.0, width)
        ax.set_ylim((height, 0.0) if view == "axial" else (0.0, height))
        ax.set_aspect("equal")
        array_axis = order[axis]
        array_index = shape[axis] - 1 - index if flip[axis] else index
        ax.set_title(
            f"{view}: slice {array_index} of {image.shape[array_axis]} along array axis {'ijk'[array_axis]}",
            fontsize=11,
        )
        ax.set_xlabel("mm (patient right on the left)", fontsize=9)
        ax.set_ylabel(
            "mm (anterior at the top)" if view == "axial" else "mm (superior at the top)", fontsize=9
        )
        ax.tick_params(labelsize=8)
    title = overlay.name.replace("_", " ")
    fig.suptitle(title + (f"\n{overlay.subtitle}" if overlay.subtitle else ""), fontsize=13)
    handles = [Line2D([], [], color=color, linewidth=1.8, label="segmentation")]
    if ref is not None:
        handles.append(Line2D([], [], color="white", linestyle="--", label="reference"))
    handles += [
        Line2D([], [], color="lime", marker="+", linestyle="", markersize=9, label="positive click"),
        Line2D([], [], color="red", marker="x", linestyle="", markersize=8, label="negative click"),
    ]
    axes[0].legend(
        handles=handles, loc="lower left", fontsize=8, facecolor="0.25", labelcolor="white", framealpha=0.8
    )
    if heat is not None:
        fig.colorbar(heat, ax=list(axes), shrink=0.8, label="voxel confidence")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", facecolor="white")
