"""Add (image, label) cases to an nnU-Net v2 raw dataset, never losing what is there.

Layout: ``Dataset<NNN>_<Name>/imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz`` and
``dataset.json`` (channel_names, labels {background: 0, <target>: 1}, numTraining,
file_ending). An existing case is refused unless overwriting is asked for; labels must be
0/1 on exactly the image's grid; dataset.json is rewritten atomically (temp file + rename).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

FILE_ENDING = ".nii.gz"
GEOMETRY_TOLERANCE = 1e-4


def dataset_dir(raw_root: str | Path, dataset_id: int, name: str) -> Path:
    """``raw_root/Dataset<NNN>_<Name>``; refuses a second folder with the same id and another name."""
    if not 1 <= dataset_id <= 999:
        raise InputError(f"nnU-Net dataset ids are 1-999 (got {dataset_id}).")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise InputError(f"Dataset name '{name}' may only hold letters, digits, '_' and '-'.")
    raw_root = Path(raw_root)
    wanted = raw_root / f"Dataset{dataset_id:03d}_{name}"
    for existing in raw_root.glob(f"Dataset{dataset_id:03d}_*"):
        if existing != wanted:
            raise InputError(f"Dataset id {dataset_id} is already used by '{existing.name}'; choose another id.")
    return wanted


def next_case_id(folder: str | Path, prefix: str) -> str:
    """``<prefix>_<NNNN>`` one past the highest number already used, so deleted cases leave gaps
    instead of making the next export collide with a case that is still there."""
    used = [int(m.group(1)) for path in (Path(folder) / "labelsTr").glob(f"{prefix}_*{FILE_ENDING}")
            if (m := re.fullmatch(rf"{re.escape(prefix)}_(\d+){re.escape(FILE_ENDING)}", path.name))]
    return f"{prefix}_{max(used, default=0) + 1:04d}"


def _same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=GEOMETRY_TOLERANCE)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=GEOMETRY_TOLERANCE)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=GEOMETRY_TOLERANCE))


def _as_image(data: sitk.Image | np.ndarray | str | Path, reference: sitk.Image | None = None) -> sitk.Image:
    if isinstance(data, sitk.Image):
        return data
    if isinstance(data, (str, Path)):
        from ..imageio import _read_sitk, to_grayscale
        return to_grayscale(_read_sitk(Path(data)), str(data))
    image = sitk.GetImageFromArray(np.asarray(data))
    if reference is not None:
        if image.GetSize() != reference.GetSize():
            raise InputError(f"Label array of size {image.GetSize()} does not match the image size "
                             f"{reference.GetSize()}.")
        image.CopyInformation(reference)
    return image


def write_dataset_json(folder: Path, label_name: str, modality: str) -> dict:
    """(Re)write dataset.json from what is on disk, atomically; labels must agree with an existing file."""
    path = folder / "dataset.json"
    labels = {"background": 0, label_name: 1}
    if path.exists():
        current = json.loads(path.read_text())
        if current.get("labels") != labels:
            raise InputError(f"{path} has labels {current.get('labels')}, not {labels}; export this target to "
                             "another dataset.")
    content = {"channel_names": {"0": modality}, "labels": labels,
               "numTraining": len(list((folder / "labelsTr").glob(f"*{FILE_ENDING}"))), "file_ending": FILE_ENDING,
               "name": folder.name.split("_", 1)[1], "description": "MedCLIP-SAM pseudo-labels (zero-shot, edited)"}
    partial = path.with_name("dataset.json.part")
    partial.write_text(json.dumps(content, indent=2))
    os.replace(partial, path)
    return content


def add_case(folder: str | Path, case_id: str, image, label, label_name: str, modality: str = "MRI",
             overwrite: bool = False) -> tuple[Path, Path]:
    """Add one case (image file/array/sitk.Image + 0/1 label on its grid); returns the two paths."""
    folder = Path(folder)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]*", case_id):
        raise InputError(f"Case id '{case_id}' may only hold letters, digits, '_' and '-'.")
    if not label_name.strip():
        raise InputError("The label needs a name (the prompt, e.g. 'brain tumor').")
    image = _as_image(image)
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() not in (2, 3):
        raise InputError(f"Case '{case_id}': the image must be a 2D or 3D grayscale image.")
    label = _as_image(label, image)
    if not _same_geometry(image, label):
        raise InputError(f"Case '{case_id}': the label's size, spacing, origin or direction differs from the "
                         "image's; export the label on the image's grid.")
    values = np.unique(sitk.GetArrayViewFromImage(label))
    if not set(values.tolist()) <= {0, 1}:
        raise InputError(f"Case '{case_id}': label values {values.tolist()[:6]} are not 0/1.")
    image_path = folder / "imagesTr" / f"{case_id}_0000{FILE_ENDING}"
    label_path = folder / "labelsTr" / f"{case_id}{FILE_ENDING}"
    if (image_path.exists() or label_path.exists()) and not overwrite:
        raise InputError(f"Case '{case_id}' is already in {folder.name}; choose another case id or pass --overwrite.")
    image_path.parent.mkdir(parents=True, exist_ok=True)
    label_path.parent.mkdir(parents=True, exist_ok=True)
    label = sitk.Cast(label, sitk.sitkUInt8)
    sitk.WriteImage(image, str(image_path), useCompression=True)
    sitk.WriteImage(label, str(label_path), useCompression=True)
    write_dataset_json(folder, label_name.strip(), modality)
    return image_path, label_path


def register_cli(sub) -> None:
    parser = sub.add_parser("nnunet-export", help="add image/label cases to an nnU-Net v2 raw dataset")
    parser.add_argument("--raw", required=True, help="nnU-Net raw folder")
    parser.add_argument("--dataset-id", type=int, required=True)
    parser.add_argument("--name", required=True, help="dataset name (Dataset<NNN>_<name>)")
    parser.add_argument("--label-name", required=True, help="the target, e.g. 'brain tumor'")
    parser.add_argument("--modality", default="MRI", help="channel name, e.g. CT, MRI, US")
    parser.add_argument("--image", help="one image (with --label and --case-id)")
    parser.add_argument("--label", help="its 0/1 label on the image's grid (e.g. from medclipsam segment)")
    parser.add_argument("--case-id")
    parser.add_argument("--pairs", help="or: a folder of <case>.<ext> + <case>_mask.<ext> pairs")
    parser.add_argument("--overwrite", action="store_true", help="replace cases that already exist")
    parser.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    folder = dataset_dir(args.raw, args.dataset_id, args.name)
    if args.pairs:
        from ..evaluate import find_cases
        cases = [(c.name, c.image, c.mask) for c in find_cases(Path(args.pairs))]
    elif args.image and args.label and args.case_id:
        cases = [(args.case_id, Path(args.image), Path(args.label))]
    else:
        raise InputError("Give --image, --label and --case-id, or --pairs FOLDER.")
    for case_id, image, label in cases:
        label_image = _as_image(label)
        binary = sitk.Cast(label_image > 0, sitk.sitkUInt8)
        binary.CopyInformation(label_image)
        add_case(folder, case_id, image, binary, args.label_name, args.modality, args.overwrite)
    print(f"{folder}: {json.loads((folder / 'dataset.json').read_text())['numTraining']} cases")
    return 0
