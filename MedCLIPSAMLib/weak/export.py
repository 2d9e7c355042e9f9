"""Add (image, label) cases to an nnU-Net v2 raw dataset, never losing what is there.

Layout: ``Dataset<NNN>_<Name>/imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz`` and
``dataset.json`` (channel_names, labels {background: 0, <target>: 1}, numTraining,
file_ending). An existing case is refused unless overwriting is asked for; labels must be
0/1 on exactly the image's grid; a damaged or disagreeing dataset.json stops the export before
anything is written; every file is written atomically (temp file + rename), all or nothing.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, OptionError
from ..imageio import PLAIN_IMAGE_SUFFIXES
from ..inputs import read_json
from ..outputs import (STAGING_FOLDER, add_output_option, add_overwrite_option, check_folder, extension,
                       write_image, write_json)

FILE_ENDING = ".nii.gz"
GEOMETRY_TOLERANCE = 1e-4


DATASET_IDS = range(1, 1000)
"""nnU-Net's dataset ids."""
DATASET_NAME = re.compile(r"[A-Za-z0-9_\-]+")
"""The <Name> of Dataset<NNN>_<Name>."""


def dataset_dir(raw_root: str | Path, dataset_id: int, name: str) -> Path:
    """``raw_root/Dataset<NNN>_<Name>``; refuses a second folder with the same id and another name."""
    if dataset_id not in DATASET_IDS:
        raise InputError(f"nnU-Net dataset ids are 1-999 (got {dataset_id}).")
    if not DATASET_NAME.fullmatch(name):
        raise InputError(f"Dataset name '{name}' may only hold letters, digits, '_' and '-'.")
    raw_root = Path(raw_root)
    wanted = raw_root / f"Dataset{dataset_id:03d}_{name}"
    for existing in raw_root.glob(f"Dataset{dataset_id:03d}_*"):
        if existing != wanted:
            raise InputError(f"Dataset id {dataset_id} is already used by '{existing.name}'; choose another id.")
    return wanted


def dataset_id_option(text: str) -> int:
    """argparse type of --dataset-id: nnU-Net's ids are 1-999."""
    if not text.strip().isdigit() or int(text) not in DATASET_IDS:
        raise argparse.ArgumentTypeError(f"must be an nnU-Net dataset id, 1-999 (got {text}).")
    return int(text)


def dataset_name_option(text: str) -> str:
    """argparse type of --name: the <Name> of Dataset<NNN>_<Name>."""
    if not DATASET_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must hold only letters, digits, '_' and '-' (got '{text}').")
    return text


def channel_name_option(text: str) -> str:
    """argparse type of --modality: nnU-Net's channel name (CT picks CT normalisation)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name the channel, e.g. CT, MRI or US.")
    return text.strip()


def next_case_id(folder: str | Path, prefix: str) -> str:
    """``<prefix>_<NNNN>`` one past the highest number already used, so deleted cases leave gaps
    instead of making the next export collide with a case that is still there."""
    used = [int(m.group(1)) for path in (Path(folder) / "labelsTr").glob(f"{prefix}_*{FILE_ENDING}")
            if (m := re.fullmatch(rf"{re.escape(prefix)}_(\d+){re.escape(FILE_ENDING)}", path.name))]
    return f"{prefix}_{max(used, default=0) + 1:04d}"


def same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    """Same size, spacing, origin and direction (within GEOMETRY_TOLERANCE): a label that fits its image."""
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=GEOMETRY_TOLERANCE)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=GEOMETRY_TOLERANCE)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=GEOMETRY_TOLERANCE))


def _as_image(data: sitk.Image | np.ndarray | str | Path, reference: sitk.Image | None = None) -> sitk.Image:
    if isinstance(data, sitk.Image):
        return data
    if isinstance(data, (str, Path)):
        from ..imageio import _read_sitk, to_grayscale
        return to_grayscale(_read_sitk(Path(data))[0], str(data))
    image = sitk.GetImageFromArray(np.asarray(data))
    if reference is not None:
        if image.GetSize() != reference.GetSize():
            raise InputError(f"Label array of size {image.GetSize()} does not match the image size "
                             f"{reference.GetSize()}.")
        image.CopyInformation(reference)
    return image


def _label_values(label: sitk.Image, source, case_id: str) -> sitk.Image:
    """The label as uint8 0/1, or a refusal naming the values found: nnU-Net needs exactly background 0 and
    the target 1, and binarising {0, 2} or merging {0, 1, 2} silently would train on the wrong target.

    A PNG/BMP/TIFF mask of 0 and 255 is 0/1 as image viewers show it (``segment -o mask.png`` writes it so).
    """
    values = np.unique(sitk.GetArrayViewFromImage(label)).tolist()
    plain = isinstance(source, (str, Path)) and extension(source) in PLAIN_IMAGE_SUFFIXES
    if plain and set(values) <= {0, 255}:
        binary = sitk.Cast(label > 0, sitk.sitkUInt8)
        binary.CopyInformation(label)
        return binary
    if not set(values) <= {0, 1}:
        shown = ", ".join(f"{v:g}" for v in values[:8]) + (", ..." if len(values) > 8 else "")
        raise InputError(f"Case '{case_id}': the label holds the values {{{shown}}}; nnU-Net needs 0 (background) "
                         "and 1 (the target) only. Save the target alone as a 0/1 mask.")
    return sitk.Cast(label, sitk.sitkUInt8)


def read_dataset_json(folder: Path) -> dict | None:
    """The dataset's dataset.json (None for a new dataset); a damaged one is a one-line error."""
    path = folder / "dataset.json"
    if not path.exists():
        return None
    content = read_json(path, "The dataset's index")
    if not isinstance(content, dict):
        raise InputError(f"'{path}' is not an nnU-Net dataset.json (a JSON object); fix or restore it.")
    return content


