"""Accept (review) and Add to training set without freezing Slicer: the file work runs in a child process.

On a CT, reading the case image back, comparing with the pseudo-label and writing compressed NIfTI files
took seconds, all on Slicer's main thread. Here the main thread only exports the segment and writes it
(and, for the training set, the image) as uncompressed ``.npy`` arrays; ``file_worker`` does the rest in
a child process in its own process group, and ``FileJob.poll()`` (called by the panel's timer) never
blocks. Cancel stops the child (what it wrote is written atomically, or not at all).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import MedCLIPSAMError
from .engine_process import ENGINE_PARENT
from .process_tree import TreeStopper, group_popen_options


def _mapped(path: str) -> np.ndarray:
    """An array file mapped, not read: its pages are read by the one copy into VTK (a timer tick), not before."""
    return np.load(path, mmap_mode="r")


class FileJob:
    """One ``file_worker`` task in a child process; ``poll()`` is True once it ended (``result`` or ``error``)."""

    def __init__(self, python: str, kind: str, task: dict[str, Any], arrays: dict[str, np.ndarray],
                 on_done: Callable[[dict[str, Any]], Any] | None = None, keep_folder: bool = False):
        self.kind, self.on_done, self.keep_folder = kind, on_done, keep_folder
        self.folder = Path(tempfile.mkdtemp(prefix=f"medclipsam-{kind}-"))
        self.result: Any = None
        self.error = ""
        self.finished = False
        task = dict(task, kind=kind, out=str(self.folder))
        for name, array in arrays.items():
            path = self.folder / f"{name}.npy"
            np.save(path, np.ascontiguousarray(array))
            task[name] = str(path)
        self.task_path = self.folder / "task.json"
        self.task_path.write_text(json.dumps(task, default=str))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ENGINE_PARENT), env.get("PYTHONPATH", "")) if p)
        self.log_path = self.folder / "worker.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([python, "-m", "MedCLIPSAMLib.slicer.file_worker", str(self.task_path)],
                                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                            **group_popen_options())

    def poll(self) -> bool:
        if self.finished:
            return True
        if self.process.poll() is None:
            return False
        result_path = self.task_path.with_name(self.task_path.name + ".result")
        try:
            answer = json.loads(result_path.read_text())
        except (OSError, ValueError):
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:] if self.log_path.exists() else []
            answer = {"error": f"The {self.kind} step stopped (exit code {self.process.returncode})"
                               + (f": {tail[0]}" if tail else ".")}
        self.result, self.error = answer.get("ok"), answer.get("error", "")
        self.finished = True
        if not self.keep_folder or self.error:
            self._cleanup()
        if self.on_done is not None and not self.error:
            self.on_done(self.result)
        return True

    def wait(self, timeout: float = 300.0, interval: float = 0.02) -> Any:
        """Poll until it ended (scripts and tests; the panel's timer calls ``poll``); the result, or raises."""
        import time

        deadline = time.monotonic() + timeout
        while not self.poll():
            if time.monotonic() > deadline:
                self.cancel()
                raise MedCLIPSAMError(f"The {self.kind} step did not end within {timeout:.0f} s.")
            time.sleep(interval)
        if self.error:
            raise MedCLIPSAMError(self.error)
        return self.result

    def cancel(self) -> None:
        if not self.finished:
            TreeStopper(self.process, 0.5).begin()
            self.finished, self.error = True, "Cancelled."
            self._cleanup()

    def _cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class PredictionLoad:
    """``mrml.load_prediction`` without freezing Slicer: a child process reads and checks the files (seconds on a
    CT), then ``step()`` applies the result one ``ResultApplier`` part per timer tick. All or nothing: a failure,
    ``cancel()`` or a node removed between ticks leaves the scene as it was. ``record`` once ``finished``."""

    def __init__(self, python: str, scene, reference, mask_path, entropy_path=None, name: str = "nnU-Net",
                 segmentation_node=None, before_write: Callable[[], Any] | None = None):
        from .mrml import lps_geometry

        self.scene, self.reference, self.name = scene, reference, name
        self.segmentation_node, self.before_write = segmentation_node, before_write
        self.record = None
        self.error = ""
        self.finished = False
        self.applier = None
        self.job = FileJob(python, "read_prediction", {
            "mask": str(mask_path), "entropy": str(entropy_path) if entropy_path else None,
            "shape": list(reversed(reference.GetImageData().GetDimensions())), "geometry": lps_geometry(reference),
            "volume_name": reference.GetName()}, {}, keep_folder=True)

    def step(self) -> bool:
        """One short piece (poll the child, or one part of the scene work); True once finished (see ``error``)."""
        if self.finished:
            return True
        try:
            self._step()
        except Exception as exc:  # MedCLIPSAMError, ValueError: one line; the applier rolled back
            self._end(str(exc) or type(exc).__name__)
        return self.finished

    def _step(self) -> None:
        from .mrml import ResultApplier

        if self.applier is None:
            if not self.job.poll():
                return
            if self.job.error:
                raise MedCLIPSAMError(self.job.error)
            self._check_nodes()
            mask = _mapped(self.job.result["mask"])
            entropy = _mapped(self.job.result["entropy"]) if self.job.result["entropy"] else None
            self.applier = ResultApplier(self.scene, self.reference, {self.name: mask}, self.segmentation_node,
                                         entropy, False, "uncertainty",
                                         f"{self.name} uncertainty" if entropy is not None else None)
            return
        self._check_nodes()
        if self.segmentation_node is not None and self.before_write is not None and self.applier.record is None:
            self.before_write()
        if self.applier.step():
            self.record = self.applier.record
            self.finished = True
            self.applier = None  # lets go of the mapped files before they are removed
            self.job._cleanup()

    def _check_nodes(self) -> None:
        for node, what in ((self.reference, "input volume"), (self.segmentation_node, "output segmentation")):
            if node is not None and not self.scene.IsNodePresent(node):
                raise MedCLIPSAMError(f"The {what} was removed while the prediction loaded; nothing was added.")

    def cancel(self) -> None:
        self._end("Cancelled.")

    def _end(self, error: str) -> None:
        if self.applier is not None:
            self.applier.rollback()
        self.job.cancel()
        self.job._cleanup()
        self.error, self.finished = error, True


def start_accept(session, python: str) -> FileJob:
    """Accept the review session's current case in a child process: the edited segment is exported here (main
    thread, the one MRML step), the rest runs there; when it is done the session counts the label as saved."""
    loaded = session._loaded()
    state = session._label_state()
    label = session.edited_label()
    data = session.dataset

    def done(entry: dict[str, Any]) -> None:
        if state is not None and session.current is loaded:
            loaded.saved = state

    return FileJob(python, "accept", {"dataset": str(data.folder), "case": loaded.case,
                                      "predictions": str(data.predictions) if data.predictions else None},
                   {"label": label}, done)


def start_add_to_training_set(python: str, volume_node, segmentation_node, segment_id: str, dataset_folder,
                              case_id: str, label_name: str, modality: str = "MRI", overwrite: bool = False
                              ) -> FileJob:
    """``mrml.add_to_training_set`` with the compressed writing in a child process; ``result``: the two paths."""
    from .mrml import lps_geometry, segment_to_array, volume_view

    return FileJob(python, "add_case", {"folder": str(dataset_folder), "case_id": case_id, "label_name": label_name,
                                        "modality": modality, "overwrite": overwrite,
                                        "geometry": lps_geometry(volume_node)},
                   {"image": volume_view(volume_node),
                    "label": segment_to_array(segmentation_node, segment_id, volume_node)})


class CaseLoad:
    """``ReviewSession.load`` (one case) or ``next_case`` (a list of cases: the first that can be read; the others
    are passed over and named in its note) without freezing Slicer: a child process reads the case's files
    (``review.read_case``), then ``step()`` puts it on screen one part per timer tick
    (``ReviewSession.place_steps``). Raises ``UnsavedEditsError`` at once, as ``load`` does, while the case on
    screen has edits that were not accepted. ``loaded`` once ``finished`` (None: no case was left), else ``error``."""

    def __init__(self, session, python: str, cases: str | list[str], discard_edits: bool = False):
        session.check_leaving(discard_edits)
        self.session, self.python = session, python
        self.candidates = [cases] if isinstance(cases, str) else list(cases)
        self.single = isinstance(cases, str)
        self.case = ""
        self.loaded = None
        self.error = ""
        self.finished = False
        self.passed_over: list[str] = []
        self._placing = None
        self._created: list[str] = []
        self.job: FileJob | None = None
        self._read_next()

    def _read_next(self) -> None:
        if not self.candidates:
            if self.passed_over:
                self._end(self.passed_over[0])
            else:
                self.finished = True  # every case is reviewed
            return
        self.case = self.candidates.pop(0)
        data = self.session.dataset
        self.job = FileJob(self.python, "read_case", {"dataset": str(data.folder), "case": self.case, "predictions":
                                                      str(data.predictions) if data.predictions else None},
                           {}, keep_folder=True)

    def step(self) -> bool:
        if self.finished:
            return True
        try:
            self._step()
        except Exception as exc:  # InputError: one line; the nodes made so far were removed
            self._end(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return self.finished

    def _step(self) -> None:
        from .review import CaseArrays

        if self._placing is None:
            if not self.job.poll():
                return
            if self.job.error:
                if self.single:
                    raise MedCLIPSAMError(self.job.error)
                self.passed_over.append(self.job.error)
                self._read_next()
                return
            found = self.job.result
            arrays = CaseArrays(self.case, _mapped(found["image"]), tuple(tuple(v) for v in found["geometry"]),
                                _mapped(found["mask"]), _mapped(found["overlay"]) if found["overlay"] else None,
                                found["note"])
            if self.passed_over:
                arrays.note = " ".join([f"Passed over: {p}" for p in self.passed_over] + ([arrays.note] if arrays.note
                                                                                          else []))
            self._placing = self.session.place_steps(arrays, self._created)
        try:
            next(self._placing)
        except StopIteration:
            self.loaded, self.finished, self._placing = self.session.current, True, None
            self.job._cleanup()

    def cancel(self, scene_closed: bool = False) -> None:
        """Stop; the nodes made so far are removed (not after a scene close: their IDs may be reused by then)."""
        if self.finished:
            return
        if not scene_closed:
            from .review import _remove_id

            for node_id in self._created:
                _remove_id(self.session.scene, node_id)
        self._placing = None
        self._end("Cancelled.")

    def _end(self, error: str) -> None:
        if self.job is not None:
            self.job.cancel()
            self.job._cleanup()
        self.error, self.finished = error, True
