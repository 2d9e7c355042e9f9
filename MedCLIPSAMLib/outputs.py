"""One way to write every output file: checked before any work, written atomically, never over an input.

Writers choose or change the file name from its extension (SimpleITK's NIfTI writer turns
``scan.nii.gz.nii.gz`` into ``scan.nii.gz``, which may be the user's image), and a run stopped
half-way through a write leaves a broken file. So every command first *checks* its outputs
(``check_output``: a known extension, not an existing file unless overwriting, never an input,
a folder that can be written) before it loads a model, and then *writes* through ``replacing``:
the writer gets a temporary name in the same folder with a plain stem and the same extension, and
the finished file is renamed into place with ``os.replace`` (atomic on one file system).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from .errors import InputError, OptionError

COMPOUND_EXTENSIONS = (".nii.gz", ".seg.nrrd")
IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".png", ".tif", ".tiff", ".bmp")
"""Single-file formats SimpleITK writes. Detached headers (.nhdr, .mhd, .hdr/.img) write two files, which
cannot be replaced atomically; JPEG would blur a label map."""
PLAIN_2D_EXTENSIONS = (".png", ".bmp")
"""Formats that hold one 2D image only: a volume cannot be written to them."""
TEMP_PREFIX = ".medclipsam-part-"
STAGING_FOLDER = ".medclipsam_tmp"
"""Staging folder inside an nnU-Net dataset for files being written (never inside imagesTr/labelsTr)."""
OUTPUT_ATTRIBUTE = "medclipsam_output"
"""Set on the argparse action of every option naming an output ('file' or 'folder'), so tests can find them."""


def extension(path: str | os.PathLike) -> str:
    """The file's real extension, lower case, compound ones whole ('.nii.gz'); '' when there is none."""
    name = Path(path).name.lower()
    for compound in COMPOUND_EXTENSIONS:
        if name.endswith(compound) and len(name) > len(compound):
            return compound
    suffix = Path(name).suffix
    return suffix if len(name) > len(suffix) else ""


def add_output_option(parser: argparse.ArgumentParser, *flags: str, kind: str = "file",
                      **kwargs) -> argparse.Action:
    """``add_argument`` for an option naming an output file or folder, marked so tests can find them all."""
    action = parser.add_argument(*flags, **kwargs)
    setattr(action, OUTPUT_ATTRIBUTE, kind)
    return action


def add_overwrite_option(parser: argparse.ArgumentParser, what: str = "output files") -> None:
    parser.add_argument("--overwrite", action="store_true", help=f"replace existing {what}")


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file (links and relative paths resolved)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def check_output(path: str | os.PathLike, option: str, overwrite: bool = False,
                 inputs: Iterable[str | os.PathLike] = (),
                 extensions: tuple[str, ...] | None = IMAGE_EXTENSIONS) -> Path:
    """Refuse, before any work, an output that cannot or must not be written; returns it as a Path.

    Option values (extension, an input's name) exit 2; the file system's state (exists, folder not
    writable) exits 3. An input is never replaced, not even with ``--overwrite``.
    """
    path = Path(path)
    ext = extension(path)
    if extensions is not None and ext not in extensions:
        found = f"has the unknown extension '{ext}'" if ext else "has no extension"
        raise OptionError(f"{option} '{path}' {found}; use one of {', '.join(extensions)}.")
    if path.is_dir():
        raise OptionError(f"{option} '{path}' is a folder; give a file name.")
    for source in inputs:
        if Path(source).exists() and same_file(path, source):
            raise OptionError(f"{option} '{path}' is an input of this command; choose another name "
                              "(inputs are never replaced, not even with --overwrite).")
    if path.exists() and not overwrite:
        raise InputError(f"'{path}' already exists. Choose another output name or pass --overwrite.")
    check_folder(path.parent, option)
    return path


def check_outside(path: str | os.PathLike, folder: str | os.PathLike, option: str, why: str) -> None:
    """Refuse an output inside (or equal to) an input folder whose files another step owns."""
    target, owner = Path(path).resolve(), Path(folder).resolve()
    if target == owner or owner in target.parents:
        raise OptionError(f"{option} '{path}' is inside '{folder}', {why}; write it elsewhere "
                          "(not even --overwrite writes there).")


def check_folder(folder: str | os.PathLike, option: str) -> Path:
    """The folder (created later if missing) can hold new files: its nearest existing ancestor is a
    writable folder."""
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise InputError(f"{option}: '{existing}' is a file, so '{folder}' cannot be created as a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{option}: no permission to write in '{existing}'.")
    return folder


def check_distinct(paths: Iterable[tuple[str, Path]]) -> None:
    """Two outputs of one run must not be the same file (the second would replace the first)."""
    seen: dict[Path, str] = {}
    for option, path in paths:
        key = Path(os.path.abspath(path))
        if key in seen:
            raise OptionError(f"{seen[key]} and {option} both name '{path}'; give each output its own name.")
        seen[key] = option


@contextmanager
def replacing(path: str | os.PathLike, overwrite: bool = False, staging: Path | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same extension) for a writer; on success the file is renamed
    onto ``path``, on any failure (Ctrl-C included) it is removed, so ``path`` is either untouched or whole.

    An output that appeared while the command worked is still refused unless ``overwrite``. ``staging``: a
    folder on the same disk for the temporary file instead, where a stray one (after a power cut) must not
    sit among the outputs (nnU-Net would take it for a case: see ``STAGING_FOLDER``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = staging or path.parent
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f"{TEMP_PREFIX}{secrets.token_hex(4)}{extension(path) or '.tmp'}"
    try:
        yield temp
        if not temp.is_file():
            raise InputError(f"Writing '{path}' produced no file; the format may not suit this data.")
        if path.exists() and not overwrite:
            raise InputError(f"'{path}' appeared while this command ran; nothing was replaced. Choose another "
                             "output name or pass --overwrite.")
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str, overwrite: bool = False) -> Path:
    """Write a text file atomically."""
    with replacing(path, overwrite) as temp:
        temp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, content, overwrite: bool = False) -> Path:
    return write_text(path, json.dumps(content, indent=2, default=str), overwrite)


def write_image(image, path: str | os.PathLike, overwrite: bool = False, staging: Path | None = None) -> Path:
    """Write a SimpleITK image (compressed where the format allows) atomically; the name is used as given."""
    import SimpleITK as sitk

    path = Path(path)
    with replacing(path, overwrite, staging) as temp:
        try:
            sitk.WriteImage(image, str(temp), useCompression=True)
        except RuntimeError:
            raise InputError(f"Cannot write '{path}' as {extension(path) or 'an image'} "
                             "(that format cannot hold this image, or the disk is full).") from None
    return path