def check_dataset_json(folder: Path, label_name: str, modality: str) -> None:
    """An existing dataset.json must agree with this export (labels, channel, file ending), or nothing is added."""
    current = read_dataset_json(folder)
    if current is None:
        return
    path = folder / "dataset.json"
    labels = {"background": 0, label_name: 1}
    if current.get("labels") != labels:
        raise InputError(f"{path} has labels {current.get('labels')}, not {labels}; give the dataset's own "
                         "--label-name, or export this target to another dataset.")
    if current.get("channel_names", {"0": modality}) != {"0": modality}:
        raise InputError(f"{path} has the channel {current['channel_names']}, not {{'0': '{modality}'}}; give "
                         "the dataset's own --modality, or export to another dataset.")
    if current.get("file_ending", FILE_ENDING) != FILE_ENDING:
        raise InputError(f"{path} uses '{current['file_ending']}' files; this export writes {FILE_ENDING}.")


def write_dataset_json(folder: Path, label_name: str, modality: str) -> dict:
    """(Re)write dataset.json from what is on disk, atomically; labels must agree with an existing file."""
    check_dataset_json(folder, label_name, modality)
    cases = [p for p in (folder / "labelsTr").glob(f"*{FILE_ENDING}") if not p.name.startswith(".")]
    content = {"channel_names": {"0": modality}, "labels": {"background": 0, label_name: 1},
               "numTraining": len(cases), "file_ending": FILE_ENDING,
               "name": folder.name.split("_", 1)[1],
               "description": "MedCLIP-SAM zero-shot pseudo-labels (labels.csv says which a reviewer accepted or edited)"}
    write_json(folder / "dataset.json", content, overwrite=True)
    return content


@dataclass
class CaseSource:
    """One case to export: an id, and its image and label as files, arrays or SimpleITK images."""

    case_id: str
    image: Any
    label: Any


def case_paths(folder: Path, case_id: str) -> tuple[Path, Path]:
    return folder / "imagesTr" / f"{case_id}_0000{FILE_ENDING}", folder / "labelsTr" / f"{case_id}{FILE_ENDING}"


