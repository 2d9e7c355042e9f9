"""One Segment click in Slicer, as a run a Qt timer advances with ``step()`` (never blocking on compute).

read the volume node (main thread) -> wait for the engine -> upload one part per step (skipped
when the server holds the volume) -> submit -> poll progress -> fetch the result -> apply it to the scene in one all-or-nothing
step. A run that was cancelled, or whose nodes left the scene, never touches the scene.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import vtk

from ..client import PART_BYTES, EngineClient, EngineError, PartUpload, Upload, job_error
from ..errors import MedCLIPSAMError
from ..faithfulness import faithfulness_warning
from ..imageio import luminance
from .engine_process import RemoteEngine
from .mrml import RunRecord, apply_result, array_from_volume, spacing_kji

STARTING, UPLOADING, RUNNING, APPLIED, FAILED, CANCELLED = "starting", "uploading", "running", "applied", "failed", "cancelled"
FINAL = (APPLIED, FAILED, CANCELLED)


def read_input(volume_node) -> Upload:
    """The volume's voxels (k, j, i) and spacing, ready to upload (main thread: a copy of the voxels)."""
    array = array_from_volume(volume_node)
    if array.ndim == 4:
        array = luminance(array)
    return Upload.of(array, spacing_kji(volume_node))


def view_slice(volume_node, slice_to_ras: vtk.vtkMatrix4x4) -> tuple[int, int]:
    """(axis in k, j, i order, index) of the volume slice a slice view shows.

    The axis is the volume axis most parallel to the view's normal, so it also works for
    volumes acquired obliquely or in another orientation than the view.
    """
    ras_to_ijk = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(ras_to_ijk)
    center = ras_to_ijk.MultiplyPoint([slice_to_ras.GetElement(r, 3) for r in range(3)] + [1.0])[:3]
    normal = ras_to_ijk.MultiplyPoint([slice_to_ras.GetElement(r, 2) for r in range(3)] + [0.0])[:3]
    ijk_axis = int(np.argmax(np.abs(normal)))
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


class SegmentRun:
    """A run's state; ``step()`` does at most one short request and returns."""

    def __init__(self, engine, scene, volume_node, prompts: Sequence[Any], settings: dict[str, Any] | None = None,
                 segmentation_node=None, show_saliency: bool = True, presets: bool = True,
                 replace_segments: bool = False, timeout: float = 10.0, part_bytes: int = PART_BYTES,
                 compress: bool | None = None):
        self.engine, self.scene = engine, scene
        self.volume_node, self.segmentation_node = volume_node, segmentation_node
        self.prompts, self.settings, self.presets = list(prompts), dict(settings or {}), presets
        self.show_saliency, self.replace_segments, self.timeout = show_saliency, replace_segments, timeout
        self.upload = read_input(volume_node)
        self.part_bytes, self.compress = part_bytes, compress
        self.sending: PartUpload | None = None
        self.state = STARTING
        self.progress = Progress("Starting the engine (loading models)")
        self.job_id: str | None = None
        self.client: EngineClient | None = None
        self.result = None
        self.record: RunRecord | None = None
        self.error: str = ""

    @property
    def finished(self) -> bool:
        return self.state in FINAL

    @property
    def warnings(self) -> list[str]:
        """Lines the panel shows as a warning once the result is applied: prompts whose saliency barely depends on
        the prompt (faithfulness under its measured threshold)."""
        if self.result is None:
            return []
        found = (faithfulness_warning(name, self.result.faithfulness.get(name)) for name in self.result.names)
        return [line for line in found if line]

    @property
    def uploading(self) -> bool:
        """While parts are going up the panel ticks fast: each step sends one part, throughput depends on the pace."""
        return self.state == UPLOADING

    def step(self) -> None:
        if self.finished:
            return
        try:
            self._step()
        except MedCLIPSAMError as exc:
            self._fail(str(exc) or type(exc).__name__)
        except Exception as exc:  # a bug: report it in the panel, keep the scene as it was
            logging.exception("MedCLIP-SAM run failed")
            self._fail(f"Unexpected error ({type(exc).__name__}: {exc}); see the Python console.")

    def cancel(self) -> None:
        """Stop waiting at once; the server stops the job after its current batch."""
        if self.finished:
            return
        self.state = CANCELLED
        self.progress = Progress("Cancelled")
        if self.sending is not None:
            self.sending.cancel()  # the server drops the parts it has (never raises)
        if self.client is not None and self.job_id is not None:
            try:
                self.client.cancel(self.job_id)
            except EngineError:
                pass  # the server is gone or forgot the job: nothing will be applied either way

    def _step(self) -> None:
        if self.state == STARTING:
            self._start_upload()
            return
        if self.state == UPLOADING:
            self._send_part()
            return
        job = self.client.status(self.job_id)
        if job["state"] in ("queued", "running"):
            self.state = RUNNING
            self.progress = (Progress(f"Waiting for {job['position']} job(s) ahead on the engine")
                             if job["state"] == "queued" else Progress(job["stage"] or "Starting", job["done"],
                                                                       job["total"]))
        elif job["state"] == "done":
            self._apply(self.client.result(self.job_id))
        elif job["state"] == "cancelled":
            self.state, self.progress = CANCELLED, Progress("Cancelled")
        else:
            raise job_error(job, remote=isinstance(self.engine, RemoteEngine))

    def _start_upload(self) -> None:
        failure = self.engine.failure()
        if failure:
            raise MedCLIPSAMError(failure)
        if not self.engine.ready():
            return
        self.client = EngineClient(self.engine.url, self.engine.token, timeout=self.timeout)
        self.client.handshake()  # a server of another protocol: one line naming both versions, nothing sent
        self.sending = self.client.start_upload(self.upload, self.part_bytes, self.compress)
        if self.sending is None:  # the server holds this volume already
            self._submit()
        else:
            self.state, self.progress = UPLOADING, upload_progress(0, self.sending.total)

    def _send_part(self) -> None:
        done, total = self.sending.send_next()
        self.progress = upload_progress(done, total)
        if self.sending.finished:
            self._submit()

    def _submit(self) -> None:
        job = self.client.submit(self.upload.id, self.prompts, self.settings, self.presets, self.show_saliency)
        self.job_id, self.state, self.progress = job["id"], RUNNING, Progress("Queued")

    def _apply(self, result) -> None:
        """All or nothing, and only while the nodes the run was started for are still in the scene."""
        for node, what in ((self.volume_node, "input volume"), (self.segmentation_node, "output segmentation")):
            if node is not None and not self.scene.IsNodePresent(node):
                raise MedCLIPSAMError(f"The {what} was removed during the run; nothing was added. Run again.")
        saliency = result.saliency if self.show_saliency else None
        self.record = apply_result(self.scene, self.volume_node, result.masks, self.segmentation_node, saliency,
                                   self.replace_segments)
        self.result, self.state = result, APPLIED
        self.progress = Progress("Done")

    def _fail(self, message: str) -> None:
        self.error, self.state = message, FAILED
        self.progress = Progress("Failed")
