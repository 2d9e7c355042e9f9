"""Qt-free Slicer glue for corrections: markups to slice prompts, engine answers into one segment.

A ``Correction`` holds one engine session for one segment of the output segmentation. Like the text
run (``run.SegmentRun``) it starts no thread: inside Slicer the main thread holds the GIL while Qt
runs, so a Python worker thread would starve. The panel's timer calls ``step()`` on the main thread
and each step does one short piece: pack a chunk of the volume, send one upload part, or one request
to the engine that the server answers within ``session_call.WAIT_S`` (0.1 s) either with the answer
or with a call id polled on the next ticks (``session_call.SessionCall``); so a tick waits at most
0.1 s plus one round trip (a poll gives up after ``POLL_TIMEOUT_S`` = 0.25 s and asks again next
tick), however long a propagation runs on the engine. ``longest_step_s`` records the longest step.

An answer is applied on the main thread: only its slices of that one segment change
(``SetBinaryLabelmapToSegment``, see ``write_slices``), and the slices' previous content is kept so
``undo()`` restores it exactly, one interaction per step. While a text run is going, answers wait: a
run and an interaction never write into the segmentation at once. ``cancel()`` withdraws what is in
flight (the engine undoes it) and leaves the segment as it was.

Arrays are in the reference volume's (k, j, i) order; the engine's ``axis`` is in that order, and a
slice along axis a is the array with that axis removed (rows, cols): a=0 (j, i), a=1 (k, i), a=2 (k, j).
Parent transforms of the volume are not applied (as in ``run.view_slice``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import vtk

from ..client import PART_BYTES, EngineClient, EngineError, PartUpload, Upload
from ..errors import MedCLIPSAMError
from ..interactive.answer import Answer, encode_mask
from ..session_call import CLOSE_TIMEOUT_S, POLL_TIMEOUT_S, SessionCall
from .patience import Patience
from .mrml import labelmap_stamp, segment_digest, spacing_kji, volume_view
from .run import begin_upload, next_packed, packing_steps
from .segment_slices import grid_problem, read_slices, segment_array, write_slices

PACKING, UPLOADING, OPENING = "preparing the volume", "uploading", "opening the session"
IDLE, SENDING, WAITING_FOR_RUN, UNDOING = "idle", "sending", "waiting for the text run", "undoing"
CLOSED = "closed"
WORKING = (PACKING, UPLOADING, OPENING, SENDING, UNDOING)
"""States a ``step()`` advances by itself (``WAITING_FOR_RUN`` waits for the text run to end)."""


def _slicer():
    import slicer
    return slicer


def ras_to_kji(volume_node, ras) -> np.ndarray:
    """A world (RAS) point as continuous (k, j, i) voxel coordinates of the volume."""
    ras_to_ijk = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(ras_to_ijk)
    # ras may be a vtkVector3d (what a markups getter returns), which indexes but does not slice
    ijk = ras_to_ijk.MultiplyPoint([float(ras[0]), float(ras[1]), float(ras[2]), 1.0])[:3]
    return np.array(ijk[::-1])


def _in_plane(kji: np.ndarray, axis: int) -> tuple[float, float]:
    """(x, y) = (column, row) of a (k, j, i) point in a slice along ``axis``."""
    rows_cols = [v for a, v in enumerate(kji) if a != axis]
    return rows_cols[1], rows_cols[0]


def point_prompt(volume_node, axis: int, ras) -> tuple[int, int, int]:
    """(slice index, x, y) of a markups point on the volume's slices along ``axis``."""
    kji = ras_to_kji(volume_node, ras)
    x, y = _in_plane(kji, axis)
    return int(round(kji[axis])), int(round(x)), int(round(y))


