"""Image and volume I/O with SimpleITK, intensity normalisation and slicing.

Geometry is never lost: arrays are read with their SimpleITK image kept as the
reference, and outputs are written with the reference's spacing, origin and direction.
Arrays follow SimpleITK's numpy order: (z, y, x) for volumes, (y, x) for 2D images.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .completeness import INCOMPLETE_SIGNS, check_complete, incomplete
from .errors import InputError, OptionError, SettingError
from .outputs import PLAIN_2D_EXTENSIONS, check_output, extension, write_image
from .settings import CT_WINDOWS

MIN_SIDE = 8
"""Smallest in-plane size SAM and CLIP can make sense of."""
PLAIN_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LUMINANCE = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Grey values of an (..., 3+) RGB array (ITU-R 601 weights; extra channels ignored)."""
    return rgb[..., :3].astype(np.float32) @ LUMINANCE


@dataclass
class Volume:
    """Intensities as a (z, y, x) array plus the image that carries the geometry."""

    array: np.ndarray
    reference: sitk.Image
    """The image as read; its geometry is copied onto every output."""
    source: str
    dicom_files: tuple[str, ...] = ()
    """The DICOM files the array was read from, in slice order (a DICOM SEG refers to them); () otherwise."""

    @property
    def is_2d(self) -> bool:
        return self.reference.GetDimension() == 2

    @property
    def spacing_zyx(self) -> tuple[float, ...]:
        spacing = tuple(reversed(self.reference.GetSpacing()))
        return (1.0, *spacing) if self.is_2d else spacing


def _read_sitk(path: Path) -> tuple[sitk.Image, tuple[str, ...]]:
    """The image and, for DICOM, its files in slice order (headers checked first: ``dicom.series``)."""
    from .dicom.series import check_image_object, is_dicom_file, read_header

    if not path.exists():
        raise InputError(f"'{path}' does not exist. Check the path (for a DICOM series, give its folder).")
    if path.is_dir():
        return _read_dicom_series(path)
    _check_file(path)
    dicom = is_dicom_file(path)
    if dicom:
        check_image_object(read_header(path), str(path), single_frame=False)
    try:
        return sitk.ReadImage(str(path)), ((str(path),) if dicom else ())
    except RuntimeError as exc:
        raise _unreadable(path, exc) from None


