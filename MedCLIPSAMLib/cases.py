"""Which files make a case: image/mask pairs by name (evaluation, oracle runs, dataset export) and a file's
nnU-Net case id. The lowest layer with no models, so evaluation and weak supervision both take it."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

MASK_SUFFIXES = ("_mask", "_label", "_seg")
IMAGE_SUFFIX = "_image"
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class Case:
    name: str
    image: Path
    mask: Path


def _split_name(path: Path) -> tuple[str, str]:
    name = path.name
    for ext in (".nii.gz", ".seg.nrrd"):
        if name.endswith(ext):
            return name[: -len(ext)], ext
    return path.stem, path.suffix


IMAGE_FILE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii.gz", ".nii", ".nrrd", ".mha",
                         ".seg.nrrd", ".dcm")


def pair_files(folder: Path) -> tuple[list[Case], list[Path]]:
    """Pairs ``<case>.<ext>`` + ``<case>_mask.<ext>`` (or ``_label``/``_seg``; ``<case>_image`` too), and the
    images that have no mask (skipped, and the caller says so)."""
    if not folder.is_dir():
        raise InputError(f"'{folder}' is not a folder of image/mask pairs.")
    files = {_split_name(p): p for p in sorted(folder.iterdir()) if p.is_file()}
    cases, unpaired = [], []
    for (stem, ext), path in files.items():
        if stem.endswith(MASK_SUFFIXES):
            continue
        base = stem[: -len(IMAGE_SUFFIX)] if stem.endswith(IMAGE_SUFFIX) else stem
        partner = next((files[(base + s, ext)] for s in MASK_SUFFIXES if (base + s, ext) in files), None)
        if partner is not None:
            cases.append(Case(base, path, partner))
        elif ext.lower() in IMAGE_FILE_EXTENSIONS:
            unpaired.append(path)
    if not cases:
        raise InputError(f"No image/mask pairs in '{folder}': name them <case>.png + <case>_mask.png "
                         "(or <case>_image.nrrd + <case>_label.nrrd).")
    return cases, unpaired


def find_cases(folder: Path) -> list[Case]:
    """The image/mask pairs of a folder (see ``pair_files``)."""
    return pair_files(folder)[0]


def listed_names(paths: list[Path], shown: int = 5) -> str:
    """The first ``shown`` file names, comma-separated, with ", ..." when there are more (for one-line notes)."""
    return ", ".join(p.name for p in paths[:shown]) + (", ..." if len(paths) > shown else "")


def unpaired_note(unpaired: list[Path]) -> str | None:
    """A note naming the images skipped for want of a mask, so none is left out silently."""
    if not unpaired:
        return None
    names = listed_names(unpaired)
    return (f"{len(unpaired)} image(s) have no mask and are skipped: {names} (a mask is named <case>_mask.<ext>, "
            "_label or _seg, with the image's extension).")


def case_id_of(name: str) -> str:
    """A file or folder name as an nnU-Net case id (letters, digits, '_' and '-')."""
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    case = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_-")
    if not case:
        raise InputError(f"'{name}' gives no usable case id; rename it or give case_id in a manifest.")
    return case