def roi_prompt(volume_node, axis: int, roi_node) -> tuple[int, tuple[int, int, int, int]] | None:
    """(slice index, box x0, y0, x1, y1) of a markups ROI: its corners' extent in the slice plane, on the slice
    through its centre. None while the box has no extent in the plane: a ROI drawn in a slice view is
    "defined" from its first corner on (Slicer fires PointPositionDefinedEvent then), a box only at the second."""
    bounds = [0.0] * 6
    roi_node.GetRASBounds(bounds)
    corners = np.array([ras_to_kji(volume_node, (x, y, z)) for x in bounds[0:2] for y in bounds[2:4]
                        for z in bounds[4:6]])
    center = ras_to_kji(volume_node, [(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2,
                                      (bounds[4] + bounds[5]) / 2])
    xs, ys = zip(*(_in_plane(c, axis) for c in corners))
    if np.isclose(min(xs), max(xs)) or np.isclose(min(ys), max(ys)):
        return None
    box = (int(np.floor(min(xs) + 0.5)), int(np.floor(min(ys) + 0.5)), int(np.floor(max(xs) + 0.5)),
           int(np.floor(max(ys) + 0.5)))
    return int(round(center[axis])), box


def show_segmentation(segmentation_node) -> None:
    """Give the segmentation its display nodes when it has none: one made with a node selector's "Create new
    Segmentation" has none (``qMRMLNodeComboBox::addNode`` only creates the node), and a correction written into
    it would show in no view. A Segment run gets them from ``ImportLabelmapToSegmentationNode``."""
    if segmentation_node.GetDisplayNode() is None:
        segmentation_node.CreateDefaultDisplayNodes()


def prepare_target(segmentation_node, name: str = "correction") -> None:
    """The segmentation a correction starts on: shown in the views, with an (empty) segment when it has none."""
    show_segmentation(segmentation_node)
    if segmentation_node.GetSegmentation().GetNumberOfSegments() == 0:
        segmentation_node.GetSegmentation().AddEmptySegment("", name)


@dataclass
class SliceEdit:
    """One applied interaction: the slices it rewrote, before and after (one undo step)."""

    slices_before: dict[int, np.ndarray]
    slices_after: dict[int, np.ndarray]


@dataclass
class Correction:
    """One engine session correcting one segment; the panel's timer calls ``step()`` (no thread is started)."""

    client: EngineClient
    scene: Any
    volume_node: Any
    segmentation_node: Any
    segment_id: str
    axis: int = 0
    text_run_busy: Callable[[], bool] = lambda: False
    sam_backend: str | None = None
    part_bytes: int = PART_BYTES
    state: str = PACKING
    message: str = ""
    error: str = ""
    edits: list[SliceEdit] = field(default_factory=list)
    session: str | None = None
    longest_step_s: float = 0.0
    """The longest ``step()`` so far, in seconds (what a harness checks against the GUI budget)."""
    _call: SessionCall | None = None
    _patience: Patience | None = None
    _answer: Answer | None = None
    _sending: PartUpload | None = None
    _upload: Upload | None = None
    _written: tuple[int, str] = (0, "")
    """(labelmap stamp, segment digest) after this correction last wrote the segment (or read it at the start)."""
    before_write: Callable[[], None] | None = None
    """Called right before each write of the segment (the panel saves a Segment Editor undo state there:
    ``editor_undo``), so the editor's Ctrl+Z takes back that write alone."""

    def __post_init__(self) -> None:
        """Read the segment now (main thread); the volume is packed, uploaded and the session opened by ``step``."""
        show_segmentation(self.segmentation_node)
        problem = grid_problem(self.segmentation_node, self.segment_id, self.volume_node)
        if problem:
            raise MedCLIPSAMError(problem)
        self._packing = packing_steps(volume_view(self.volume_node), spacing_kji(self.volume_node))
        self._start_mask = segment_array(self.segmentation_node, self.segment_id, self.volume_node)
        self._remember_segment()

    def _remember_segment(self) -> None:
        self._written = (labelmap_stamp(self.segmentation_node.GetSegmentation(), self.segment_id),
                         segment_digest(self.segmentation_node, self.segment_id))

    def edited_outside(self) -> bool:
        """Whether the segment changed since this correction last wrote it (a Segment Editor paint or erase): then
        the engine's copy is stale and the slices an undo would put back are not what the user sees."""
        if not self.scene.IsNodePresent(self.segmentation_node):
            return False
        stamp = labelmap_stamp(self.segmentation_node.GetSegmentation(), self.segment_id)
        if stamp == self._written[0]:
            return False
        digest = segment_digest(self.segmentation_node, self.segment_id)
        if digest != self._written[1]:
            return True
        self._written = (stamp, digest)  # another segment of the same layer was edited: this one is unchanged
        return False

    @property
    def busy(self) -> bool:
        return self.state not in (IDLE, CLOSED)

    # ---- interactions (each returns after one short request; ``step`` applies the answer)
    def box(self, index: int, box, mode: str = "replace") -> None:
        self._send("box", {"slice": int(index), "box": [int(v) for v in box], "mode": mode})

    def clicks(self, index: int, clicks) -> None:
        self._send("clicks", {"slice": int(index), "clicks": [[int(c[0]), int(c[1]), bool(c[2])] for c in clicks]})

    def propagate(self, index: int, direction: str = "both") -> None:
        self._send("propagate", {"slice": int(index), "direction": direction})

    def undo(self) -> None:
        """Put back the slices of the last applied interaction, in the segment and on the engine."""
        if self.busy:
            raise MedCLIPSAMError("Wait for the correction being computed before undoing.")
        if not self.edits:
            raise MedCLIPSAMError("Nothing to undo among this session's corrections.")
        if self.edited_outside():
            raise MedCLIPSAMError("The segment was edited outside the correction since its last change, so Undo "
                                  "correction would lose that edit; use the Segment Editor's Undo instead.")
        edit = self.edits.pop()
        self._before_write()
        write_slices(self.segmentation_node, self.segment_id, self.volume_node, self.axis, edit.slices_before)
        self._remember_segment()
        self._request(UNDOING, "undo")
        self.message = "The last correction was undone."

    def cancel(self) -> None:
        """Withdraw what is in flight; the segment stays as it was and the engine's session follows it.

        Before the session is open, the correction ends (``CLOSED``); after, it is ready for the next one."""
        if self.state in (PACKING, UPLOADING, OPENING):
            if self._sending is not None:
                self._sending.cancel()
            if self._call is not None:
                self._call.withdraw()  # the engine closes the session it was opening
            self._packing = self._sending = self._upload = self._call = None
            self.state, self.message = CLOSED, "Cancelled before the session opened; nothing was changed."
        elif self.state == SENDING:
            self._call.withdraw()  # the engine undoes it when it ends
            self._call, self.state, self.message = None, IDLE, "Cancelled; nothing was changed."
        elif self.state == WAITING_FOR_RUN:  # the engine applied it already: undo it there
            self._answer = None
            self._request(UNDOING, "undo")
            self.message = "Cancelled; nothing was changed."

    def close(self) -> None:
        """Cancel what is in flight and free the engine's session (one short request)."""
        self.cancel()
        if self.session is not None:
            try:
                self.client.close_session(self.session, timeout=CLOSE_TIMEOUT_S)
            except EngineError:
                pass  # the server is gone or the session expired: nothing is held either way
            self.session = None
        self.state = CLOSED

    # ---- the timer's step (main thread)
    def step(self) -> None:
        """One short piece of work (see the module's docstring for the bound); errors end up in ``error``."""
        start = time.perf_counter()
        try:
            self._step()
        except MedCLIPSAMError as exc:
            self._fail(str(exc) or type(exc).__name__)
        except Exception as exc:  # a bug: keep Slicer running, say it in the panel
            logging.exception("MedCLIP-SAM correction failed")
            self._fail(f"Unexpected error ({type(exc).__name__}: {exc}).")
        self.longest_step_s = max(self.longest_step_s, time.perf_counter() - start)

    def wait(self, timeout: float = 600.0, interval: float = 0.01) -> None:
        """Step until nothing is in flight (scripts and tests; the panel's timer calls ``step`` instead)."""
        deadline = time.monotonic() + timeout
        while self.state in WORKING and time.monotonic() < deadline:
            self.step()
            if self.state in WORKING:
                time.sleep(interval)
        if self.state == WAITING_FOR_RUN:
            self.step()

    # ---- internals
    def _step(self) -> None:
        if self.state == PACKING:
            self._pack()
        elif self.state == UPLOADING:
            if not self._patiently(self._sending.send_next):
                return
            if self._sending.finished:
                self._open()
        elif self.state == OPENING:
            if self._call.poll():
                opened, self._call = self._call.reply, None
                self.session = opened["session"]
                self.message = f"Ready ({opened['sam_backend']}, clicks as {opened['click_mode'].replace('_', ' ')})"
                self.state = IDLE
        elif self.state == SENDING:
            if self._call.poll():
                self._answer, self._call = self._call.answer(), None
                self._apply()
        elif self.state == WAITING_FOR_RUN:
            self._apply()
        elif self.state == UNDOING:
            if self._call.poll():
                self._call, self.state = None, IDLE

    def _patiently(self, request) -> bool:
        """A retry-safe request (upload start, one part): False when the engine did not answer within the client's
        timeout (asked again on the next tick, until the client's patience is over: ``patience.Patience``)."""
        if self._patience is None:
            self._patience = Patience(getattr(self.client, "patience", self.client.timeout))
        try:
            request()
        except EngineError as exc:
            self._patience.retry_or_raise(exc)
            self.message = "Waiting for the engine to answer"
            return False
        self._patience.answered()
        return True

    def _pack(self) -> None:
        """The upload bytes, one 16 MB chunk per step; then the upload begins (nothing sent if the engine has it)."""
        if self._upload is None:
            upload = next_packed(self._packing)
            if upload is None:
                return
            self._packing, self._upload = None, upload
        started = []
        if not self._patiently(lambda: started.append(begin_upload(self.client, self._upload, self.part_bytes,
                                                                   POLL_TIMEOUT_S))):
            return
        self._sending = started[0]
        if self._sending is None:
            self._open()
        else:
            self.state = UPLOADING

    def _open(self) -> None:
        body: dict[str, Any] = {"volume": self._upload.id, "axis": self.axis}
        if self.sam_backend:
            body["sam_backend"] = self.sam_backend
        if self._start_mask.any():
            body["mask"] = encode_mask(self._start_mask)
        self._upload = self._start_mask = None
        if self._sending is not None:
            self._sending.upload = None
        self._call, self.state = SessionCall(self.client, "POST", "/sessions", body), OPENING

    def _apply(self) -> None:
        """Write the answer's slices of the segment, unless a text run is writing (then next tick)."""
        answer = self._answer
        if answer.slices:
            if self.text_run_busy():
                self.state = WAITING_FOR_RUN
                return
            for node in (self.segmentation_node, self.volume_node):
                if not self.scene.IsNodePresent(node):
                    self._answer, self.state = None, IDLE
                    self.error = "The segmentation or its volume left the scene; nothing was changed."
                    return
            if self.edited_outside():  # computed on the segment as it was: writing it would undo the user's edit
                self._answer = None
                self._request(UNDOING, "undo")
                self.error = ("The segment was edited while the correction was computed, so the correction was not "
                              "applied; the next one starts from your edit.")
                return
            before = read_slices(self.segmentation_node, self.segment_id, self.volume_node, self.axis,
                                 answer.slices)
            self._before_write()
            write_slices(self.segmentation_node, self.segment_id, self.volume_node, self.axis, answer.slices)
            self._remember_segment()
            self.edits.append(SliceEdit(before, answer.slices))
        self.message = answer.message or f"{len(answer.slices)} slice(s) changed"
        self._answer, self.state, self.error = None, IDLE, ""

    def _before_write(self) -> None:
        if self.before_write is not None:
            self.before_write()

    def _send(self, action: str, body: dict[str, Any]) -> None:
        if self.busy:
            raise MedCLIPSAMError("The previous correction is still being computed; wait for it.")
        if self.session is None:
            raise MedCLIPSAMError(self.error or "The correction session is not open (yet).")
        self._request(SENDING, action, body)

    def _request(self, state: str, action: str, body: dict[str, Any] | None = None) -> None:
        self.error = ""
        try:
            self._call = SessionCall(self.client, "POST", f"/sessions/{self.session}/{action}", body)
        except MedCLIPSAMError as exc:
            self._fail(str(exc))
            return
        self.state = state

    def _fail(self, message: str) -> None:
        """An interaction refused: the segment is unchanged and the session ready; before it opened: closed."""
        self._call = self._answer = None
        opened = self.session is not None
        if not opened and self._sending is not None:
            self._sending.cancel()
        self._packing = self._sending = self._upload = None
        self.state, self.error = (IDLE if opened else CLOSED), message
