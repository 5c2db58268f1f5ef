"""The Slicer side of PESF Studio: trame-slicer's application (scene, module logics, views), the layout of
slice and 3D views streamed to the browser, volumes entering the scene, and clicks in slice views as RAS.

Clicks: each slice view's interactor is observed ahead of Slicer's interactor style. A left button press and
release less than :data:`CLICK_TOLERANCE_PX` apart is a click; its display position is the slice view's XY
(pixels from the bottom-left corner), which the slice node's ``XYToRAS`` matrix maps to RAS. A drag is left to
Slicer (window/level), so clicking never costs the user the usual mouse interactions.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pesf.studio import compat

__all__ = ["CLICK_TOLERANCE_PX", "SliceClick", "StudioScene", "volume_to_node"]

logger = logging.getLogger(__name__)

CLICK_TOLERANCE_PX = 4.0
_FLIP_XY = np.diag([-1.0, -1.0, 1.0, 1.0])
#: singleton tag -> (orientation, label shown in the page)
SLICE_VIEWS = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}
THREED_VIEW = "ThreeD"


@dataclass(frozen=True)
class SliceClick:
    """A click in a slice view: the view (``Red``, ``Yellow``, ``Green``), RAS position, Ctrl held."""

    view: str
    ras: tuple[float, float, float]
    control: bool = False


@contextlib.contextmanager
def _vtk_warnings_off():
    import vtk

    previous = vtk.vtkObject.GetGlobalWarningDisplay()
    vtk.vtkObject.GlobalWarningDisplayOff()
    try:
        yield
    finally:
        vtk.vtkObject.SetGlobalWarningDisplay(previous)


def _view_marker(view_id: str, view) -> None:
    """An invisible element naming the view (``pesf-view-Red``...), beside its streamed image."""
    from trame.widgets import html

    html.Div(id=f"pesf-view-{view.get_singleton_tag()}", style="display: none")


def _slice_view_ui(server, view_id: str, view) -> None:
    from trame_slicer.app.ui import create_vertical_slice_view_gutter_ui

    _view_marker(view_id, view)
    create_vertical_slice_view_gutter_ui(server, view_id, view)


def _threed_view_ui(server, view_id: str, view) -> None:
    from trame_slicer.app.ui import create_vertical_view_gutter_ui

    _view_marker(view_id, view)
    create_vertical_view_gutter_ui(server, view_id, view)


def volume_to_node(scene, volume, name: str):
    """A new scalar volume node holding an engine :class:`~pesf.io.Volume` (LPS geometry becomes RAS)."""
    import vtk
    from PESFSegmentLib.geometry import arrayToMatrix
    from vtk.util import numpy_support

    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = volume.direction * volume.spacing[None, :]
    ijk_to_lps[:3, 3] = volume.origin
    array = np.asarray(volume.array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    image = vtk.vtkImageData()
    image.SetDimensions(*(int(n) for n in array.shape))
    # VTK stores i fastest: Fortran order of the [i, j, k] array
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(array.ravel(order="F"), deep=True))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    node.SetIJKToRASMatrix(arrayToMatrix(_FLIP_XY @ ijk_to_lps))
    node.SetAndObserveImageData(image)
    node.CreateDefaultDisplayNodes()
    return node


class StudioScene:
    """trame-slicer's ``SlicerApp`` with PESF Studio's views: axial, sagittal, coronal and a 3D view.

    Args:
        server: the trame server the views are streamed by.
        on_click: ``callback(SliceClick)``, called on the server's thread for clicks in slice views.
    """

    LAYOUT_ID = "PESF Studio"

    def __init__(self, server, on_click: Callable[[SliceClick], None] | None = None) -> None:
        compat.install()
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories
        from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

        self.server = server
        self.on_click = on_click
        self.app = SlicerApp()
        self.scene = self.app.scene
        register_rca_factories(
            self.app.view_manager,
            server,
            slice_view_ui_f=_slice_view_ui,
            three_d_view_ui_f=_threed_view_ui,
            target_fps=20.0,
            blur_fps=5.0,
            # equal to the scheduler's still quality: each change is rendered and sent once, not twice
            interactive_quality=90,
        )
        self.layout_manager = LayoutManager(self.scene, self.app.view_manager, server)
        axial = ViewLayoutDefinition.axial_view()
        sagittal = ViewLayoutDefinition.sagittal_view()
        coronal = ViewLayoutDefinition.coronal_view()
        threed = ViewLayoutDefinition.threed_view(name=THREED_VIEW)
        grid = Layout(
            LayoutDirection.Vertical,
            [
                Layout(LayoutDirection.Horizontal, [axial, threed]),
                Layout(LayoutDirection.Horizontal, [sagittal, coronal]),
            ],
        )
        with _vtk_warnings_off():  # trame-slicer observes an interactor event VTK 9.6 deprecates
            self.layout_manager.register_layout(self.LAYOUT_ID, grid)
        self.layout_manager.set_layout(self.LAYOUT_ID)
        for view in self.app.view_manager.get_views():
            # trame-slicer asks for 8x multisampling and, in 3D, depth peeling. On software OpenGL (llvmpipe)
            # the two together make translucent surfaces (pending segments) vanish, and depth peeling makes
            # each 3D frame of such surfaces take seconds; plain alpha blending is good enough here
            view.render_window().SetMultiSamples(0)
            view.renderer().SetUseDepthPeeling(False)
        self._press: dict[str, tuple[int, int]] = {}
        for view in self.slice_views().values():
            self._observe_clicks(view)

    # ------------------------------------------------------------------ views
    def slice_views(self) -> dict:
        """``{singleton tag: SliceView}`` of the axial, sagittal and coronal views."""
        views = {v.get_singleton_tag(): v for v in self.app.view_manager.get_slice_views()}
        return {tag: views[tag] for tag in SLICE_VIEWS if tag in views}

    def threed_view(self):
        views = self.app.view_manager.get_threed_views()
        return views[0] if views else None

    def fit_threed_view(self) -> bool:
        """Fit the 3D view to what it shows (segment surfaces); returns whether something was shown."""
        view = self.threed_view()
        if view is None or not view.renderer().VisibleActorCount():
            return False
        view.reset_view()
        return True

    def render_all(self) -> None:
        for view in self.app.view_manager.get_views():
            view.schedule_render()

    def view_geometry(self) -> dict:
        """Per slice view: orientation, render window size and the slice node's XY-to-RAS matrix (row major).

        A pixel ``(u, v)`` of the streamed image (from its top-left corner) is ``XY = (u, height - 1 - v)``.
        """
        out = {}
        for tag, view in self.slice_views().items():
            node = view.get_view_node()
            matrix = node.GetXYToRAS()
            out[tag] = {
                "orientation": SLICE_VIEWS[tag],
                "size": list(view.render_window().GetSize()),
                "xy_to_ras": [matrix.GetElement(r, c) for r in range(4) for c in range(4)],
                "slice_offset": view.get_slice_value(),
            }
        return out

    @staticmethod
    def xy_to_ras(view, x: float, y: float) -> tuple[float, float, float]:
        """The RAS position of display position ``(x, y)`` (pixels from the bottom-left) of a slice view."""
        ras = view.get_view_node().GetXYToRAS().MultiplyPoint((float(x), float(y), 0.0, 1.0))
        return (ras[0], ras[1], ras[2])

    def _observe_clicks(self, view) -> None:
        import vtk

        interactor = view.interactor()
        tag = view.get_singleton_tag()

        def on_press(caller, _event) -> None:
            self._press[tag] = caller.GetEventPosition()

        def on_release(caller, _event) -> None:
            start = self._press.pop(tag, None)
            end = caller.GetEventPosition()
            if start is None or math.dist(start, end) > CLICK_TOLERANCE_PX or self.on_click is None:
                return
            click = SliceClick(tag, self.xy_to_ras(view, *end), bool(caller.GetControlKey()))
            self.on_click(click)

        # ahead of Slicer's interactor style, which is observing the same events
        interactor.AddObserver(vtk.vtkCommand.LeftButtonPressEvent, on_press, 10.0)
        interactor.AddObserver(vtk.vtkCommand.LeftButtonReleaseEvent, on_release, 10.0)

    # ------------------------------------------------------------------ volumes
    def add_volume(self, volume, name: str):
        """Add an engine volume to the scene as a scalar volume node; returns the node."""
        return volume_to_node(self.scene, volume, name)

    def show_volume(self, node) -> None:
        """Show ``node`` in every slice view's background, clear the foreground, fit the views to it."""
        manager = self.app.display_manager
        manager.show_volume_in_slice_background(node)
        manager.show_volume_in_slice_foreground(None)
        manager.reset_views()

    def remove_nodes(self, nodes) -> None:
        """Remove nodes (skipping ``None`` and nodes no longer in the scene)."""
        for node in nodes:
            if node is not None and node.GetScene() is not None:
                self.scene.RemoveNode(node)