def read_size(path: str | os.PathLike) -> tuple[int, ...]:
    """An image file's size (x, y[, z]) from its header alone, after the same checks as a full read; a
    trailing size of 1 is dropped (a one-slice volume is a 2D image)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"'{path}' does not exist or is not a file.")
    _check_file(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise _unreadable(path, exc) from None
    size = reader.GetSize()
    return size[:-1] if len(size) == 3 and size[-1] == 1 else size


def _check_file(path: Path) -> None:
    if path.stat().st_size == 0:
        raise InputError(f"'{path}' is an empty file. Re-export or copy the image again.")
    check_complete(path)


def _unreadable(path: Path, exc: RuntimeError) -> InputError:
    if any(sign in str(exc) for sign in INCOMPLETE_SIGNS):
        return InputError(incomplete(path, "its pixel data is shorter than its header says"))
    first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
    return InputError(f"Cannot read '{path}' as an image ({first_line}). "
                      "Supported: NIfTI, NRRD, MHA, DICOM series folders, PNG/JPEG/TIFF.")


def _read_dicom_series(folder: Path) -> tuple[sitk.Image, tuple[str, ...]]:
    from .dicom.series import check_series

    reader = sitk.ImageSeriesReader()
    try:
        series = reader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError:
        series = ()
    if not series:
        raise InputError(f"No readable DICOM series in folder '{folder}'. Give a folder holding the .dcm files "
                         "of one series, or a single image file.")
    if len(series) > 1:
        raise InputError(f"Folder '{folder}' holds {len(series)} DICOM series ({', '.join(series)}); "
                         "move one series into its own folder.")
    files = reader.GetGDCMSeriesFileNames(str(folder), series[0])
    check_series(files, folder)
    reader.SetFileNames(files)
    try:
        return reader.Execute(), tuple(files)
    except RuntimeError:
        raise InputError(f"The DICOM series in '{folder}' cannot be read (damaged or unsupported files).") from None


def to_grayscale(image: sitk.Image, source: str) -> sitk.Image:
    """Scalar images pass; RGB becomes luminance; other channel counts are refused."""
    channels = image.GetNumberOfComponentsPerPixel()
    if channels == 1:
        return image
    if channels != 3:
        raise InputError(f"'{source}' has {channels} channels per pixel; expected a grayscale or RGB image. "
                         "Save it as grayscale or RGB (drop the alpha channel).")
    gray = sitk.GetImageFromArray(luminance(sitk.GetArrayFromImage(image)))
    gray.CopyInformation(image)
    return gray


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a 2D image or 3D volume (file or DICOM folder) as a checked (z, y, x) float array."""
    path = Path(path)
    image, dicom_files = _read_sitk(path)
    image = to_grayscale(image, str(path))
    dimension = image.GetDimension()
    if dimension == 4:
        raise InputError(f"'{path}' is a 4D image (size {image.GetSize()}); extract one 3D time point or "
                         "channel first, for example with Slicer's Sequences module.")
    if dimension not in (2, 3):
        raise InputError(f"'{path}' has {dimension} dimensions; expected a 2D image or a 3D volume.")
    array = sitk.GetArrayFromImage(image)
    if dimension == 2:
        array = array[None]
    elif array.shape[0] == 1:
        image = image[:, :, 0]  # a 3D file holding one slice is a 2D image
    return Volume(array=check_array(array, str(path)), reference=image, source=str(path), dicom_files=dicom_files)


def check_array(array: np.ndarray, source: str = "image") -> np.ndarray:
    """Refuse arrays the pipeline cannot use, with a message saying why."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise InputError(f"{source}: expected a 2D or 3D array, got shape {array.shape}.")
    if min(array.shape[1:]) < MIN_SIDE:
        raise InputError(f"{source}: slices of {array.shape[1]}x{array.shape[2]} pixels are too small; "
                         f"need at least {MIN_SIDE}x{MIN_SIDE}.")
    if array.dtype.kind not in "uifb":
        raise InputError(f"{source}: pixel type {array.dtype} is not a number.")
    if array.dtype.kind == "b":  # a mask given as the image: 0/1 intensities like any other
        array = array.astype(np.float32)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InputError(f"{source}: contains NaN or infinite pixel values; replace them (for example with the "
                         "background value) before segmenting.")
    return array


def as_volume(array: np.ndarray, spacing: tuple[float, ...] | None = None) -> Volume:
    """Wrap an in-memory 2D (y, x) or 3D (z, y, x) array, e.g. from Slicer or a test."""
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise InputError(f"expected a 2D image or 3D volume, got an array of shape {array.shape}.")
    reference = sitk.GetImageFromArray(np.zeros(array.shape, dtype=np.uint8))
    if spacing is not None:
        reference.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    stacked = array[None] if array.ndim == 2 else array
    return Volume(array=check_array(stacked, "image"), reference=reference, source="array")


def image_to_gray(image: np.ndarray) -> np.ndarray:
    """A 2D image array (H, W) or (H, W, 3) as grayscale (H, W); other shapes are refused."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 3:
        return luminance(image)
    if image.ndim == 3 and image.shape[-1] in (2, 4):
        raise InputError(f"image has {image.shape[-1]} channels; expected grayscale or RGB. "
                         "Drop the alpha channel (RGBA) or pick one channel.")
    if image.ndim != 2:
        raise InputError(f"expected a 2D image (H, W) or (H, W, 3), got an array of shape {image.shape}.")
    return image


