"""One Segment click in Slicer, as a run a Qt timer advances with ``step()`` (never blocking on compute).

copy the volume's voxels (main thread) -> wait for the engine -> pack the upload -> upload one part
per step (skipped when the server holds the volume) -> submit -> poll progress -> read the result one
part per step (only what Slicer shows: masks and 8-bit saliency, no label map) -> decode -> write the
segmentation node, each segment and the overlay, one per step, all or nothing. A run that was
cancelled, or whose nodes left the scene, leaves the scene as it was. Every step is timed
(``longest_step_s``) so a harness can check that none freezes the window.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import vtk

from ..client import PART_BYTES, EngineClient, EngineError, PartUpload, ResultDownload, Upload, job_error
from ..errors import MedCLIPSAMError
from ..faithfulness import faithfulness_warning
from ..imageio import luminance
from .. import wire
from .engine_process import RemoteEngine
from .patience import REQUEST_TIMEOUT_S, SUBMIT_TIMEOUT_S, Patience
from .mrml import (ResultApplier, RunRecord, array_from_volume, combined_overlay, saliency_as_uint8, spacing_kji,
                   volume_view)

STARTING, PACKING, UPLOADING, RUNNING, RECEIVING, DECODING, APPLYING = (
    "starting", "packing", "uploading", "running", "receiving", "decoding", "applying")
APPLIED, FAILED, CANCELLED = "applied", "failed", "cancelled"
FINAL = (APPLIED, FAILED, CANCELLED)
QUICK_STATES = (PACKING, UPLOADING, RECEIVING, DECODING, APPLYING)
"""States whose steps follow each other at once (the panel's timer ticks fast, GUI events between)."""
REMOTE_PART_BYTES = 1_000_000
"""Upload part for a remote engine: 0.2 s at 5 MB/s before compression (a local engine takes PART_BYTES)."""
STATUS_WAIT_S = 0.25
"""A status poll (and the upload's commit) waits at most one poll interval; a late answer is a missed poll, not a
failure (see ``SegmentRun._poll``)."""
RESULT_PART_SECONDS = 0.15
"""Each result part is sized to take about this long on the measured link (below one 0.25 s poll)."""


def input_array(volume_node):
    """The volume's voxels (k, j, i), a copy taken when the run starts (main thread)."""
    array = array_from_volume(volume_node)
    if array.ndim == 4:
        array = luminance(array)
    return array


def packing_steps(array: np.ndarray, spacing: Sequence[float]):
    """The upload of a (k, j, i) volume (RGB as its luminance) one 16 MB chunk per ``next``, so a CT is packed
    over several timer ticks; the generator's return value is the ``Upload``."""
    payload, volume_id = yield from wire.encode_volume_steps(luminance(array) if array.ndim == 4 else array, spacing)
    return Upload(payload, volume_id)


def next_packed(packing) -> Upload | None:
    """One step of ``packing_steps``: None while it packs, the ``Upload`` once it is done."""
    try:
        next(packing)
    except StopIteration as done:
        return done.value
    return None


def begin_upload(client: EngineClient, upload: Upload, part_bytes: int, commit_wait: float,
                 compress: bool | None = None) -> PartUpload | None:
    """The handshake (a server of another protocol: one line naming both versions, nothing sent), then the
    upload in parts (None: the server holds the volume already); a server still hashing a large volume when
    the commit has waited ``commit_wait`` is asked again on the next tick."""
    client.handshake()
    sending = client.start_upload(upload, part_bytes, compress)
    if sending is not None:
        sending.commit_wait = commit_wait
    return sending


def read_input(volume_node) -> Upload:
    """The volume's voxels (k, j, i) and spacing, ready to upload."""
    return Upload.of(input_array(volume_node), spacing_kji(volume_node))


def view_slice(volume_node, slice_to_ras: vtk.vtkMatrix4x4) -> tuple[int, int]:
    """(axis in k, j, i order, index) of the volume slice a slice view shows.

    The axis is the volume axis most parallel to the view's normal, so it also works for
    volumes acquired obliquely or in another orientation than the view.
    """
    ras_to_ijk = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(ras_to_ijk)
    center = ras_to_ijk.MultiplyPoint([slice_to_ras.GetElement(r, 3) for r in range(3)] + [1.0])[:3]
    directions = vtk.vtkMatrix4x4()  # unit axes: an anisotropic spacing must not tilt the comparison
    volume_node.GetIJKToRASDirectionMatrix(directions)
    normal = np.array([slice_to_ras.GetElement(r, 2) for r in range(3)])
    axes = np.array([[directions.GetElement(r, c) for c in range(3)] for r in range(3)])
    ijk_axis = int(np.argmax(np.abs(normal @ axes)))
    dims = volume_node.GetImageData().GetDimensions()
    index = int(np.clip(round(center[ijk_axis]), 0, dims[ijk_axis] - 1))
    return 2 - ijk_axis, index


@dataclass
class Progress:
    stage: str
    done: int = 0
    total: int = 0
    unit: str = ""

    @property
    def text(self) -> str:
        if self.unit:
            return f"{self.stage} {self.done} of {self.total} {self.unit}"
        return f"{self.stage} ({self.done} of {self.total})" if self.total else f"{self.stage}..."

    @property
    def bar_format(self) -> str:
        """What the progress bar shows on itself."""
        if not self.total:
            return self.stage
        return f"{self.stage}: {self.done}/{self.total}" + (f" {self.unit}" if self.unit else "")


def upload_progress(done: int, total: int) -> Progress:
    """In whole MB (a progress bar holds ints); a volume under 1 MB counts as 1 MB."""
    total_mb = max(1, round(total / 1e6))
    return Progress("Uploading", total_mb if done >= total else min(round(done / 1e6), total_mb), total_mb, "MB")


def starting_progress(engine) -> Progress:
    """What a starting local engine is doing: a model download in MB, else the newest line of its log."""
    loading = getattr(engine, "startup_progress", lambda: None)()
    if loading is not None:
        stage, done, total = loading
        total_mb = max(1, round(total / 1e6))
        return Progress(stage.capitalize(), min(round(done / 1e6), total_mb), total_mb, "MB")
    tail = getattr(engine, "log_tail", lambda lines=1: "")(1).strip()
    return Progress(f"Starting the engine: {tail[:120]}" if tail else "Starting the engine (loading models)")


class SegmentRun:
    """A run's state; ``step()`` does at most one short request or one short piece of scene work and returns."""

    def __init__(self, engine, scene, volume_node, prompts: Sequence[Any], settings: dict[str, Any] | None = None,
                 segmentation_node=None, show_saliency: bool = True, presets: bool = True,
                 replace_segments: bool = False, timeout: float = 10.0, part_bytes: int | None = None,
                 compress: bool | None = None, before_write: Callable[[], None] | None = None):
        self.engine, self.scene = engine, scene
        self.before_write = before_write
        """Called once right before the result is written into an existing segmentation (the panel saves a Segment
        Editor undo state there, ``editor_undo``)."""
        self.volume_node, self.segmentation_node = volume_node, segmentation_node
        self.prompts, self.settings, self.presets = list(prompts), dict(settings or {}), presets
        self.show_saliency, self.replace_segments, self.timeout = show_saliency, replace_segments, timeout
        # No copy here (a CT's copy alone took ~1 s on a loaded 2-core machine): packing reads the voxels in 16 MB
        # chunks over several ticks from a view that keeps the image data alive.
        self.array, self.spacing = volume_view(volume_node), spacing_kji(volume_node)
        self.upload: Upload | None = None
        self.volume_id: str | None = None
        remote = isinstance(engine, RemoteEngine)
        self.part_bytes = part_bytes or (REMOTE_PART_BYTES if remote else PART_BYTES)
        self.compress = compress
        self.patience = Patience(timeout)
        """``timeout`` is how long the engine may stay silent in a row; each request waits at most
        ``REQUEST_TIMEOUT_S`` and the retry-safe ones are asked again on the next tick (``patience``)."""
        self.sending: PartUpload | None = None
        self.receiving: ResultDownload | None = None
        self._packing = self._decoding = None  # generators of the chunked encode / decode
        self._silent_since = 0.0  # when status polls began to go unanswered (0: the last one was answered)
        self.applier: ResultApplier | None = None
        self.state = STARTING
        self.progress = Progress("Starting the engine (loading models)")
        self.job_id: str | None = None
        self.client: EngineClient | None = None
        self.result = None
        self.record: RunRecord | None = None
        self.error: str = ""
        self.step_seconds: dict[str, float] = {}
        """Longest step per state, in seconds (what a harness checks against the GUI budget)."""
        self.step_cpu_seconds: dict[str, float] = {}
        """The same in CPU time of the calling thread: the work itself, without waiting (for a loaded machine)."""

    @property
    def finished(self) -> bool:
        return self.state in FINAL

    @property
    def warnings(self) -> list[str]:
        """Lines the panel shows as a warning once the result is applied: prompts whose result does not look more
        like the prompt than like an empty prompt (faithfulness under its measured threshold)."""
        if self.result is None:
            return []
        found = (faithfulness_warning(name, self.result.faithfulness.get(name)) for name in self.result.names)
        return [line for line in found if line]

    @property
    def uploading(self) -> bool:
        """While parts go up or down, or the scene is written, the panel ticks fast: one short step per tick."""
        return self.state in QUICK_STATES

    @property
    def longest_step_s(self) -> float:
        return max(self.step_seconds.values(), default=0.0)

    def step(self) -> None:
        if self.finished:
            return
        state, start, cpu_start = self.state, time.perf_counter(), time.thread_time()
        if state == UPLOADING and self.sending is not None and self.sending.next_part >= self.sending.parts:
            state = "committing"  # the server checks and stores the volume before it answers
        try:
            self._step()
        except MedCLIPSAMError as exc:
            self._fail(str(exc) or type(exc).__name__)
        except Exception as exc:  # a bug: report it in the panel, keep the scene as it was
            logging.exception("MedCLIP-SAM run failed")
            self._fail(f"Unexpected error ({type(exc).__name__}: {exc}); see the Python console.")
        seconds, cpu = time.perf_counter() - start, time.thread_time() - cpu_start
        self.step_seconds[state] = max(self.step_seconds.get(state, 0.0), seconds)
        self.step_cpu_seconds[state] = max(self.step_cpu_seconds.get(state, 0.0), cpu)

    def cancel(self) -> None:
        """Stop at once; the server stops the job after its current batch; what was applied is taken back."""
        if self.finished:
            return
        self.state = CANCELLED
        self.progress = Progress("Cancelled")
        self._release()
        if self.sending is not None:
            self.sending.cancel()  # the server drops the parts it has (never raises)
        if self.client is not None and self.job_id is not None:
            try:
                self.client.cancel(self.job_id)
            except EngineError:
                pass  # the server is gone or forgot the job: nothing will be applied either way

    def _step(self) -> None:
        handler = {STARTING: self._wait_for_engine, PACKING: self._pack, UPLOADING: self._send_part,
                   RUNNING: self._poll, RECEIVING: self._receive_part, DECODING: self._decode,
                   APPLYING: self._apply_part}[self.state]
        handler()

    def _wait_for_engine(self) -> None:
        failure = self.engine.failure()
        if failure:
            raise MedCLIPSAMError(failure)
        if self.engine.ready():
            self.state, self.progress = PACKING, Progress("Preparing the volume")
            return
        self.progress = starting_progress(self.engine)

    def _pack(self) -> None:
        """The upload bytes and their sha256, one 16 MB chunk per step; then the upload begins (asked again on the
        next tick while the engine does not answer in time)."""
        if self.upload is None:
            if self._packing is None:
                self._packing = packing_steps(self.array, self.spacing)
            upload = next_packed(self._packing)
            if upload is None:
                return
            self.upload, self.array, self._packing = upload, None, None
            self.volume_id = self.upload.id
            self.client = EngineClient(self.engine.url, self.engine.token, timeout=REQUEST_TIMEOUT_S)
        if not self._patiently(lambda: setattr(self, "sending", begin_upload(
                self.client, self.upload, self.part_bytes, STATUS_WAIT_S, self.compress))):
            return
        if self.sending is None:  # the server holds this volume already
            self._submit()
        else:
            self.state, self.progress = UPLOADING, upload_progress(0, self.sending.total)

    def _patiently(self, request) -> bool:
        """Run a retry-safe request; False when the engine did not answer in time (asked again next tick)."""
        try:
            request()
        except EngineError as exc:
            self.patience.retry_or_raise(exc)
            self.progress = Progress("Waiting for the engine to answer")
            return False
        self.patience.answered()
        return True

    def _send_part(self) -> None:
        answer = []
        if not self._patiently(lambda: answer.append(self.sending.send_next())):
            return
        done, total = answer[0]
        self.progress = upload_progress(done, total)
        if self.sending.finished:
            self._submit()

    def _submit(self) -> None:
        self.client.timeout = SUBMIT_TIMEOUT_S  # never sent twice (see patience.SUBMIT_TIMEOUT_S)
        try:
            job = self.client.submit(self.upload.id, self.prompts, self.settings, self.presets, self.show_saliency,
                                     labels=False, saliency_bits=8)
        finally:
            self.client.timeout = REQUEST_TIMEOUT_S
        self.upload = None  # the server has the volume: Slicer's copy of it goes
        if self.sending is not None:
            self.sending.upload = None
        self.job_id, self.state, self.progress = job["id"], RUNNING, Progress("Queued")

    def _poll(self) -> None:
        """One status request that waits at most STATUS_WAIT_S (a busy or distant engine answers late: the next tick
        asks again); the run fails only when the engine has not answered for ``timeout`` seconds in a row."""
        try:
            job = self.client.status(self.job_id, timeout=STATUS_WAIT_S)
        except EngineError as exc:
            if exc.status:
                raise
            self._silent_since = self._silent_since or time.monotonic()
            if time.monotonic() - self._silent_since > self.timeout:
                raise
            self.progress = Progress("Waiting for the engine to answer")
            return
        self._silent_since = 0.0
        if job["state"] in ("queued", "running"):
            self.progress = (Progress(f"Waiting for {job['position']} job(s) ahead on the engine")
                             if job["state"] == "queued" else Progress(job["stage"] or "Starting", job["done"],
                                                                       job["total"]))
        elif job["state"] == "done":
            self.receiving = self.client.start_result(self.job_id, RESULT_PART_SECONDS)
            self.state, self.progress = RECEIVING, Progress("Receiving the result")
        elif job["state"] == "cancelled":
            self.state, self.progress = CANCELLED, Progress("Cancelled")
        else:
            raise job_error(job, remote=isinstance(self.engine, RemoteEngine))

    def _receive_part(self) -> None:
        answer = []
        if not self._patiently(lambda: answer.append(self.receiving.receive_next())):
            return
        done, total = answer[0]
        total_mb = max(1, round(total / 1e6))
        self.progress = Progress("Receiving the result", min(round(done / 1e6), total_mb), total_mb, "MB")
        if self.receiving.finished:
            self.state, self.progress = DECODING, Progress("Reading the result")

    def _decode(self) -> None:
        """One array of the result per step (masks bit-unpacked, saliency kept as uint8), then the applier."""
        if self._decoding is None:
            self._decoding = wire.decode_result_steps(self.receiving.received, raw_saliency=True,
                                                      rebuild_labels=False)
        try:
            next(self._decoding)
            return
        except StopIteration as done:
            self.result, self._decoding, self.receiving = done.value, None, None
        overlay = None
        if self.show_saliency and self.result.saliency:
            overlay = saliency_as_uint8(combined_overlay(self.result.saliency))
        self._check_nodes()
        self.applier = ResultApplier(self.scene, self.volume_node, self.result.masks, self.segmentation_node,
                                     overlay, self.replace_segments, "saliency",
                                     f"{' + '.join(self.result.saliency)} saliency" if overlay is not None else None)
        self.state, self.progress = APPLYING, Progress("Adding the segments", 0, self.applier.steps)
        self._applied = 0

    def _apply_part(self) -> None:
        """One part of the scene work, only while the nodes the run was started for are still there."""
        self._check_nodes()
        if self._applied == 0 and self.segmentation_node is not None and self.before_write is not None:
            self.before_write()
        finished = self.applier.step()
        self._applied += 1
        self.progress = Progress("Adding the segments", self._applied, self.applier.steps)
        if finished:
            self.record, self.applier = self.applier.record, None
            self.result.saliency = {}  # the overlay holds the map now; the run keeps masks, scores and messages
            self.state, self.progress = APPLIED, Progress("Done")

    def _check_nodes(self) -> None:
        for node, what in ((self.volume_node, "input volume"), (self.segmentation_node, "output segmentation")):
            if node is not None and not self.scene.IsNodePresent(node):
                raise MedCLIPSAMError(f"The {what} was removed during the run; nothing was added. Run again.")

    def _release(self) -> None:
        """Take back a half-applied result and drop what the run holds in memory."""
        if self.applier is not None:
            self.applier.rollback()
        self.applier = self.receiving = self._packing = self._decoding = None
        self.array = self.upload = None

    def _fail(self, message: str) -> None:
        self._release()
        self.error, self.state = message, FAILED
        self.progress = Progress("Failed")


def finished_text(run: SegmentRun) -> tuple[str, str]:
    """(message, kind: success, warning, info or error) for a finished run: the timings and notes, and first the
    faithfulness warnings when the result did not follow the prompt (the Slicer panel's wording; the web page)."""
    if run.state == APPLIED:
        timings = ", ".join(f"{k} {v:.1f} s" for k, v in run.result.timings.items())
        notes = " ".join(m for m in run.result.messages if m not in run.warnings)
        text = f"Done: {timings}. {notes}".strip()
        if run.warnings:
            return f"Check the result: {' '.join(run.warnings)} {text}", "warning"
        return text, "success"
    if run.state == CANCELLED:
        return "Cancelled; the scene is as it was before Segment.", "info"
    return (run.error.splitlines()[0] if run.error else "The segmentation failed."), "error"
