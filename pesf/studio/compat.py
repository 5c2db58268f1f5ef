"""Compatibility of trame-slicer 2.0 with the slicer-core wheel (5.11.0.6): what the wheel lacks, in Python.

trame-slicer 2.0 is written against a Slicer that ships the *LayerDM* module (layered displayable managers).
The slicer-core 5.11.0.6 wheel does not, so ``import trame_slicer`` fails on::

    from slicer import vtkMRMLLayerDMObjectEventObserverScripted

:func:`install` adds the missing names to the ``slicer`` namespace (and a ``LayerDMLib`` module) before
trame-slicer is imported. It adds only what is missing: with a Slicer that has LayerDM it does nothing. What
trame-slicer needs, and what stands in for it here:

``vtkMRMLLayerDMObjectEventObserverScripted``
    Used by every view (observes its slice logic, view node and scene), by ``SlicerWrapper`` and by
    segmentation effects: ``SetPythonCallback(callback)`` then ``UpdateObservation(old, new[, events])``.
    :class:`ObjectEventObserver` implements it with VTK's ``AddObserver``: it removes every observer it put on
    ``old``, observes ``events`` (default ``ModifiedEvent``) on ``new``, and calls
    ``callback(caller, event_id, call_data)`` as the C++ class does (``call_data`` is ``None``: VTK's Python
    observers do not receive it). Observed objects are not kept alive by the observer, and an observer that
    is garbage-collected stops calling back.
``vtkMRMLLayerDisplayableManager``
    Listed by class name among the displayable managers of slice and 3D views, and probed for
    ``RenderWindowBufferToImage`` by the RCA view (absent here, so RCA captures with
    ``vtkWindowToImageFilter``). Without LayerDM there are no layer pipelines to host, so the placeholder
    names a manager the same lists register right after it (``vtkMRMLLinearTransformsDisplayableManager``):
    the views get exactly the managers they would get without the entry, and the factory does not warn
    about an unknown manager.
``vtkMRMLLayerDMPipelineFactory``, ``vtkMRMLLayerDMPipelineScriptedCreator``, ``LayerDMLib``
    The segmentation editor registers a pipeline creator for its effects' view pipelines, and the effect
    pipeline class derives from ``LayerDMLib.vtkMRMLLayerDMScriptedPipeline``. Without a layer manager no
    pipeline is ever requested: the factory keeps the creators, the base class holds its nodes.

PESF Studio uses the views, layouts and RCA streaming of trame-slicer, not its segment editor effects.
"""

from __future__ import annotations

import logging
import sys
import types
import weakref
from collections.abc import Callable, Iterable
from typing import Any

__all__ = [
    "INSTALLED_NAMES",
    "LayerDMPipelineFactory",
    "LayerDMPipelineScriptedCreator",
    "LayerDMScriptedPipeline",
    "ObjectEventObserver",
    "install",
    "missing_names",
]

logger = logging.getLogger(__name__)

#: Names in ``slicer`` that trame-slicer 2.0 imports and LayerDM provides.
INSTALLED_NAMES = (
    "vtkMRMLLayerDMObjectEventObserverScripted",
    "vtkMRMLLayerDisplayableManager",
    "vtkMRMLLayerDMPipelineFactory",
    "vtkMRMLLayerDMPipelineScriptedCreator",
)

_MODIFIED_EVENT = 33  # vtkCommand::ModifiedEvent
_DELETE_EVENT = 1  # vtkCommand::DeleteEvent


def _key(obj) -> str:
    """Identity of a VTK object (its C++ address), valid while it lives; never keeps it alive."""
    return obj.__this__


