"""Volumes into the page's scene: a path from the command line, or files uploaded from the browser.

Reading goes through the CLI's reader (``imageio.read_volume``: NIfTI, NRRD, MHA, DICOM series folders,
PNG/JPEG/TIFF, the same checks and messages) and the node is made as the review queue makes its nodes
(``slicer.review.volume_from_sitk``), so a 2D image becomes a one-slice volume on its own grid.
"""
from __future__ import annotations

import tempfile
from pathlib import Path, PurePath

from ..errors import InputError
from ..imageio import read_volume
from ..slicer.review import volume_from_sitk

DEFAULT_MAX_UPLOAD_MB = 512.0
"""The largest upload the page accepts (a whole-body CT is ~300 MB as int16 NIfTI)."""
DEFAULT_MAX_VOXELS = 400_000_000
"""The largest volume the page loads (1.6 GB as float32 in the scene)."""


def too_large(size_bytes: int, limit_mb: float) -> str | None:
    if size_bytes > limit_mb * 1e6:
        return (f"The upload is {size_bytes / 1e6:.0f} MB, over the page's limit of {limit_mb:.0f} MB: crop or "
                "resample the volume, or start the page with a larger --max-upload-mb.")
    return None


def read_into_scene(scene, path: str | Path, max_voxels: int = DEFAULT_MAX_VOXELS, name: str | None = None):
    """A new scalar volume node holding the image at ``path`` (file or DICOM folder); raises InputError."""
    return read_source_into_scene(scene, path, max_voxels, name)[0]


def read_source_into_scene(scene, path: str | Path, max_voxels: int = DEFAULT_MAX_VOXELS, name: str | None = None):
    """(the volume node, the ``imageio.Volume`` read): the latter keeps the DICOM files a SEG export refers to."""
    volume = read_volume(path)
    if volume.array.size > max_voxels:
        raise InputError(f"'{Path(path).name}' has {volume.array.size:,} voxels, over the page's limit of "
                         f"{max_voxels:,}: crop or resample it first.")
    label = name or _volume_name(Path(path))
    return volume_from_sitk(scene, volume.reference, label), volume


def _volume_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".seg.nrrd", ".nrrd", ".nii", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".tif",
                   ".tiff", ".bmp", ".dcm", ".zip"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def write_uploads(files: list[dict], folder: Path, limit_mb: float = DEFAULT_MAX_UPLOAD_MB) -> Path:
    """Uploaded files (trame's {name, content} dicts) into ``folder``; returns what to read: the file, the folder
    when several files came (a DICOM series), or the series folder of an uploaded .zip (``uploads``)."""
    from trame.app.file_upload import ClientFile

    from .uploads import is_zip_upload, unpack_series_zip

    written = []
    for item in files:
        upload = ClientFile(item)
        name = PurePath(upload.name.replace("\\", "/")).name  # a browser's name, never a path of ours
        if not name or name in (".", ".."):
            raise InputError("An uploaded file has no name; upload it again.")
        target = folder / name
        target.write_bytes(upload.content or b"")
        written.append(target)
    if not written:
        raise InputError("No file came with the upload; choose a file again.")
    zips = [p for p in written if is_zip_upload(p)]
    if zips and len(written) > 1:
        raise InputError(f"'{zips[0].name}' came with other files; upload one .zip of a series alone, or the "
                         "series' .dcm files without a zip.")
    if zips:
        return unpack_series_zip(zips[0], folder / "unzipped", int(limit_mb * 1e6))
    return written[0] if len(written) == 1 else folder


def read_uploads(scene, files: list[dict], max_upload_mb: float, max_voxels: int = DEFAULT_MAX_VOXELS):
    """The uploaded image or DICOM series as a volume node; refuses an upload over the limit or unreadable."""
    with tempfile.TemporaryDirectory(prefix="medclipsam-upload-") as tmp:
        return read_uploads_into(scene, files, max_upload_mb, Path(tmp), max_voxels)[0]


def read_uploads_into(scene, files: list[dict], max_upload_mb: float, folder: Path,
                      max_voxels: int = DEFAULT_MAX_VOXELS):
    """(the volume node, the ``imageio.Volume``) of the upload, its files written into ``folder``, which the caller
    keeps for a DICOM upload (the SEG export reads the source headers) and removes otherwise."""
    size = sum(len(_content(item)) for item in files)
    problem = too_large(size, max_upload_mb)
    if problem:
        raise InputError(problem)
    path = write_uploads(files, folder, max_upload_mb)
    zipped = next((PurePath(_upload_name(item)).name for item in files
                   if _upload_name(item).lower().endswith(".zip")), None)
    shown = zipped or (path.name if path.is_file() else f"{len(files)} uploaded files")
    name = _volume_name(Path(zipped)) if zipped else (_volume_name(path) if path.is_file() else "DICOM")
    try:
        return read_source_into_scene(scene, path, max_voxels, name)
    except InputError as exc:
        raise InputError(str(exc).replace(str(path), shown).replace(str(folder), "the upload")) from None


def _upload_name(item: dict) -> str:
    """The name the browser gave a file (any folder part dropped later)."""
    return str(item.get("name") or "").replace("\\", "/")


def _content(item: dict) -> bytes:
    content = item.get("content") or b""
    if isinstance(content, list):  # trame sends a large file as chunks
        return b"".join(content)
    return content
