"""Results as DICOM SEG objects (highdicom) that refer to the series they were drawn on.

A label map becomes a BINARY SEG, one segment per prompt: labelled with the prompt, coded with the same SNOMED
CT category/type as the Slicer segment (``terminology``), and identified as MedCLIP-SAM's (name, version);
AUTOMATIC for a draft, SEMIAUTOMATIC once a person corrected it. Saliency and uncertainty maps, values in
[0, 1], become FRACTIONAL SEGs of type PROBABILITY (8 bits): they are per-voxel "how much is this the
target", which is what that type holds, and every SEG reader (Slicer/dcmqi, OHIF, highdicom) shows them on
the source images, where a Parametric Map would need float pixels few viewers overlay.

Frames follow the source files one to one (``Volume.dicom_files`` is in the array's slice order), empty frames
included, so a reader rebuilds the whole source grid.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError, OptionError
from ..outputs import IMAGE_EXTENSIONS, replacing
from ..terminology import Code, term_for

DICOM_EXTENSION = ".dcm"
MANUFACTURER = "MedCLIP-SAM"
ALGORITHM_NAME = "MedCLIP-SAM"
FRACTIONAL_MAX = 255
RESULT_EXTENSIONS = (*IMAGE_EXTENSIONS, DICOM_EXTENSION)
"""What a result may be written as: an image format, or a DICOM SEG for a DICOM source."""


def check_dicom_output(path: str | os.PathLike, option: str, source: str | os.PathLike) -> None:
    """A .dcm output needs a DICOM source to refer to: refused before any work otherwise."""
    from .series import is_dicom_source

    if Path(path).name.lower().endswith(DICOM_EXTENSION) and not is_dicom_source(source):
        raise OptionError(f"{option} '{path}': a DICOM SEG (.dcm) refers to the DICOM images it segments, but "
                          f"'{source}' is not DICOM; write .nii.gz, .nrrd or .mha instead, or give the DICOM series.")


def source_datasets(dicom_files: Sequence[str]) -> list:
    """The source files' datasets in slice order (pixels not loaded: the SEG copies only their headers)."""
    import pydicom

    if not dicom_files:
        raise InputError("The image was not read from DICOM, so a DICOM SEG has nothing to refer to; write "
                         ".nii.gz, .nrrd or .mha instead.")
    return [pydicom.dcmread(path, stop_before_pixels=True) for path in dicom_files]


def _code(code: Code):
    from highdicom.sr import CodedConcept

    scheme, value, meaning = code
    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def segment_descriptions(names: Sequence[str], corrected: bool | Sequence[bool] = False, suffix: str = "") -> list:
    """One description per prompt: its label, its codes, and MedCLIP-SAM as the algorithm; ``corrected``: for
    all segments, or one flag per segment (SEMIAUTOMATIC where set)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from .. import __version__

    algorithm = hd.AlgorithmIdentificationSequence(name=ALGORITHM_NAME, version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    flags = [corrected] * len(names) if isinstance(corrected, bool) else [bool(c) for c in corrected]
    descriptions = []
    for number, (name, fixed) in enumerate(zip(names, flags), start=1):
        kind = hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC if fixed else \
            hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        term = term_for(name)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=f"{name}{suffix}"[:64],
            segmented_property_category=_code(term.category), segmented_property_type=_code(term.type),
            algorithm_type=kind, algorithm_identification=algorithm,
            tracking_uid=hd.UID(), tracking_id=f"{name}{suffix}"[:64],
            display_color=hd.color.CIELabColor.from_rgb(*(round(255 * c) for c in term.color))))
    return descriptions


def _frames(planes: Sequence[np.ndarray], volume) -> np.ndarray:
    """(frames, rows, columns, segments) from per-segment (z, y, x) arrays on the volume's grid."""
    stacked = np.stack([np.asarray(plane) for plane in planes], axis=-1)
    if stacked.shape[:3] != volume.array.shape:
        raise InputError(f"The result's shape {stacked.shape[:3]} does not match the image {volume.array.shape}.")
    if len(volume.dicom_files) != stacked.shape[0]:
        raise InputError(f"The image has {stacked.shape[0]} slices but {len(volume.dicom_files)} DICOM files; "
                         "a SEG needs one file per slice.")
    return stacked


