"""The panel's Export DICOM SEG: the segments of a volume Slicer loaded from DICOM, as a SEG that refers to it.

Slicer's side (this module's ``start_seg_export``, run in Slicer's Python) only finds the source files and
exports each segment as an array on the volume's grid; pydicom and highdicom are never imported there: the
SEG is written by ``file_worker`` in the engine's Python (``write_seg_task``), like Accept and Add to training
set, so Slicer needs neither package and its window does not freeze while the SEG is built.

Where the files come from (checked against Slicer's source): Slicer's DICOM scalar volume loader
(``DICOMScalarVolumePlugin``, Slicer 4.x up to 5.10 and main) sets the volume node's ``DICOM.instanceUIDs``
attribute to the loaded files' SOPInstanceUIDs, space-separated, and the DICOM database gives each UID's file
(``slicer.dicomDatabase.fileForInstance``, CTK's ``ctkDICOMDatabase::fileForInstance``, in Slicer since 4.x).
So this needs Slicer 5.10 (the module's minimum) and a volume loaded through the DICOM module.

The files are matched to the volume's slices by position (not by the attribute's order), so a volume that
was resampled, cropped or reoriented after loading is refused instead of written onto the wrong images.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import InputError

UIDS_ATTRIBUTE = "DICOM.instanceUIDs"
"""Set by Slicer's DICOM loader on the volume node: the source SOPInstanceUIDs, space-separated."""
SEG_SUFFIX = ".dcm"
POSITION_TOLERANCE = 0.05
"""Of a voxel's size: how far a file's position may sit from its slice's corner (DICOM writes decimals)."""
ORIENTATION_TOLERANCE = 1e-4


def instance_uids(volume_node) -> list[str]:
    """The SOPInstanceUIDs Slicer's DICOM loader recorded on the volume; a clear refusal for any other volume."""
    uids = (volume_node.GetAttribute(UIDS_ATTRIBUTE) or "").split()
    if not uids:
        raise InputError(f"'{volume_node.GetName()}' was not loaded from DICOM, so a DICOM SEG has no images to "
                         "refer to; load the series through Slicer's DICOM module, or use Add to training set "
                         "(NIfTI) instead.")
    return uids


def source_files(volume_node, file_for_instance: Callable[[str], str]) -> list[str]:
    """The DICOM file of each of the volume's instances (``file_for_instance``: the DICOM database's lookup)."""
    files = []
    for uid in instance_uids(volume_node):
        path = file_for_instance(uid) if uid != "Unknown" else ""
        if not path or not Path(path).is_file():
            raise InputError(f"The DICOM database has no file for instance {uid} of '{volume_node.GetName()}'; "
                             "import the series into Slicer's DICOM database again, then load it from there.")
        files.append(str(path))
    return files


def check_seg_path(path) -> Path:
    """A new .dcm file: an existing one is never replaced."""
    path = Path(path)
    if not path.name.lower().endswith(SEG_SUFFIX):
        raise InputError(f"'{path}': a DICOM SEG is written as a .dcm file; choose a name ending in .dcm.")
    if path.exists():
        raise InputError(f"'{path}' exists; choose another file name (nothing is overwritten).")
    return path


def check_writer_installed(find_spec: Callable = importlib.util.find_spec) -> None:
    """highdicom (an engine package, ``dependencies.REQUIREMENTS``) must be there for the child that writes; looked
    up without importing it in Slicer's process."""
    if find_spec("highdicom") is None:
        raise InputError("Writing a DICOM SEG needs the engine's packages (highdicom) in Slicer's Python: run "
                         "Segment once with Engine 'This computer' and accept the install, then export again.")


def draft_segment_ids(record, segmentation_node) -> set[str]:
    """Segments the module's last run (or loaded prediction) wrote and nobody changed since: AUTOMATIC in a SEG;
    any other segment (edited, corrected, drawn by hand) is SEMIAUTOMATIC."""
    from .mrml import segment_digest

    if record is None or getattr(record, "undone", False) or \
            record.segmentation_node_id != segmentation_node.GetID():
        return set()
    segmentation = segmentation_node.GetSegmentation()
    return {sid for sid in record.segment_ids if segmentation.GetSegment(sid) is not None
            and sid in record.digests and segment_digest(segmentation_node, sid) == record.digests[sid]}


