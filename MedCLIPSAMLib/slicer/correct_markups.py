"""The Correct section's Qt-free half: markups placed in slice views become interactions, queued and sent one at
a time from the panel's timer.

Kept out of the widget so that it runs against the slicer-core MRML classes in pytest: the order of the
markups calls, reading a control point as Slicer returns it, a box that is only complete at its second
corner, and a queue that goes on after a refused interaction are each easy to get wrong and impossible
to see without the application.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import MedCLIPSAMError
from .correct import CLOSED, Correction, point_prompt, roi_prompt

BOX, PLUS, MINUS = "box", "+", "-"
"""The markups the section places: one ROI for boxes, one point list for each click sign."""


def start_placing(markups_logic, node, persistent: bool) -> None:
    """Put the slice views in place mode for ``node`` (a ROI or a point list).

    ``StartPlaceMode`` first, ``SetActiveList`` second: StartPlaceMode sets the class to place back to point
    lists (vtkSlicerMarkupsLogic::StartPlaceMode, Slicer 5.10.0 and main), so after SetActiveList it would
    make the next click create a new point list instead of the ROI; SetActiveList sets the class from the
    node and leaves the interaction mode in Place."""
    markups_logic.StartPlaceMode(persistent)
    markups_logic.SetActiveList(node)


def stop_placing(scene) -> None:
    """Back to the arrow tool, so that a click after Done places nothing (a persistent place mode would go on
    creating point lists of its own)."""
    interaction = scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
    if interaction is not None and interaction.GetCurrentInteractionMode() == interaction.Place:
        interaction.SwitchToViewTransformMode()


def control_point_ras(node, index: int) -> list[float]:
    """A control point's world position as three floats (the one-argument getter returns a vtkVector3d)."""
    position = [0.0, 0.0, 0.0]
    node.GetNthControlPointPositionWorld(index, position)
    return position


def markup_interaction(volume_node, axis: int, key: str, node) -> tuple[str, int, Any] | None:
    """The interaction a placed markup asks for: ("box", slice, box) or ("click", slice, (x, y, positive));
    None while there is none yet (a box's first corner, an empty point list)."""
    if key == BOX:
        placed = roi_prompt(volume_node, axis, node)
        return None if placed is None else ("box", *placed)
    count = node.GetNumberOfControlPoints()
    if count == 0:
        return None
    index, x, y = point_prompt(volume_node, axis, control_point_ras(node, count - 1))
    return "click", index, (x, y, key == PLUS)


@dataclass
class PendingInteractions:
    """What the user asked for, sent one interaction at a time as the correction becomes free.

    An interaction the engine refuses shows its one line and the queue goes on with the next one (the
    correction is ready again). Before sending, a segment edited outside the correction (Segment Editor)
    makes ``reopen`` start a new correction from the edited segment, so no answer computed on the old
    content overwrites the edit."""

    items: list[tuple[str, int, Any]] = field(default_factory=list)
    _shown: tuple[str, str] | None = None

    def add(self, kind: str, index: int, value: Any) -> None:
        self.items.append((kind, index, value))

    def clear(self) -> None:
        self.items.clear()
        self._shown = None

    def tick(self, correction: Correction, reopen: Callable[[], Correction]) -> tuple[str, str] | None:
        """One timer tick: step the correction, then send the next interaction if it is free.

        Returns (kind, text) when the status to show changed, else None (the panel keeps what it shows, e.g.
        its placing instructions): kind "error" (the engine's or the glue's line), "busy" (text: the state)
        or "message"."""
        correction.step()
        if not correction.busy and self.items and correction.state != CLOSED:
            if correction.edited_outside():
                reopen()  # the panel replaces its correction; the items go to the new one on the next ticks
                return self._show("message", "The segment was edited; the correction starts again from it.")
            kind, index, value = self.items.pop(0)
            try:
                if kind == "box":
                    correction.box(index, value)
                elif kind == "click":
                    correction.clicks(index, [value])
                else:
                    correction.propagate(index, value)
            except MedCLIPSAMError as exc:
                correction.error = str(exc)
        if correction.error:
            return self._show("error", correction.error)
        if correction.busy:
            return self._show("busy", correction.state)
        return self._show("message", correction.message)

    def _show(self, kind: str, text: str) -> tuple[str, str] | None:
        if (kind, text) == self._shown:
            return None
        self._shown = (kind, text)
        return self._shown
