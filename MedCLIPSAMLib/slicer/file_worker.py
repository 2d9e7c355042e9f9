"""The file work of the review (load, Accept), Add to training set and Load prediction, in a child process
(``file_jobs``).

``python -m MedCLIPSAMLib.slicer.file_worker TASK.json`` reads the task, does the reading, comparing and
compressed writing that took seconds on a CT when Slicer's main thread did it, and writes
``TASK.json.result`` ({"ok": ...} or {"error": one line}). Arrays come as uncompressed ``.npy`` files the
main thread wrote in a fraction of that time. No MRML node is made here and torch is never imported.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def accept(task: dict[str, Any]) -> dict[str, Any]:
    """``review.actions.accept_case`` for the dataset, the case and the label array."""
    from ..review.actions import accept_case
    from ..review.queue import open_dataset

    dataset = open_dataset(task["dataset"], task.get("predictions"))
    return accept_case(dataset, task["case"], np.load(task["label"]))


def add_case(task: dict[str, Any]) -> dict[str, Any]:
    """``weak.export.add_case`` for an image and a label array on the LPS geometry the panel read from the node."""
    import SimpleITK as sitk

    from ..weak.export import add_case as add

    def image(path: str):
        result = sitk.GetImageFromArray(np.load(path))
        spacing, origin, direction = task["geometry"]
        result.SetSpacing(spacing)
        result.SetOrigin(origin)
        result.SetDirection(direction)
        return result

    paths = add(task["folder"], task["case_id"], image(task["image"]), image(task["label"]), task["label_name"],
                task.get("modality", "MRI"), bool(task.get("overwrite", False)))
    return {"image": str(paths[0]), "label": str(paths[1])}


def read_prediction(task: dict[str, Any]) -> dict[str, Any]:
    """Read an nnU-Net mask (and entropy map), check each is on the volume's grid, keep them as ``.npy`` next to
    the task (the panel reads those back in a fraction of the time, and applies them step by step)."""
    import SimpleITK as sitk

    from .grid_check import check_on_grid

    out = Path(task["out"])
    written: dict[str, Any] = {"mask": None, "entropy": None}
    for key, what, dtype in (("mask", "Prediction", np.uint8), ("entropy", "Uncertainty map", np.float32)):
        if not task.get(key):
            continue
        image = sitk.ReadImage(str(task[key]))
        check_on_grid(image, task["shape"], task["geometry"], task["volume_name"], f"{what} '{task[key]}'")
        values = sitk.GetArrayFromImage(image)
        values = (values > 0).astype(dtype) if key == "mask" else values.astype(dtype)
        path = out / f"read-{key}.npy"
        np.save(path, values)
        written[key] = str(path)
    return written


def read_case(task: dict[str, Any]) -> dict[str, Any]:
    """``review.read_case`` (image, label, entropy map, all checked on one grid) into ``.npy`` files."""
    from ..review.queue import open_dataset
    from .review import read_case as read

    arrays = read(open_dataset(task["dataset"], task.get("predictions")), task["case"])
    out = Path(task["out"])
    written: dict[str, Any] = {"geometry": arrays.geometry, "note": arrays.note, "overlay": None}
    for key in ("image", "mask", "overlay"):
        values = getattr(arrays, key)
        if values is not None:
            np.save(out / f"read-{key}.npy", values)
            written[key] = str(out / f"read-{key}.npy")
    return written


def dicom_seg(task: dict[str, Any]) -> dict[str, Any]:
    """The panel's Export DICOM SEG (``dicom_export.write_seg_task``): highdicom runs here, never in Slicer."""
    from .dicom_export import write_seg_task

    return write_seg_task(task)


KINDS = {"accept": accept, "add_case": add_case, "read_prediction": read_prediction, "read_case": read_case,
         "dicom_seg": dicom_seg}


def main(argv: list[str]) -> int:
    task_path = Path(argv[0])
    result_path = task_path.with_name(task_path.name + ".result")
    try:
        task = json.loads(task_path.read_text())
        answer: dict[str, Any] = {"ok": KINDS[task["kind"]](task)}
    except Exception as exc:  # MedCLIPSAMError and I/O errors: one line for the panel
        answer = {"error": (str(exc) or type(exc).__name__).splitlines()[0]}
    partial = result_path.with_name(result_path.name + ".partial")
    partial.write_text(json.dumps(answer, default=str))
    partial.replace(result_path)  # the panel never reads half a result
    return 0 if "ok" in answer else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
