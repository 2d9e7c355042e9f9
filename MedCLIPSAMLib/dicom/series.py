"""Checks on DICOM headers before SimpleITK reads the pixels, each failing with what is wrong and what to do.

ITK reads a series that is not a regular grid without a word: a missing slice, uneven spacing or a gantry
tilt becomes a volume whose voxels sit in the wrong places, and a SEG or report in the folder a volume of
nonsense. So the headers (pixels deferred, not read) are checked first.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError

DICOM_SUFFIX = ".dcm"
NOT_IMAGES = {"SEG": "a DICOM SEG (a segmentation)", "SR": "a structured report (SR)",
              "RTSTRUCT": "an RT structure set", "RTPLAN": "an RT plan", "PR": "a presentation state",
              "KO": "a key object selection", "REG": "a registration object", "DOC": "an encapsulated document"}
"""Modalities of objects that hold no image to segment, and what they are called in messages."""
ENHANCED_GROUPS = ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence")
ORIENTATION_TOLERANCE = 1e-4
SPACING_TOLERANCE_MM = 0.01
SPACING_TOLERANCE_RELATIVE = 0.01
GAP_FACTOR = 1.5
"""A step this many times the usual slice spacing means slices are missing."""
TILT_TOLERANCE_DEGREES = 0.1


def is_dicom_file(path: str | os.PathLike) -> bool:
    """A DICOM Part 10 file: 'DICM' after the 128-byte preamble (the .dcm suffix alone is not trusted)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_source(path: str | os.PathLike) -> bool:
    """Whether an input is DICOM: a DICOM file, or a folder holding at least one."""
    path = Path(path)
    if path.is_dir():
        return any(child.is_file() and is_dicom_file(child) for child in path.iterdir())
    return path.is_file() and is_dicom_file(path)


def loose_images(folder: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """The DICOM files lying directly in a cohort folder, as (images, skipped): each 2D image (no slice position:
    ultrasound, radiographs, secondary captures) is a case of its own; objects that hold no image (a SEG, an SR,
    ...) are skipped, for the caller to name. Slices of a 3D series (with a position) are refused: a series is one
    case, so it belongs in a folder of its own."""
    images, skipped, sliced = [], [], []
    for path in sorted(Path(folder).iterdir()):
        if not path.is_file() or path.name.startswith(".") or not is_dicom_file(path):
            continue
        ds = read_header(path)
        if str(ds.get("Modality", "")).upper() in NOT_IMAGES:
            skipped.append(path)
        elif "ImagePositionPatient" in ds:
            sliced.append(path)
        else:
            images.append(path)
    if sliced:
        raise InputError(f"'{folder}' holds {len(sliced)} DICOM slice file(s) of a 3D series ({sliced[0].name}"
                         f"{', ...' if len(sliced) > 1 else ''}); move each series into a sub-folder of its own "
                         "(one case per folder).")
    return images, skipped


def read_header(path: str | os.PathLike):
    """The file's dataset with its pixel data deferred (present, not loaded)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), defer_size="1 KB")
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise InputError(f"'{path}' is not a readable DICOM file ({exc}); copy or export it again.") from None


def check_image_object(ds, where: str, single_frame: bool) -> None:
    """One object is an image ``read_volume`` can use: not a SEG/SR/..., has pixels; ``single_frame``: in a
    series folder, where every file must be one slice."""
    modality = str(ds.get("Modality", "")).upper()
    if modality in NOT_IMAGES:
        raise InputError(f"'{where}' is {NOT_IMAGES[modality]}, not an image; give the image series it refers to "
                         "instead.")
    if not any(name in ds for name in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise InputError(f"'{where}' holds no pixel data (modality {modality or 'unknown'}); give an image series.")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1 and (single_frame or any(name in ds for name in ENHANCED_GROUPS)):
        kind = "an enhanced multi-frame object" if any(name in ds for name in ENHANCED_GROUPS) else \
            "a multi-frame object"
        raise InputError(f"'{where}' is {kind} ({frames} frames), which this reader does not take; convert it to "
                         "a classic single-frame series (dcmtk/dcm4che 'emf2sf') or to NIfTI (dcm2niix, Slicer).")


def check_series(files: Sequence[str], folder: str | os.PathLike) -> None:
    """The files of one series form a regular grid: images, one orientation and size, evenly spaced slices
    along the slice normal (no gap, no tilt). ``files`` in the reader's order."""
    headers = [read_header(path) for path in files]
    for path, ds in zip(files, headers):
        check_image_object(ds, path, single_frame=len(files) > 1)
    if len(headers) < 2:
        return
    sizes = {(int(ds.get("Rows", 0)), int(ds.get("Columns", 0))) for ds in headers}
    if len(sizes) > 1:
        raise InputError(f"The series in '{folder}' mixes image sizes ({', '.join(f'{r}x{c}' for r, c in sorted(sizes))}); "
                         "keep the slices of one size (a localizer may have been added) in their own folder.")
    if any("ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds for ds in headers):
        raise InputError(f"The series in '{folder}' has slices without a position or orientation "
                         "(ImagePositionPatient/ImageOrientationPatient), so they cannot be stacked; give a single "
                         "2D image file instead, or a series from the scanner.")
    orientations = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in headers])
    distinct = _distinct_rows(orientations)
    if len(distinct) > 1:
        raise InputError(f"The series in '{folder}' mixes {len(distinct)} slice orientations; put the slices of each "
                         "orientation (e.g. a localizer, or the planes of a multi-planar scan) in their own folder.")
    _check_positions(np.array([[float(v) for v in ds.ImagePositionPatient] for ds in headers]),
                     orientations[0], folder)


