"""The review queue in the page, on the Slicer module's ``slicer.review.ReviewSession``: the dataset's cases
ordered by uncertainty, open one (its label becomes the segment the page edits and corrects), Accept or
Exclude it, Next."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import InputError
from ..review.queue import QueueItem
from ..slicer.review import LoadedCase, ReviewSession
from .state import PanelState, ReviewRow
from .workspace import Workspace


def review_row(item: QueueItem) -> ReviewRow:
    if item.entropy is not None:
        uncertainty = f"entropy {item.entropy:.3g}"
    elif item.faithfulness is not None:
        uncertainty = f"faithfulness {item.faithfulness:.2g}"
    else:
        uncertainty = f"score {item.score:.2g}" if item.score is not None else ""
    return ReviewRow(item.case, uncertainty, item.state)


class ReviewLogic:
    """``show(loaded)`` puts an opened case on screen (volume in the views, its segment in the editor)."""

    def __init__(self, panel: PanelState, workspace: Workspace, show: Callable[[LoadedCase], None]):
        self.panel, self.workspace, self.show = panel, workspace, show
        self.session: ReviewSession | None = None

    def open(self, folder: str, predictions: str | None = None) -> None:
        if not (folder or "").strip():
            raise InputError("Type the dataset folder of 'medclipsam label' (Review folder) to open its queue.")
        session = ReviewSession.open(self.workspace.scene, Path(folder).expanduser(),
                                     Path(predictions).expanduser() if predictions else None)
        if self.session is not None:
            self.session.unload()
        self.workspace.clear()
        self.session = session
        self.refresh()
        self.panel.message, self.panel.message_kind = session.summary(), "info"

    def refresh(self) -> None:
        self.panel.review_rows = [review_row(item) for item in self.session.queue()] if self.session else []

    def open_case(self, case: str) -> None:
        self._show(self._session().load(case))

    def next_case(self) -> None:
        loaded = self._session().next_case()
        if loaded is None:
            self.panel.message, self.panel.message_kind = "Every case is reviewed. " + self.session.summary(), "success"
            return
        self._show(loaded)

    def accept(self) -> None:
        entry = self._session().accept()
        seg = f" DICOM SEG: {Path(entry['seg']).name}." if entry.get("seg") else (
            f" {entry['seg_note']}." if entry.get("seg_note") else "")  # a DICOM case (review.seg)
        self._after(f"Accepted '{self.session.current.case}'.{seg}")

    def exclude(self) -> None:
        self._session().exclude()
        self._after(f"Excluded '{self.session.current.case}'.")

    def _after(self, text: str) -> None:
        self.refresh()
        self.panel.message, self.panel.message_kind = f"{text} {self.session.summary()}", "success"

    def _show(self, loaded: LoadedCase) -> None:
        self.workspace.volume_node = self.workspace.scene.GetNodeByID(loaded.volume_node_id)
        self.show(loaded)
        self.panel.review_case = loaded.case
        self.refresh()
        note = f" {loaded.note}" if loaded.note else ""
        self.panel.message, self.panel.message_kind = f"Case '{loaded.case}' open: edit, then Accept or Exclude.{note}", "info"

    def _session(self) -> ReviewSession:
        if self.session is None:
            raise InputError("Open a review folder first (Open queue).")
        return self.session