def start_seg_export(python: str, volume_node, segmentation_node, path, file_for_instance: Callable[[str], str],
                     record=None, segment_ids: Sequence[str] | None = None):
    """Write the segments (all, or ``segment_ids``) as a BINARY SEG referring to the volume's DICOM files, in a
    child process (``file_jobs.FileJob``; ``result``: {"path", "segments", "corrected"}). Refused before any work:
    a volume not from DICOM, a file that exists, a segmentation without segments."""
    from .file_jobs import FileJob
    from .mrml import lps_geometry, segment_to_array

    files = source_files(volume_node, file_for_instance)
    path = check_seg_path(path)
    check_writer_installed()
    segmentation = segmentation_node.GetSegmentation()
    ids = list(segment_ids) if segment_ids is not None else \
        [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    if not ids:
        raise InputError(f"'{segmentation_node.GetName()}' has no segment to export.")
    drafts = draft_segment_ids(record, segmentation_node)
    names = [segmentation.GetSegment(sid).GetName() for sid in ids]
    masks = np.stack([segment_to_array(segmentation_node, sid, volume_node) for sid in ids])
    return FileJob(python, "dicom_seg", {
        "path": str(path), "files": files, "names": names, "corrected": [sid not in drafts for sid in ids],
        "geometry": lps_geometry(volume_node), "volume_name": volume_node.GetName()}, {"masks": masks})


# --- the engine's side (file_worker): pydicom and highdicom -----------------------------------------------------

def files_in_slice_order(files: Sequence[str], shape: Sequence[int], geometry, volume_name: str) -> list[str]:
    """The files ordered as the volume's slices (k), each matched by its position and orientation; refused when
    the volume is not the grid of these files (resampled, cropped, reoriented after loading)."""
    import pydicom

    spacing, origin, direction = (np.asarray(v, float) for v in geometry)
    axes = direction.reshape(3, 3)  # columns: the i, j, k axes in LPS
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
    redo = (f"The DICOM files of '{volume_name}' do not match its grid (resampled, cropped or reoriented after "
            "loading?); export the segmentation of the volume as Slicer's DICOM module loaded it.")
    if len(headers) == 1 and shape[0] > 1:
        raise InputError(f"'{volume_name}' was loaded from one multi-frame DICOM object; a SEG is written here for "
                         "single-frame series and 2D images only: convert it to a single-frame series (dcmqi's "
                         "or dicom3tools' emf2sf), load that, and export again.")
    if len(headers) != shape[0] or any((int(h.Rows), int(h.Columns)) != tuple(shape[1:]) for h in headers):
        raise InputError(redo)
    if len(headers) == 1 and "ImagePositionPatient" not in headers[0]:
        return list(files)  # a 2D image (ultrasound, X-ray) has no patient-space position: one slice, one file
    ordered: list[str | None] = [None] * len(headers)
    for path, header in zip(files, headers):
        if "ImagePositionPatient" not in header or "ImageOrientationPatient" not in header:
            raise InputError(redo)
        rows_cols = np.asarray(header.ImageOrientationPatient, float)
        if np.abs(rows_cols - np.concatenate([axes[:, 0], axes[:, 1]])).max() > ORIENTATION_TOLERANCE:
            raise InputError(redo)
        offset = np.linalg.solve(axes * spacing, np.asarray(header.ImagePositionPatient, float) - origin)
        k = int(round(offset[2]))
        if np.abs(offset - (0, 0, k)).max() > POSITION_TOLERANCE or not 0 <= k < len(ordered) or ordered[k]:
            raise InputError(redo)
        ordered[k] = path
    return [str(p) for p in ordered]


def write_seg_task(task: dict) -> dict:
    """``file_worker``'s "dicom_seg": the masks as a BINARY SEG, one segment per name, on the ordered files."""
    from types import SimpleNamespace

    from ..dicom.seg import write_seg

    masks = np.load(task["masks"])
    files = files_in_slice_order(task["files"], masks.shape[1:], task["geometry"], task["volume_name"])
    grid = SimpleNamespace(array=masks[0], dicom_files=tuple(files))  # the shape and files ``write_seg`` checks
    path = write_seg(task["path"], list(masks), task["names"], grid, corrected=task["corrected"])
    return {"path": str(path), "segments": len(task["names"]), "corrected": sum(map(bool, task["corrected"]))}