class ObjectEventObserver:
    """Observe events of VTK objects and call one Python callback: ``vtkMRMLLayerDMObjectEventObserverScripted``.

    Example::

        observer = ObjectEventObserver()
        observer.SetPythonCallback(lambda caller, event_id, call_data: print(caller.GetClassName(), event_id))
        observer.UpdateObservation(None, node)  # node's ModifiedEvent
        observer.UpdateObservation(node, other, [vtkCommand.ModifiedEvent, 42])  # node forgotten
    """

    def __init__(self) -> None:
        self._callback: Callable[..., Any] | None = None
        self._blocked = False
        #: observed object key -> (weak reference to the object, {event id: observer tag}, DeleteEvent tag)
        self._observed: dict[str, tuple[weakref.ref, dict[int, int], int]] = {}

    def __del__(self) -> None:
        try:
            self.RemoveAllObservations()
        except Exception:  # noqa: BLE001 - interpreter shutdown: VTK may be gone already
            pass

    # ------------------------------------------------------------------ callback
    def SetPythonCallback(self, callback: Callable[..., Any] | None) -> None:
        """``callback(caller, event_id, call_data)``, called for every observed event."""
        self._callback = callback

    def ClearCallback(self) -> None:
        self._callback = None

    def SetBlocked(self, blocked: bool) -> bool:
        """Block (or unblock) the callback; returns the previous state."""
        previous, self._blocked = self._blocked, bool(blocked)
        return previous

    def IsBlocked(self) -> bool:
        return self._blocked

    # ------------------------------------------------------------------ observation
    def UpdateObservation(self, previous, obj, events: int | Iterable[int] = _MODIFIED_EVENT) -> bool:
        """Stop observing ``previous`` and observe ``events`` of ``obj``; nothing when they are the same object.

        Returns:
            Whether anything changed.
        """
        if previous is obj or (previous is not None and obj is not None and _key(previous) == _key(obj)):
            return False
        self.RemoveObservations(previous)
        if obj is not None:
            for event in [events] if isinstance(events, int) else list(events):
                self._add(obj, int(event))
        return True

    def RemoveObservations(self, obj) -> None:
        """Remove every observer this object put on ``obj``."""
        if obj is None:
            return
        entry = self._observed.pop(_key(obj), None)
        if entry is None:
            return
        _ref, tags, delete_tag = entry
        for tag in tags.values():
            obj.RemoveObserver(tag)
        obj.RemoveObserver(delete_tag)

    def RemoveAllObservations(self) -> None:
        for ref, tags, delete_tag in list(self._observed.values()):
            obj = ref()
            if obj is not None:
                for tag in tags.values():
                    obj.RemoveObserver(tag)
                obj.RemoveObserver(delete_tag)
        self._observed.clear()

    def _add(self, obj, event: int) -> None:
        key = _key(obj)
        entry = self._observed.get(key)
        if entry is None:
            entry = (
                weakref.ref(obj),
                {},
                obj.AddObserver(_DELETE_EVENT, self._trampoline("_forget", key)),
            )
            self._observed[key] = entry
        tags = entry[1]
        if event not in tags:
            tags[event] = obj.AddObserver(event, self._trampoline("_dispatch", event))

    def _trampoline(self, method: str, bound) -> Callable[[Any, str], None]:
        """A VTK observer calling ``self.<method>(caller, bound)`` while this object lives.

        What the method needs is bound here rather than read back from what VTK passes: the event name has
        no id for the user events MRML defines (``vtkMRMLScene.EndCloseEvent``...), and the caller of a
        ``DeleteEvent`` reaches Python as ``None``. Only a weak reference to ``self`` is held, so VTK does
        not keep the observer alive.
        """
        this = weakref.ref(self)

        def observer(caller, _event_name: str) -> None:
            target = this()
            if target is not None:
                getattr(target, method)(caller, bound)

        return observer

    def _forget(self, _caller, key: str) -> None:
        """An observed object is being destroyed: drop it without touching its observers."""
        self._observed.pop(key, None)

    def _dispatch(self, caller, event_id: int) -> None:
        if self._blocked or self._callback is None:
            return
        try:
            self._callback(caller, event_id, None)
        except Exception:  # as the C++ class does: report, keep observing
            logger.exception("observer callback %r failed", self._callback)