def load_case(folder: Path, case: CaseSource, overwrite: bool) -> tuple[sitk.Image, sitk.Image]:
    """The case's image and 0/1 label after every check (id, not there yet, image, grid, label values)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]*", case.case_id):
        raise InputError(f"Case id '{case.case_id}' may only hold letters, digits, '_' and '-'.")
    if any(path.exists() for path in case_paths(folder, case.case_id)) and not overwrite:
        raise InputError(f"Case '{case.case_id}' is already in {folder.name}; choose another case id or pass "
                         "--overwrite.")
    image = _as_image(case.image)
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() not in (2, 3):
        raise InputError(f"Case '{case.case_id}': the image must be a 2D or 3D grayscale image.")
    label = _as_image(case.label, image)
    if not same_geometry(image, label):
        raise InputError(f"Case '{case.case_id}': the label's size, spacing, origin or direction differs from the "
                         "image's; export the label on the image's grid.")
    return image, _label_values(label, case.label, case.case_id)


def add_cases(folder: str | Path, cases: list[CaseSource], label_name: str, modality: str = "MRI",
              overwrite: bool = False) -> list[tuple[Path, Path]]:
    """Add cases to a dataset all or nothing: everything is checked first (dataset.json, every case), then
    each file is written atomically, and a failure removes the new files again, so no orphan is left and
    dataset.json always counts what is there."""
    folder = Path(folder)
    label_name = label_name.strip()
    if not label_name:
        raise InputError("The label needs a name (the prompt, e.g. 'brain tumor').")
    ids = [case.case_id for case in cases]
    if len(set(ids)) != len(ids):
        raise InputError(f"Case id '{next(i for i in ids if ids.count(i) > 1)}' is given twice.")
    check_dataset_json(folder, label_name, modality)
    for case in cases:  # all checks first (read, then let go: a folder of volumes need not fit in memory)
        load_case(folder, case, overwrite)
    written: list[Path] = []
    try:
        for case in cases:
            image, label = load_case(folder, case, overwrite)
            for data, path in zip((image, label), case_paths(folder, case.case_id)):
                existed = path.exists()
                write_image(data, path, overwrite, staging=folder / STAGING_FOLDER)
                if not existed:
                    written.append(path)
        write_dataset_json(folder, label_name, modality)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    finally:
        _remove_if_empty(folder / STAGING_FOLDER)
    return [case_paths(folder, case.case_id) for case in cases]


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # missing, or another writer's file is in it
        pass


def add_case(folder: str | Path, case_id: str, image, label, label_name: str, modality: str = "MRI",
             overwrite: bool = False) -> tuple[Path, Path]:
    """Add one case (image file/array/sitk.Image + 0/1 label on its grid); returns the two paths."""
    return add_cases(folder, [CaseSource(case_id, image, label)], label_name, modality, overwrite)[0]


def register_cli(sub) -> None:
    parser = sub.add_parser("nnunet-export", help="add image/label cases to an nnU-Net v2 raw dataset")
    add_output_option(parser, "--raw", kind="folder", required=True, help="nnU-Net raw folder")
    parser.add_argument("--dataset-id", type=dataset_id_option, required=True)
    parser.add_argument("--name", type=dataset_name_option, required=True, help="dataset name (Dataset<NNN>_<name>)")
    parser.add_argument("--label-name", required=True, help="the target, e.g. 'brain tumor'")
    parser.add_argument("--modality", type=channel_name_option, default="MRI", help="channel name, e.g. CT, MRI, US")
    parser.add_argument("--image", help="one image (with --label and --case-id)")
    parser.add_argument("--label", help="its 0/1 label on the image's grid (e.g. from medclipsam segment)")
    parser.add_argument("--case-id")
    parser.add_argument("--pairs", help="or: a folder of <case>.<ext> + <case>_mask.<ext> pairs")
    add_overwrite_option(parser, "cases")
    parser.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    folder = dataset_dir(args.raw, args.dataset_id, args.name)
    if args.pairs:
        from ..cases import pair_files, unpaired_note
        pairs, unpaired = pair_files(Path(args.pairs))
        if unpaired_note(unpaired):
            print(f"note: {unpaired_note(unpaired)}", file=sys.stderr)
        cases = [CaseSource(c.name, c.image, c.mask) for c in pairs]
    elif args.image and args.label and args.case_id:
        cases = [CaseSource(args.case_id, Path(args.image), Path(args.label))]
    else:
        raise OptionError("Give --image, --label and --case-id, or --pairs FOLDER.")
    check_folder(args.raw, "--raw")
    add_cases(folder, cases, args.label_name, args.modality, args.overwrite)
    count = read_dataset_json(folder)["numTraining"]
    print(f"{folder}: {count} cases")
    return 0
