"""Qt-free Slicer glue for corrections: markups to slice prompts, engine answers into one segment.

A ``Correction`` holds one engine session for one segment of the output segmentation. Each
interaction goes out on a worker thread (the GUI thread never waits on the network); the panel's
timer calls ``step()``, which applies a finished answer on the main thread: only the answer's
slices of that one segment change (``SetBinaryLabelmapToSegment``, see ``write_slices``), and the
slices' previous content is kept so ``undo()``
restores it exactly, one interaction per step. While a text run is going, answers wait: a run and
an interaction never write into the segmentation at once.

Arrays are in the reference volume's (k, j, i) order; the engine's ``axis`` is in that order, and a
slice along axis a is the array with that axis removed (rows, cols): a=0 (j, i), a=1 (k, i), a=2 (k, j).
Parent transforms of the volume are not applied (as in ``run.view_slice``).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import vtk
from vtk.util import numpy_support

from ..client import EngineClient, EngineError
from ..errors import MedCLIPSAMError
from ..interactive.answer import Answer
from .mrml import segment_to_array
from .run import read_input

IDLE, SENDING, WAITING_FOR_RUN = "idle", "sending", "waiting for the text run"


def _slicer():
    import slicer
    return slicer


def ras_to_kji(volume_node, ras) -> np.ndarray:
    """A world (RAS) point as continuous (k, j, i) voxel coordinates of the volume."""
    ras_to_ijk = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(ras_to_ijk)
    ijk = ras_to_ijk.MultiplyPoint([float(v) for v in ras[:3]] + [1.0])[:3]
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


def roi_prompt(volume_node, axis: int, roi_node) -> tuple[int, tuple[int, int, int, int]]:
    """(slice index, box x0, y0, x1, y1) of a markups ROI: its corners' extent in the slice plane, on the slice
    through its centre."""
    bounds = [0.0] * 6
    roi_node.GetRASBounds(bounds)
    corners = np.array([ras_to_kji(volume_node, (x, y, z)) for x in bounds[0:2] for y in bounds[2:4]
                        for z in bounds[4:6]])
    center = ras_to_kji(volume_node, [(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2,
                                      (bounds[4] + bounds[5]) / 2])
    xs, ys = zip(*(_in_plane(c, axis) for c in corners))
    box = (int(np.floor(min(xs) + 0.5)), int(np.floor(min(ys) + 0.5)), int(np.floor(max(xs) + 0.5)),
           int(np.floor(max(ys) + 0.5)))
    return int(round(center[axis])), box


def write_slices(segmentation_node, segment_id: str, reference, axis: int, slices: dict[int, np.ndarray]) -> None:
    """Replace the segment's content on each given slice, and nothing outside those slices.

    The whole segment is written back with the slices changed: segments share one labelmap layer, and
    ``SetBinaryLabelmapToSegment``'s replace mode clears a shared segment before writing (Slicer 5.10,
    vtkSegmentationModifier::AppendLabelmapToSegment), so a one-slice modifier would erase the rest.
    """
    slicer = _slicer()
    whole = segment_to_array(segmentation_node, segment_id, reference)
    moved = np.moveaxis(whole, axis, 0)  # a view: writing a slice writes into ``whole``
    for index, mask in slices.items():
        moved[index] = np.asarray(mask, dtype=np.uint8)
    ijk_to_ras = vtk.vtkMatrix4x4()
    reference.GetIJKToRASMatrix(ijk_to_ras)
    image = slicer.vtkOrientedImageData()
    image.SetExtent(0, whole.shape[2] - 1, 0, whole.shape[1] - 1, 0, whole.shape[0] - 1)
    image.SetImageToWorldMatrix(ijk_to_ras)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.ascontiguousarray(whole, np.uint8).ravel(),
                                                               deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
    if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            image, segmentation_node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE):
        raise MedCLIPSAMError(f"Slicer could not write slice(s) {sorted(slices)} of the segment.")


def read_slices(segmentation_node, segment_id: str, reference, axis: int, indices) -> dict[int, np.ndarray]:
    whole = segment_to_array(segmentation_node, segment_id, reference) > 0
    moved = np.moveaxis(whole, axis, 0)
    return {int(z): moved[z].copy() for z in indices}


@dataclass
class SliceEdit:
    """One applied interaction: the slices it rewrote, before and after (one undo step)."""

    slices_before: dict[int, np.ndarray]
    slices_after: dict[int, np.ndarray]


@dataclass
class Correction:
    """One engine session correcting one segment; the panel's timer calls ``step()``."""

    client: EngineClient
    scene: Any
    volume_node: Any
    segmentation_node: Any
    segment_id: str
    axis: int = 0
    text_run_busy: Callable[[], bool] = lambda: False
    sam_backend: str | None = None
    state: str = IDLE
    message: str = ""
    error: str = ""
    edits: list[SliceEdit] = field(default_factory=list)
    session: str | None = None
    _thread: threading.Thread | None = None
    _outcome: Any = None

    def __post_init__(self) -> None:
        """Read the volume and the segment now (main thread); upload and open the session on the worker."""
        upload = read_input(self.volume_node)
        start = segment_to_array(self.segmentation_node, self.segment_id, self.volume_node) > 0

        def open_session() -> None:
            self.client.upload(upload)
            opened = self.client.open_session(upload.id, axis=self.axis, sam_backend=self.sam_backend,
                                              mask=start if start.any() else None)
            self.session = opened["session"]
            self.message = f"Ready ({opened['sam_backend']}, clicks as {opened['click_mode'].replace('_', ' ')})"

        self._start(open_session)

    @property
    def busy(self) -> bool:
        return self.state != IDLE

    # ---- interactions (each returns at once; ``step`` applies the answer)
    def box(self, index: int, box, mode: str = "replace") -> None:
        self._send(lambda: self.client.session_box(self.session, index, box, mode))

    def clicks(self, index: int, clicks) -> None:
        self._send(lambda: self.client.session_clicks(self.session, index, clicks))

    def propagate(self, index: int, direction: str = "both") -> None:
        self._send(lambda: self.client.session_propagate(self.session, index, direction))

    def undo(self) -> None:
        """Put back the slices of the last applied interaction, in the segment and on the engine."""
        if self.busy:
            raise MedCLIPSAMError("Wait for the correction being computed before undoing.")
        if not self.edits:
            raise MedCLIPSAMError("Nothing to undo among this session's corrections.")
        edit = self.edits.pop()
        write_slices(self.segmentation_node, self.segment_id, self.volume_node, self.axis, edit.slices_before)
        self._start(lambda: self.client.session_undo(self.session), apply=False)

    def close(self) -> None:
        if self.session is not None:
            try:
                self.client.close_session(self.session)
            except EngineError:
                pass  # the server is gone or the session expired: nothing is held either way
            self.session = None

    # ---- the timer's step (main thread)
    def step(self) -> None:
        if self.state == IDLE or (self._thread is not None and self._thread.is_alive()):
            return
        outcome, apply = self._outcome
        if isinstance(outcome, BaseException):
            self.state, self.error = IDLE, str(outcome) or type(outcome).__name__
            return
        if apply and isinstance(outcome, Answer) and outcome.slices:
            if self.text_run_busy():
                self.state = WAITING_FOR_RUN
                return
            for node in (self.segmentation_node, self.volume_node):
                if not self.scene.IsNodePresent(node):
                    self.state, self.error = IDLE, "The segmentation or its volume left the scene; nothing was changed."
                    return
            before = read_slices(self.segmentation_node, self.segment_id, self.volume_node, self.axis,
                                 outcome.slices)
            write_slices(self.segmentation_node, self.segment_id, self.volume_node, self.axis, outcome.slices)
            self.edits.append(SliceEdit(before, outcome.slices))
        if isinstance(outcome, Answer):
            self.message = outcome.message or f"{len(outcome.slices)} slice(s) changed"
        self.state, self.error = IDLE, ""

    def wait(self, timeout: float = 600.0) -> None:
        """Block until the request is answered and applied (scripts and tests; the panel uses ``step``)."""
        if self._thread is not None:
            self._thread.join(timeout)
        self.step()

    # ---- internals
    def _send(self, request: Callable[[], Any]) -> None:
        if self.busy:
            raise MedCLIPSAMError("The previous correction is still being computed; wait for it.")
        if self.session is None:
            raise MedCLIPSAMError(self.error or "The correction session is not open (yet).")
        self._start(request)

    def _start(self, request: Callable[[], Any], apply: bool = True) -> None:
        def work() -> None:
            try:
                self._outcome = (request(), apply)
            except MedCLIPSAMError as exc:
                self._outcome = (exc, apply)
            except Exception as exc:  # a bug: keep Slicer running, say it in the panel
                logging.exception("MedCLIP-SAM correction failed")
                self._outcome = (MedCLIPSAMError(f"Unexpected error ({type(exc).__name__}: {exc})."), apply)

        self.state, self.error = SENDING, ""
        self._thread = threading.Thread(target=work, name="medclipsam-correct", daemon=True)
        self._thread.start()
