"""DICOM series and 2D images for tests, built with pydicom from the bundled sample volume (no shared data).

Every file carries the tags a PACS and highdicom need (patient, study, series, frame of reference, geometry),
so tests can change one of them (a position, an orientation) to make exactly one fault.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

SAMPLE = Path(__file__).resolve().parents[2] / "Resources" / "Samples" / "brain1_image.nrrd"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
US_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"


LABEL = SAMPLE.with_name("brain1_label.nrrd")
TUMOUR_CROP = ((10, 18), (140, 80, 80, 80))
"""Slices and (x0, y0, width, height) of a crop around the sample's tumour (z 11-17, y 84-153, x 162-208)."""


def sample_volume(slices: tuple[int, int] = TUMOUR_CROP[0], box: tuple[int, int, int, int] = TUMOUR_CROP[1],
                  label: bool = False) -> sitk.Image:
    """A small crop of the bundled brain MRI (or its expert tumour label) (x0, y0, width, height; slices
    first-last, exclusive): its own geometry kept, so a crop sits where it sat in the scan."""
    image = sitk.ReadImage(str(LABEL if label else SAMPLE))
    x0, y0, width, height = box
    return image[x0:x0 + width, y0:y0 + height, slices[0]:slices[1]]


def _dataset(path: Path, sop_class: str, modality: str, study_uid: str, series_uid: str, patient: str,
             pixels: np.ndarray, number: int) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.PatientName = modality, patient, f"Test^{patient}"
    ds.PatientBirthDate, ds.PatientSex, ds.AccessionNumber, ds.ReferringPhysicianName = "", "O", "", ""
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyID, ds.StudyDate, ds.StudyTime, ds.SeriesNumber, ds.InstanceNumber = "1", "20260101", "120000", 3, number
    ds.Manufacturer = "test"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = pixels.astype(np.int16).tobytes()
    return ds


def write_series(image: sitk.Image, folder: Path, modality: str = "MR", patient: str = "BRAIN1",
                 study_uid: str | None = None, series_uid: str | None = None,
                 positions: list | None = None, orientations: list | None = None) -> list[Path]:
    """One single-frame file per slice of ``image``; ``positions``/``orientations`` (one per slice) replace
    the ones the image's geometry gives, to build faulty series."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = study_uid or generate_uid(), series_uid or generate_uid()
    frame_of_reference = generate_uid()
    direction = np.array(image.GetDirection()).reshape(3, 3)
    orientation = [*direction[:, 0], *direction[:, 1]]
    array = sitk.GetArrayFromImage(image)
    paths = []
    for z in range(array.shape[0]):
        path = folder / f"IM{z:04d}.dcm"
        ds = _dataset(path, MR_STORAGE if modality == "MR" else "1.2.840.10008.5.1.4.1.1.2", modality, study_uid,
                      series_uid, patient, array[z], z + 1)
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
        ds.ImagePositionPatient = [float(v) for v in (positions[z] if positions else
                                                      image.TransformIndexToPhysicalPoint((0, 0, z)))]
        ds.ImageOrientationPatient = [float(v) for v in (orientations[z] if orientations else orientation)]
        ds.PixelSpacing = [image.GetSpacing()[1], image.GetSpacing()[0]]
        ds.SliceThickness = image.GetSpacing()[2]
        if modality == "MR":
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "2D"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_2d(array: np.ndarray, path: Path, modality: str = "US", patient: str = "US1") -> Path:
    """A 2D ultrasound or digital X-ray image: no patient-space geometry, as such images come."""
    ds = _dataset(path, US_STORAGE if modality == "US" else DX_STORAGE, modality, generate_uid(), generate_uid(),
                  patient, array, 1)
    if modality == "DX":
        ds.ImagerPixelSpacing = [0.2, 0.2]
        ds.PresentationIntentType, ds.ImageType = "FOR PRESENTATION", ["ORIGINAL", "PRIMARY"]
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def read_first(folder: Path) -> pydicom.Dataset:
    return pydicom.dcmread(sorted(folder.glob("*.dcm"))[0])