class LayerDMPipelineScriptedCreator:
    """``vtkMRMLLayerDMPipelineScriptedCreator``: holds a ``callback(view_node, node) -> pipeline | None``."""

    def __init__(self) -> None:
        self._callback: Callable[..., Any] | None = None

    def SetPythonCallback(self, callback: Callable[..., Any] | None) -> None:
        self._callback = callback

    def CreatePipeline(self, view_node, node):
        """The pipeline the callback makes for ``node`` in ``view_node`` (``None`` when none)."""
        return self._callback(view_node, node) if self._callback is not None else None


class LayerDMPipelineFactory:
    """``vtkMRMLLayerDMPipelineFactory``: the singleton list of pipeline creators (never asked for pipelines,
    as there is no layer displayable manager in slicer-core 5.11.0.6)."""

    _instance: LayerDMPipelineFactory | None = None

    def __init__(self) -> None:
        self._creators: list[LayerDMPipelineScriptedCreator] = []

    @classmethod
    def GetInstance(cls) -> LayerDMPipelineFactory:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def AddPipelineCreator(self, creator) -> None:
        if creator not in self._creators:
            self._creators.append(creator)

    def RemovePipelineCreator(self, creator) -> None:
        if creator in self._creators:
            self._creators.remove(creator)

    def GetNumberOfPipelineCreators(self) -> int:
        return len(self._creators)


class LayerDMScriptedPipeline:
    """``LayerDMLib.vtkMRMLLayerDMScriptedPipeline``: base class of trame-slicer's effect pipelines. It keeps
    the nodes it is given; the rendering hooks do nothing, as no layer manager drives them here."""

    def __init__(self) -> None:
        self._display_node = None
        self._view_node = None

    def SetDisplayNode(self, node) -> None:
        self._display_node = node

    def GetDisplayNode(self):
        return self._display_node

    def SetViewNode(self, node) -> None:
        self._view_node = node

    def GetViewNode(self):
        return self._view_node

    def LoseFocus(self, _event_data=None) -> None:
        return None

    def RequestRender(self) -> None:
        return None


def _layer_displayable_manager_placeholder(slicer_module) -> type:
    manager = slicer_module.vtkMRMLLinearTransformsDisplayableManager
    return type(
        manager.__name__,
        (),
        {
            "__doc__": "Stands for vtkMRMLLayerDisplayableManager (see pesf.studio.compat); names "
            f"{manager.__name__}, which the same views register anyway.",
            "__module__": __name__,
        },
    )


def missing_names(slicer_module=None) -> list[str]:
    """The names of :data:`INSTALLED_NAMES` that ``slicer`` lacks (empty with a Slicer that has LayerDM)."""
    if slicer_module is None:
        import slicer as slicer_module
    return [name for name in INSTALLED_NAMES if not hasattr(slicer_module, name)]


def install() -> list[str]:
    """Add what trame-slicer needs and ``slicer`` lacks; call before importing ``trame_slicer``.

    Idempotent. Returns the names added (``LayerDMLib`` included when it was missing).
    """
    import slicer

    factories = {
        "vtkMRMLLayerDMObjectEventObserverScripted": lambda: ObjectEventObserver,
        "vtkMRMLLayerDisplayableManager": lambda: _layer_displayable_manager_placeholder(slicer),
        "vtkMRMLLayerDMPipelineFactory": lambda: LayerDMPipelineFactory,
        "vtkMRMLLayerDMPipelineScriptedCreator": lambda: LayerDMPipelineScriptedCreator,
    }
    added = []
    for name in missing_names(slicer):
        setattr(slicer, name, factories[name]())
        added.append(name)
    if "LayerDMLib" not in sys.modules:
        try:
            import LayerDMLib  # noqa: F401  (a Slicer with LayerDM)
        except ImportError:
            module = types.ModuleType(
                "LayerDMLib", "Stand-in for Slicer's LayerDMLib (see pesf.studio.compat)."
            )
            module.vtkMRMLLayerDMScriptedPipeline = LayerDMScriptedPipeline
            sys.modules["LayerDMLib"] = module
            added.append("LayerDMLib")
    if added:
        logger.debug("trame-slicer compatibility: added %s", ", ".join(added))
    return added
