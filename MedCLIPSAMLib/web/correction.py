"""Corrections in the page: box, include/exclude clicks and propagation on the engine's session, one undo step per
interaction, through the Slicer module's own glue (``slicer.correct.Correction`` and
``slicer.correct_markups.PendingInteractions``); only the way points arrive differs (``slice_input``)."""
from __future__ import annotations

import asyncio
import time
from typing import Callable

from ..client import EngineClient
from ..errors import MedCLIPSAMError
from ..slicer.correct import Correction, point_prompt
from ..slicer.correct_markups import PendingInteractions
from ..slicer.run import view_slice
from .engine import EngineHolder
from .state import PanelState
from .workspace import Workspace

TICK_S = 0.01
CORRECTION_NAME = "Correction"


def box_prompt(volume_node, axis: int, ras0, ras1) -> tuple[int, tuple[int, int, int, int]]:
    """(slice, box x0, y0, x1, y1) of a drag between two world points on one slice view."""
    index, x0, y0 = point_prompt(volume_node, axis, ras0)
    _, x1, y1 = point_prompt(volume_node, axis, ras1)
    return index, (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


class CorrectionLogic:
    """One ``Correction`` at a time, for the selected segment on the axis of the view last drawn in."""

    def __init__(self, panel: PanelState, workspace: Workspace, engine: EngineHolder, flush: Callable,
                 text_run_busy: Callable[[], bool], on_changed: Callable[[], None]):
        self.panel, self.workspace, self.engine, self.flush = panel, workspace, engine, flush
        self.text_run_busy, self.on_changed = text_run_busy, on_changed
        self.correction: Correction | None = None
        self.pending = PendingInteractions()
        self.last_slice: tuple[int, int] | None = None
        """(axis, index) of the last interaction, where Propagate starts."""
        self._task: asyncio.Task | None = None
        self._asked_at: list[float] = []
        self._applied = 0

    @property
    def busy(self) -> bool:
        return self.correction is not None and (self.correction.busy or bool(self.pending.items))

    def can_undo(self) -> bool:
        return self.correction is not None and bool(self.correction.edits)

    def say(self, text: str, kind: str = "info") -> None:
        self.panel.correction_message = text
        if kind == "error":
            self.panel.message, self.panel.message_kind = text, "error"

    # ---- what the page asks for
    def box(self, slice_node, ras0, ras1) -> None:
        axis, _ = self._axis(slice_node)
        if axis is None:
            return
        index, box = box_prompt(self.workspace.volume_node, axis, ras0, ras1)
        self._queue(axis, "box", index, box)

    def click(self, slice_node, ras, positive: bool) -> None:
        axis, _ = self._axis(slice_node)
        if axis is None:
            return
        index, x, y = point_prompt(self.workspace.volume_node, axis, ras)
        self._queue(axis, "click", index, (x, y, positive))

    def propagate(self) -> None:
        if self.correction is None or self.last_slice is None:
            return self.say("Correct a slice first (a box or a click); Propagate continues from it.", "error")
        self._queue(self.last_slice[0], "propagate", self.last_slice[1], "both")

    def undo(self) -> bool:
        """Undo the last correction (True), or say why not; False when there is none to undo."""
        if not self.can_undo():
            return False
        try:
            self.correction.undo()
        except MedCLIPSAMError as exc:
            self.say(str(exc), "error")
            return True
        self._applied = len(self.correction.edits)
        self.on_changed()
        self.say(self.correction.message)
        self._ensure_driving()
        return True

    def close(self) -> None:
        if self.correction is not None:
            self.correction.close()
        self.correction, self.last_slice = None, None
        self.pending.clear()

    # ---- internals
    def _axis(self, slice_node):
        volume = self.workspace.volume_node
        if volume is None:
            self.say("Load an image or volume first.", "error")
            return None, None
        if self.text_run_busy():
            self.say("Wait for the segmentation to finish before correcting.", "error")
            return None, None
        return view_slice(volume, slice_node.GetSliceToRAS())

    def _segment_id(self) -> str:
        """The selected segment, else the last one, else a new empty one to draw into."""
        ids = self.workspace.segment_ids()
        if self.panel.selected_segment in ids:
            return self.panel.selected_segment
        if ids:
            return ids[-1]
        node = self.workspace.segmentation_node
        if node is None:
            node = self.workspace.editor.create_empty_segmentation_node()
            self.workspace.editor.set_active_segmentation(node, self.workspace.volume_node)
        return node.GetSegmentation().AddEmptySegment("", CORRECTION_NAME)

    def _open(self, axis: int) -> Correction:
        engine = self.engine.get()
        if not engine.ready():
            raise MedCLIPSAMError("The engine is still starting; try again in a moment.")
        client = EngineClient(engine.url, engine.token, timeout=10.0)
        return Correction(client, self.workspace.scene, self.workspace.volume_node,
                          self.workspace.segmentation_node or self._segment_node(), self._segment_id(), axis=axis,
                          text_run_busy=self.text_run_busy)

    def _segment_node(self):
        self._segment_id()
        return self.workspace.segmentation_node

    def _queue(self, axis: int, kind: str, index: int, value) -> None:
        wanted = self._segment_id()
        current = self.correction
        if current is None or current.axis != axis or current.segment_id != wanted or current.state == "closed":
            self.close()
            try:
                self.correction = self._open(axis)
            except MedCLIPSAMError as exc:
                return self.say(str(exc), "error")
            self._applied = 0
        self.last_slice = (axis, index)
        self.pending.add(kind, index, value)
        self._asked_at.append(time.perf_counter())
        self.panel.correcting = True
        self._ensure_driving()

    def _reopen(self) -> Correction:
        axis = self.correction.axis
        self.correction.close()
        self.correction = self._open(axis)
        self._applied = 0
        return self.correction

    def _ensure_driving(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._drive())

    async def _drive(self) -> None:
        while self.correction is not None:
            correction = self.correction
            shown = self.pending.tick(correction, self._reopen)
            if shown is not None:
                kind, text = shown
                self.say(text if kind != "busy" else f"Correcting: {text}...", "error" if kind == "error" else "info")
            if len(correction.edits) != self._applied:
                grew = len(correction.edits) > self._applied
                self._applied = len(correction.edits)
                if grew and self._asked_at:
                    self.panel.latency_ms = round(1000 * (time.perf_counter() - self._asked_at.pop(0)), 1)
                self.panel.interactions += 1
                self.on_changed()
                self.flush()
            elif shown is not None:
                self.flush()
            if not correction.busy and not self.pending.items:
                self._asked_at.clear()
                break
            await asyncio.sleep(TICK_S)
        self.panel.correcting = False
        self.panel.can_undo = self.can_undo()
        self.flush()
