"""Drags and clicks in the page's slice views as world points, for the correction tools.

trame-slicer's views are real Slicer slice views whose VTK interactor receives the browser's mouse events
(trame-rca). While a correction tool is chosen, an observer ahead of Slicer's own interactor style takes the
left button (so a drag draws a box instead of changing window/level) and reports world (RAS) points through
the slice node's XY-to-RAS matrix; with no tool chosen the views behave as in Slicer.
"""
from __future__ import annotations

from typing import Callable

from .state import BOX_TOOL, EXCLUDE_TOOL, INCLUDE_TOOL, NO_TOOL

PRIORITY = 10.0
"""Above vtkMRMLSliceViewInteractorStyle's observers (priority 0), so this one sees the button first."""
MIN_DRAG_PX = 4
"""A shorter drag with the box tool draws nothing (a box needs an extent)."""


def xy_to_ras(slice_node, xy) -> list[float]:
    """A view pixel (VTK display coordinates: origin bottom left) as a world point on the slice plane."""
    matrix = slice_node.GetXYToRAS()
    return list(matrix.MultiplyPoint([float(xy[0]), float(xy[1]), 0.0, 1.0])[:3])


class SliceInput:
    """Observes the slice views' interactors. ``on_box(slice_node, ras0, ras1)``, ``on_click(slice_node, ras,
    positive)``; ``tool()`` says which tool is chosen now."""

    def __init__(self, slice_views, tool: Callable[[], str], on_box: Callable, on_click: Callable):
        self.tool, self.on_box, self.on_click = tool, on_box, on_click
        self._press: dict[int, tuple[int, int]] = {}
        self._tags = []
        for view in slice_views:
            interactor = view.interactor()
            for event, handler in (("LeftButtonPressEvent", self._pressed), ("LeftButtonReleaseEvent", self._released),
                                   ("MouseMoveEvent", self._moved)):
                tag = interactor.AddObserver(event, lambda caller, name, v=view, h=handler: h(v, caller), PRIORITY)
                self._tags.append((interactor, tag))

    def _swallow(self, interactor) -> None:
        """Keep Slicer's interactor style from acting on this event (the tool owns the left button)."""
        for owner, tag in self._tags:
            if owner is interactor:
                command = owner.GetCommand(tag)
                if command is not None:
                    command.SetAbortFlag(1)

    def _pressed(self, view, interactor) -> None:
        if self.tool() == NO_TOOL:
            return
        self._press[id(view)] = tuple(interactor.GetEventPosition())
        self._swallow(interactor)

    def _moved(self, view, interactor) -> None:
        if id(view) in self._press:
            self._swallow(interactor)

    def _released(self, view, interactor) -> None:
        start = self._press.pop(id(view), None)
        if start is None:
            return
        self._swallow(interactor)
        end = tuple(interactor.GetEventPosition())
        slice_node = view.get_view_node()
        tool = self.tool()
        dragged = max(abs(end[0] - start[0]), abs(end[1] - start[1])) >= MIN_DRAG_PX
        if tool == BOX_TOOL and dragged:
            self.on_box(slice_node, xy_to_ras(slice_node, start), xy_to_ras(slice_node, end))
        elif tool in (INCLUDE_TOOL, EXCLUDE_TOOL):
            self.on_click(slice_node, xy_to_ras(slice_node, end), tool != EXCLUDE_TOOL)
