"""DICOM from the browser: a .zip of one series unpacked safely, and the uploaded files kept while their volume
is on screen, so the page's Export can write a DICOM SEG that refers to them (as for a DICOM folder given on
the command line or opened from the PACS).

A zip is the one way a browser's file input sends a whole series folder (``webkitdirectory`` is not a standard
and trame's file input sends files). Unpacking refuses what could write outside its folder (absolute paths,
``..``), links, and more bytes than the page's upload limit (the sizes the zip declares; Python's zipfile reads
no more than those and checks each file's CRC, so a zip that understates them fails as damaged).
"""
from __future__ import annotations

import shutil
import tempfile
import weakref
import zipfile
from pathlib import Path, PurePosixPath

from ..dicom.series import is_dicom_file
from ..errors import InputError

ZIP_SUFFIX = ".zip"
MAX_ZIP_MEMBERS = 20_000
"""More files than any single series has (a 4D cardiac MR has a few thousand)."""
SKIPPED_NAMES = ("DICOMDIR",)
"""A media index, not an image; a CD's zip has it beside the series folder."""
_CHUNK = 1 << 20


def is_zip_upload(path: Path) -> bool:
    return path.name.lower().endswith(ZIP_SUFFIX)


def _safe_parts(name: str, shown: str) -> tuple[str, ...]:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not parts or name.startswith(("/", "\\")) or ":" in parts[0] or any(p in ("..", ".") for p in parts):
        raise InputError(f"'{shown}' holds a file with an unsafe path ('{name}'); zip the series folder again "
                         "(relative paths only).")
    return parts


def _is_link(member: zipfile.ZipInfo) -> bool:
    return (member.external_attr >> 16) & 0o170000 == 0o120000


def unpack_series_zip(archive_path: Path, out: Path, limit_bytes: int) -> Path:
    """The folder of the one DICOM series in the zip, unpacked under ``out``; refused with what to do otherwise."""
    shown = archive_path.name
    limit_mb = limit_bytes / 1e6
    try:
        archive = zipfile.ZipFile(archive_path)
    except (zipfile.BadZipFile, OSError):
        raise InputError(f"'{shown}' is not a readable .zip file; zip the folder of one DICOM series again.") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir() and not _is_link(m)]
        if len(members) > MAX_ZIP_MEMBERS:
            raise InputError(f"'{shown}' holds {len(members):,} files, more than one series has; upload one series "
                             "per .zip.")
        declared = sum(m.file_size for m in members)
        if declared > limit_bytes:
            raise InputError(f"'{shown}' unpacks to {declared / 1e6:.0f} MB, over the page's limit of "
                             f"{limit_mb:.0f} MB: upload one series, or start the page with a larger --max-upload-mb.")
        for member in members:
            parts = _safe_parts(member.filename, shown)
            if parts[0] == "__MACOSX" or parts[-1].startswith("._") or parts[-1] in SKIPPED_NAMES:
                continue  # macOS resource forks and a media index: no images
            target = out.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:  # zipfile yields no more than the declared size, then checks the CRC: a lying size fails here
                with archive.open(member) as source, open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink, _CHUNK)
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as exc:
                raise InputError(f"'{shown}' is damaged or encrypted ({member.filename}: {exc}); zip the folder of "
                                 "one DICOM series again.") from None
    folders = sorted({p.parent for p in out.rglob("*") if p.is_file() and is_dicom_file(p)})
    if not folders:
        raise InputError(f"'{shown}' holds no DICOM file; zip the folder of one DICOM series (the .dcm files) "
                         "and upload that.")
    if len(folders) > 1:
        names = ", ".join(f"'{f.relative_to(out).as_posix() or '.'}'" for f in folders[:3])
        raise InputError(f"'{shown}' holds DICOM files in {len(folders)} folders ({names}{', ...' if len(folders) > 3 else ''});"
                         " upload one series per .zip.")
    return folders[0]


class UploadStore:
    """A private folder per upload; the one whose DICOM volume is on screen is kept (a SEG refers to its files),
    the others are removed, and everything goes when the page stops."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="medclipsam-uploads-"))
        self.current: Path | None = None
        self._count = 0
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.root), True)

    def new_folder(self) -> Path:
        self._count += 1
        folder = self.root / f"upload-{self._count}"
        folder.mkdir()
        return folder

    def keep(self, folder: Path | None) -> None:
        """``folder`` holds the volume now on screen (None: no upload does): any other upload folder goes."""
        for child in self.root.iterdir():
            if child != folder:
                shutil.rmtree(child, ignore_errors=True)
        self.current = folder

    def discard(self, folder: Path) -> None:
        if folder != self.current:
            shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        self._finalizer()