def normalize_intensity(array: np.ndarray, window: str | None = None,
                        percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Map intensities to uint8 once per volume (SPEC 2.1).

    8-bit images are already display-ready and pass unchanged; others use robust
    percentiles over the whole volume, or a named CT window.
    """
    if window is not None:
        if window not in CT_WINDOWS:
            raise InputError(f"Unknown CT window '{window}'. Choose one of: {', '.join(CT_WINDOWS)}.")
        level, width = CT_WINDOWS[window]
        low, high = level - width / 2, level + width / 2
    elif array.dtype == np.uint8:
        return array
    else:
        low, high = (float(v) for v in np.percentile(array, percentiles))
        if high <= low:
            low, high = float(array.min()), float(array.max())
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    scaled = (array.astype(np.float32) - low) * (255.0 / (high - low))
    return np.clip(scaled, 0, 255).round().astype(np.uint8)


def through_plane_axis(volume: Volume) -> int:
    """The acquisition axis in (z, y, x) order: the one with the coarsest spacing, else z."""
    spacing = np.asarray(volume.spacing_zyx)
    if volume.is_2d or np.allclose(spacing, spacing[0], rtol=0.05):
        return 0
    return int(np.argmax(spacing))


def check_axis(axis: int, volume: Volume) -> int:
    if volume.is_2d:
        if axis not in (0, -3):
            raise SettingError("axis", f"{{name}} {axis} is not valid for a 2D image: a 2D image has one slice "
                               "(axis 0).", "Axis")
        return 0
    if not -3 <= axis <= 2:
        raise SettingError("axis", f"{{name}} {axis} is out of range for a 3D volume: use 0 (z), 1 (y) or 2 (x).",
                           "Axis")
    return axis % 3


def resolve_axis(axis: int | None, volume: Volume) -> int:
    """The slicing axis: the one asked for (checked), else the through-plane axis."""
    return check_axis(axis if axis is not None else through_plane_axis(volume), volume)


def chosen_slices(count: int, slice_range: tuple[int, int] | None) -> np.ndarray:
    """Indices of the slices a run covers: the inclusive range (clipped to the volume), else all."""
    first, last = slice_range or (0, count - 1)
    if first >= count:
        raise SettingError("slice_range", f"{{name}} {first}-{last} is outside the {count} slices along this axis "
                           f"(0-{count - 1}).", "Slice range")
    return np.arange(first, min(last, count - 1) + 1)


def write_label(labels: np.ndarray, reference: sitk.Image, path: str | os.PathLike,
                overwrite: bool = False) -> Path:
    """Write a (z, y, x) label array with the reference geometry, atomically; never overwrite silently.

    Commands check the name first (``outputs.check_output``, ``check_plain_2d``), before any model loads.
    """
    path = check_output(path, "output", overwrite)
    check_plain_2d(path, "output", reference.GetDimension() == 2)
    data = labels[0] if reference.GetDimension() == 2 else labels
    if extension(path) in PLAIN_IMAGE_SUFFIXES:
        data = _to_8bit_for_plain_image(data)
    image = sitk.GetImageFromArray(data)
    image.CopyInformation(reference)
    return write_image(image, path, overwrite)


def check_plain_2d(path: str | os.PathLike, option: str, is_2d: bool) -> None:
    """A volume cannot go into a one-image format: SimpleITK would write one slice of it without a word."""
    if not is_2d and extension(path) in PLAIN_2D_EXTENSIONS:
        raise OptionError(f"{option} '{path}': {extension(path)} holds one 2D image, but the input is a volume; "
                          "use .nii.gz, .nrrd or .mha.")


def _to_8bit_for_plain_image(data: np.ndarray) -> np.ndarray:
    """PNG/JPEG viewers show 0/1 as black: a single label is stored as 0/255."""
    if data.dtype.kind == "f":
        return np.clip(data * 255.0, 0, 255).round().astype(np.uint8)
    if data.max(initial=0) <= 1:
        return (data > 0).astype(np.uint8) * 255
    return data.astype(np.uint8)
