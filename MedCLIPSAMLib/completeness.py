"""Refuse image files that were cut off or damaged, before SimpleITK reads them.

SimpleITK's NIfTI reader fills a short .nii/.nii.gz with zeros without a word (a truncated download
becomes half a volume of air, and the run segments it), and its MetaImage reader says only "No such
file or directory". So the bytes are compared with what the header promises: a .gz must reach its
end-of-stream marker with a matching checksum, a NIfTI file must hold vox_offset + voxels x bytes per
voxel, an .mha or .nrrd its header plus the pixel data. ITK's own NRRD messages are recognised too
(``INCOMPLETE_SIGNS``), so the user reads the same sentence whichever check sees it first.
"""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import Callable

from .errors import InputError

INCOMPLETE_SIGNS = ("not read completely", "but received", "fread got only", "end-of-stream", "unexpected end")
"""What ITK's NRRD and MetaImage readers say about a short file (they refuse it; the NIfTI reader does not)."""


def incomplete(path: Path, why: str) -> str:
    return (f"'{path}' is incomplete: {why}. The file was cut off (an interrupted copy or download); "
            "copy or export it again.")


def check_complete(path: Path) -> None:
    """Refuse a truncated or damaged .nii, .nii.gz, .mha or other .gz file (see the module docstring)."""
    name = path.name.lower()
    if name.endswith(".nrrd"):
        return _check_nrrd(path)
    if not name.endswith((".gz", ".nii", ".mha")):
        return
    compressed = _is_gzip(path)
    size = _gzip_length(path) if compressed else path.stat().st_size
    if name.endswith((".nii", ".nii.gz")):
        with (gzip.open if compressed else open)(path, "rb") as handle:
            expected = _nifti_size(handle.read(NIFTI2_HEADER_SIZE))
    elif name.endswith(".mha"):
        expected = _metaimage_size(path)
    else:
        return
    _compare(path, size, expected)


def _compare(path: Path, size: int, expected: int | None) -> None:
    if expected is not None and size < expected:
        raise InputError(incomplete(path, f"it holds {size} bytes where its header needs {expected}"))


def _is_gzip(path: Path) -> bool:
    """By content, not name: readers accept a plain .nii named .nii.gz."""
    with path.open("rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def _gzip_length(path: Path, offset: int = 0) -> int:
    """Uncompressed size of a gzip stream (from ``offset``), read to the end so a cut-off or corrupted stream
    is noticed."""
    size = 0
    try:
        with path.open("rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as handle:
            raw.seek(offset)
            while block := handle.read(1 << 22):
                size += len(block)
    except EOFError:
        raise InputError(incomplete(path, "its compressed data ends before the end-of-stream marker")) from None
    except (OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise InputError(f"'{path}' is damaged: its compressed data cannot be read ({exc}). "
                         "Copy or export it again.") from None
    return size


NIFTI1_HEADER_SIZE, NIFTI2_HEADER_SIZE = 348, 540


def _nifti_size(header: bytes) -> int | None:
    """Bytes a NIfTI-1/2 file needs (header, extensions and voxels); None when the header is not NIfTI."""
    for order in "<>":
        if len(header) >= NIFTI1_HEADER_SIZE and struct.unpack(order + "i", header[:4])[0] == NIFTI1_HEADER_SIZE:
            dims = struct.unpack(order + "8h", header[40:56])
            bitpix = struct.unpack(order + "h", header[72:74])[0]
            offset = max(int(struct.unpack(order + "f", header[108:112])[0]), NIFTI1_HEADER_SIZE)
            break
        if len(header) >= NIFTI2_HEADER_SIZE and struct.unpack(order + "i", header[:4])[0] == NIFTI2_HEADER_SIZE:
            bitpix = struct.unpack(order + "h", header[14:16])[0]
            dims = struct.unpack(order + "8q", header[16:80])
            offset = max(struct.unpack(order + "q", header[168:176])[0], NIFTI2_HEADER_SIZE)
            break
    else:
        return None
    count = dims[0]
    if not 1 <= count <= 7 or bitpix <= 0 or any(d < 0 for d in dims[1:count + 1]):
        return None  # not a header we can reason about: leave it to SimpleITK
    return offset + math.prod(dims[1:count + 1]) * bitpix // 8


NRRD_BYTES = (("char", 1), ("int8", 1), ("short", 2), ("int16", 2), ("long", 8), ("int64", 8), ("float", 4),
              ("double", 8), ("int", 4))
"""NRRD type names by the word that fixes their size (checked in this order: 'unsigned long long int' is 8)."""


def _read_header(path: Path, separator: str, end: Callable[[str, str], bool]) -> tuple[dict[str, str], int]:
    """``key<separator>value`` lines (keys in lower case) up to the line where ``end(key, line)`` holds; and the
    offset of the data after it."""
    fields: dict[str, str] = {}
    with path.open("rb") as handle:
        for raw in iter(lambda: handle.readline(4096), b""):
            line = raw.decode("latin-1").rstrip("\r\n")
            key, _, value = line.partition(separator)
            fields[key.strip().lower()] = value.strip()
            if end(key.strip().lower(), line):
                break
        return fields, handle.tell()


def _check_nrrd(path: Path) -> None:
    """A NRRD with attached data (raw or gzip) holds what its header promises. ITK refuses a short one
    too, but only when the pixels are read, and a header-only check (evaluate, nnunet-predict) would pass."""
    fields, offset = _read_header(path, ":", lambda key, line: line == "")
    if "data file" in fields or "datafile" in fields or "byte skip" in fields or "line skip" in fields:
        return
    try:
        count = math.prod(int(v) for v in fields["sizes"].split())
        width = next(size for word, size in NRRD_BYTES if word in fields["type"].lower())
    except (KeyError, ValueError, StopIteration):
        return
    encoding = fields.get("encoding", "raw").lower()
    if encoding in ("gzip", "gz"):
        _compare(path, _gzip_length(path, offset), count * width)
    elif encoding == "raw":
        _compare(path, path.stat().st_size - offset, count * width)


METAIMAGE_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
                   "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
                   "MET_DOUBLE": 8}


def _metaimage_size(path: Path) -> int | None:
    """Bytes a MetaImage (.mha, data after the header) needs; None when its header is not one we know.

    ITK refuses a short .mha but says only "No such file or directory", so the size is checked here.
    """
    fields, header = _read_header(path, "=", lambda key, line: key == "elementdatafile")
    if fields.get("elementdatafile") != "LOCAL":
        return None
    if fields.get("compresseddata", "False").lower() == "true":
        compressed = fields.get("compresseddatasize", "")
        return header + int(compressed) if compressed.isdigit() else None
    try:
        dims = [int(d) for d in fields["dimsize"].split()]
        channels = int(fields.get("elementnumberofchannels", "1"))
        return header + math.prod(dims) * channels * METAIMAGE_BYTES[fields["elementtype"]]
    except (KeyError, ValueError):
        return None
