"""Saving the page's segmentation: a NIfTI label map (segment i -> label i + 1, as ``medclipsam segment``
writes), Slicer's .seg.nrrd (names, colours, terminology kept), and one segment as an nnU-Net case through
the CLI's safe writer (``weak.export.add_case``, via the Slicer module's ``mrml.add_to_training_set``).
Nothing is overwritten: a name that is taken gets the next free number."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..dicom.seg import write_label_seg
from ..errors import InputError
from ..outputs import write_image
from ..slicer.mrml import add_to_training_set, array_from_volume, volume_to_sitk
from ..weak.export import dataset_dir, next_case_id
from .workspace import Workspace

SAFE_STEM = re.compile(r"[^A-Za-z0-9_.-]+")


def free_path(folder: Path, stem: str, suffix: str) -> Path:
    path, number = folder / f"{stem}{suffix}", 2
    while path.exists():
        path, number = folder / f"{stem}-{number}{suffix}", number + 1
    return path


def _stem(workspace: Workspace) -> str:
    return SAFE_STEM.sub("_", workspace.volume_node.GetName()).strip("_") or "volume"


def _require(workspace: Workspace) -> list[str]:
    if workspace.volume_node is None:
        raise InputError("Load an image or volume first; there is nothing to save.")
    ids = workspace.segment_ids()
    if not ids:
        raise InputError("There are no segments to save yet: press Segment first.")
    return ids


def label_map(workspace: Workspace) -> np.ndarray:
    """All segments as one (k, j, i) label array: segment i is label i + 1 (a later segment wins where two
    overlap, as in Slicer's own labelmap export)."""
    ids = _require(workspace)
    labels = np.zeros(array_from_volume(workspace.volume_node).shape[:3], np.uint16)
    for number, segment_id in enumerate(ids, start=1):
        labels[workspace.segment_mask(segment_id)] = number
    return labels


def export_segmentation(workspace: Workspace, folder: str | Path) -> list[Path]:
    """The label map as NIfTI and the segmentation as .seg.nrrd in ``folder``, and as a DICOM SEG referring to
    the source series when the volume came from DICOM (each segment AUTOMATIC, or SEMIAUTOMATIC once corrected
    in the page); returns the paths."""
    _require(workspace)
    if not str(folder).strip():
        raise InputError("Type the folder to save into (Export folder).")
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    stem = _stem(workspace)
    labels = label_map(workspace)
    nifti = write_image(volume_to_sitk(workspace.volume_node, labels), free_path(folder, f"{stem}_segments", ".nii.gz"))
    seg_nrrd = free_path(folder, stem, ".seg.nrrd")
    workspace.slicer_app.io_manager.write_segmentation(workspace.segmentation_node, seg_nrrd)
    if not seg_nrrd.is_file():
        raise InputError(f"Slicer could not write '{seg_nrrd}'; check that the folder is writable.")
    paths = [Path(nifti), seg_nrrd]
    if workspace.source is not None:
        ids = workspace.segment_ids()
        segmentation = workspace.segmentation_node.GetSegmentation()
        names = [segmentation.GetSegment(i).GetName() for i in ids]
        paths.append(write_label_seg(free_path(folder, f"{stem}_seg", ".dcm"), labels, names, workspace.source,
                                     corrected=[workspace.corrected(i) for i in ids]))
    return paths


def export_to_dataset(workspace: Workspace, segment_id: str, raw_folder: str | Path, dataset_id: int,
                      dataset_name: str, modality: str = "MRI") -> tuple[Path, Path]:
    """The volume and one segment as the next case of an nnU-Net dataset (``nnUNet_raw/DatasetNNN_Name``)."""
    ids = _require(workspace)
    if segment_id not in ids:
        segment_id = ids[-1]
    if not str(raw_folder).strip():
        raise InputError("Type the nnU-Net raw folder (nnUNet_raw) to add the case to.")
    folder = dataset_dir(Path(raw_folder).expanduser(), dataset_id, dataset_name)
    segment = workspace.segmentation_node.GetSegmentation().GetSegment(segment_id)
    return add_to_training_set(workspace.volume_node, workspace.segmentation_node, segment_id, folder,
                               next_case_id(folder, dataset_name), segment.GetName(), modality=modality)
