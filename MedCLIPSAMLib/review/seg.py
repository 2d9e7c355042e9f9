"""Accept's DICOM SEG: a case whose source was a DICOM series gets the accepted label as a SEMIAUTOMATIC SEG too.

The NIfTI label in labelsTr stays what nnU-Net trains on; the SEG, written beside it in
``medclipsam_review/seg/``, is what goes back to a PACS or to Slicer/OHIF, referring to the case's own series
(a reviewer corrected the draft, hence SEMIAUTOMATIC). The draft ``medclipsam label`` wrote
(``medclipsam_seg/``, AUTOMATIC) is left as it was. A case's source is the ``image`` its ``label`` run read
(labels.csv): a series folder (a cohort folder's, or the PACS cache's ``medclipsam_dicom``) or a DICOM file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import MedCLIPSAMError
from ..review_state import accepted_seg_path, history_folder


def dicom_source(row: dict[str, str]) -> Path | None:
    """The case's DICOM series (or file) when its source is DICOM and still on disk, else None."""
    from ..dicom.series import is_dicom_source

    image = row.get("image") or ""
    return Path(image) if image and is_dicom_source(image) else None


def write_accepted_seg(folder: Path, case: str, row: dict[str, str], label: sitk.Image, name: str
                       ) -> dict[str, Any]:
    """For a DICOM case, {"seg": path} once the SEG is written (an earlier accept's SEG moved to the history);
    {"seg_note": why} when the series cannot be read any more; {} for any other case."""
    from ..dicom.seg import write_label_seg
    from ..imageio import read_volume

    source = dicom_source(row)
    if source is None:
        return {}
    try:
        volume = read_volume(source)
        labels = (sitk.GetArrayFromImage(label) > 0).astype(np.uint8)
        if labels.shape != volume.array.shape:
            labels = labels.reshape(volume.array.shape)  # a 2D case: (H, W) and its one-slice series
        path = accepted_seg_path(folder, case)
        if path.exists():
            kept = history_folder(folder) / f"{case}_accepted_{os.urandom(3).hex()}.dcm"
            kept.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, kept)
        return {"seg": str(write_label_seg(path, labels, [name], volume, corrected=True))}
    except (MedCLIPSAMError, ValueError) as exc:  # the label is accepted all the same; the entry says why no SEG
        return {"seg_note": f"no DICOM SEG: {str(exc).splitlines()[0]}"}