def _distinct_rows(rows: np.ndarray) -> list[np.ndarray]:
    distinct: list[np.ndarray] = []
    for row in rows:
        if not any(np.allclose(row, seen, atol=ORIENTATION_TOLERANCE) for seen in distinct):
            distinct.append(row)
    return distinct


def _check_positions(positions: np.ndarray, orientation: np.ndarray, folder) -> None:
    normal = np.cross(orientation[:3], orientation[3:])
    order = np.argsort(positions @ normal)
    positions = positions[order]
    along = positions @ normal
    steps = np.diff(along)
    if np.any(steps < SPACING_TOLERANCE_MM):
        where = float(along[int(np.argmin(steps))])
        raise InputError(f"The series in '{folder}' has two slices at the same position ({where:.2f} mm along the "
                         "slice normal): a repeated acquisition or echo; keep one of them per position.")
    span = positions[-1] - positions[0]
    sideways = float(np.linalg.norm(span - (span @ normal) * normal))
    tilt = float(np.degrees(np.arctan2(sideways, float(span @ normal))))
    if tilt > TILT_TOLERANCE_DEGREES:
        raise InputError(f"The series in '{folder}' has a gantry tilt of {tilt:.1f} degrees (the slices are sheared, "
                         "not stacked square); resample it onto a square grid first (Slicer's DICOM import with "
                         "acquisition geometry regularisation, or dcm2niix), then give that volume.")
    usual = float(np.median(steps))
    if steps.max() > GAP_FACTOR * usual:
        index = int(np.argmax(steps))
        missing = int(round(steps[index] / usual)) - 1
        raise InputError(f"The series in '{folder}' is missing slices: a gap of {steps[index]:.2f} mm between "
                         f"{along[index]:.2f} and {along[index + 1]:.2f} mm where slices are {usual:.2f} mm apart "
                         f"(about {max(missing, 1)} missing); retrieve or export the whole series again.")
    if steps.max() - steps.min() > max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_RELATIVE * usual):
        raise InputError(f"The series in '{folder}' has non-uniform slice spacing ({steps.min():.2f} to "
                         f"{steps.max():.2f} mm); resample it to uniform spacing first (Slicer's DICOM import "
                         "with acquisition geometry regularisation, or dcm2niix), then give that volume.")