def build_seg(planes: Sequence[np.ndarray], names: Sequence[str], volume, fractional: bool = False,
              corrected: bool | Sequence[bool] = False, suffix: str = "", description: str | None = None):
    """The highdicom Segmentation of per-prompt arrays (0/1 masks, or [0, 1] maps when ``fractional``)."""
    import highdicom as hd

    from .. import __version__

    frames = _frames(planes, volume)
    if fractional:
        frames = np.clip(frames.astype(np.float32), 0.0, 1.0)
    else:
        frames = frames.astype(bool)
    sources = source_datasets(volume.dicom_files)
    kind = "FRACTIONAL" if fractional else "BINARY"
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=frames,
        segmentation_type=kind, segment_descriptions=segment_descriptions(names, corrected, suffix),
        series_instance_uid=hd.UID(), series_number=_series_number(sources), sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer=MANUFACTURER, manufacturer_model_name=ALGORITHM_NAME,
        software_versions=__version__, device_serial_number="0",
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY, max_fractional_value=FRACTIONAL_MAX,
        content_label="MEDCLIPSAM", content_description=(description or _describe(names, corrected, kind))[:64],
        series_description=(description or _describe(names, corrected, kind))[:64],
        omit_empty_frames=False)


def _describe(names: Sequence[str], corrected: bool | Sequence[bool], kind: str) -> str:
    state = "corrected" if (corrected if isinstance(corrected, bool) else any(corrected)) else "draft"
    what = "maps" if kind == "FRACTIONAL" else "segmentation"
    return f"MedCLIP-SAM {what} ({state}): {', '.join(names)}"


def _series_number(sources: Sequence) -> int:
    """The source's series number + 1000 (a SEG's own series; a number viewers sort next to its source)."""
    try:
        return int(sources[0].get("SeriesNumber") or 0) + 1000
    except (TypeError, ValueError):
        return 1000


def write_seg(path: str | os.PathLike, planes: Sequence[np.ndarray], names: Sequence[str], volume,
              fractional: bool = False, corrected: bool | Sequence[bool] = False, overwrite: bool = False,
              suffix: str = "") -> Path:
    """Write a SEG atomically (whole or not at all); ``planes``: one (z, y, x) array per name."""
    segmentation = build_seg(planes, names, volume, fractional, corrected, suffix)
    path = Path(path)
    with replacing(path, overwrite) as temp:
        segmentation.save_as(str(temp))
    return path


def write_label_seg(path: str | os.PathLike, labels: np.ndarray, names: Sequence[str], volume,
                    corrected: bool | Sequence[bool] = False, overwrite: bool = False) -> Path:
    """A label map (0 background, i + 1 for names[i]) as a BINARY SEG with one segment per name."""
    return write_seg(path, [labels == index for index in range(1, len(names) + 1)], names, volume,
                     corrected=corrected, overwrite=overwrite)


def write_maps_seg(path: str | os.PathLike, maps: dict[str, np.ndarray], volume, kind: str = "saliency",
                   overwrite: bool = False) -> Path:
    """Per-prompt maps in [0, 1] (saliency, uncertainty) as a FRACTIONAL SEG, segments labelled 'NAME KIND'."""
    return write_seg(path, list(maps.values()), list(maps), volume, fractional=True, overwrite=overwrite,
                     suffix=f" {kind}")


def write_result_seg(path: str | os.PathLike, array: np.ndarray, names: Sequence[str], volume,
                     saliency_of: str | None = None, overwrite: bool = False) -> Path:
    """The command line's ``-o x.dcm`` (a run's label map, BINARY) or ``--saliency-out x.dcm`` (the saliency map
    of prompt ``saliency_of``, FRACTIONAL)."""
    if saliency_of is None:
        return write_label_seg(path, array, names, volume, overwrite=overwrite)
    return write_maps_seg(path, {saliency_of: array}, volume, overwrite=overwrite)


def read_seg_labels(path: str | os.PathLike, volume) -> np.ndarray:
    """A BINARY SEG read back (highdicom) as a label map on the volume's grid: i for segment i."""
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    uids = [ds.SOPInstanceUID for ds in source_datasets(volume.dicom_files)]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                               relabel=False)
    return pixels.reshape(volume.array.shape)
