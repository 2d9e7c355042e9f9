"""Accept, exclude and restore cases on disk: every write atomic, no file ever lost.

- *Accept* writes the reviewer's label into labelsTr on the image's exact grid. The pseudo-label it
  replaces is kept first in ``medclipsam_review/pseudo/`` (an all-background label where the zero-shot run
  left none), and an earlier accepted label goes to ``medclipsam_review/history/``.
- *Exclude* moves the case's image and label to ``medclipsam_review/excluded/`` (renames on one disk:
  each file is in one place or the other, never half); *undo* moves them back.

Order of writes: the intent in the review state, then the files, then the final state, labels.csv's
``review`` column and dataset.json (numTraining counts labelsTr). A crash at any point leaves each file
whole (old or new), and the case marked as interrupted in the queue, to redo.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..metrics import dice
from ..outputs import STAGING_FOLDER, replacing, write_image, write_text
from ..weak.export import case_paths, read_dataset_json, same_geometry, write_dataset_json
from .queue import ReviewDataset, open_dataset
from .seg import write_accepted_seg
from ..review_state import (ACCEPTED, ACCEPTING, EXCLUDED, EXCLUDING, excluded_paths, history_folder,
                    pseudo_path, read_states, review_column, set_state)


def _dataset(dataset: ReviewDataset | str | Path) -> ReviewDataset:
    return dataset if isinstance(dataset, ReviewDataset) else open_dataset(dataset)


def read_case_image(path: Path) -> sitk.Image:
    """The image as ``medclipsam label`` writes it into imagesTr (a one-slice volume is 2D)."""
    from ..imageio import read_volume

    return read_volume(path).reference


def label_on_grid(label: np.ndarray | sitk.Image, reference: sitk.Image, case: str) -> sitk.Image:
    """The reviewer's label as a 0/1 uint8 image with exactly the reference image's geometry.

    An array is in (k, j, i) order (Slicer's and the engine's); a 2D image's label may come as one slice
    (1, H, W). An image must already lie on the reference grid."""
    if isinstance(label, sitk.Image):
        if not same_geometry(label, reference):
            raise InputError(f"Case '{case}': the label's size, spacing, origin or direction differs from the image's; "
                             "export the segment on the case's image grid.")
        label = sitk.GetArrayFromImage(label)
    array = np.asarray(label)
    expected = sitk.GetArrayViewFromImage(reference).shape
    if reference.GetDimension() == 2 and array.shape == (1, *expected):
        array = array[0]
    if array.shape != expected:
        raise InputError(f"Case '{case}': the label has shape {array.shape} but its image has {expected}; export the "
                         "segment on the case's image grid.")
    image = sitk.GetImageFromArray((array > 0).astype(np.uint8))
    image.CopyInformation(reference)
    return image


def _copy_atomically(source: Path, target: Path, staging: Path) -> None:
    """A byte copy of ``source`` that appears at ``target`` whole or not at all."""
    with replacing(target, overwrite=True, staging=staging) as temp:
        shutil.copyfile(source, temp)


def _history_name(dataset: Path, name: str) -> Path:
    folder = history_folder(dataset)
    number = 1
    while (folder / f"{number:03d}_{name}").exists():
        number += 1
    return folder / f"{number:03d}_{name}"


def _keep_aside(dataset: Path, path: Path) -> None:
    """Move a file that is in the way into the history folder (never delete it)."""
    if path.exists():
        target = _history_name(dataset, path.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)


def _move(dataset: Path, source: Path, target: Path) -> None:
    if source.exists():
        _keep_aside(dataset, target)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)


def accept_case(dataset: ReviewDataset | str | Path, case: str, label: np.ndarray | sitk.Image) -> dict[str, Any]:
    """Write the reviewer's label for ``case`` into labelsTr (the image too, if the case was not in the set);
    returns the case's review entry (DSC against the pseudo-label it replaced, voxels changed)."""
    data = _dataset(dataset)
    folder, staging = data.folder, data.folder / STAGING_FOLDER
    entry = read_states(folder).get(case) or {}
    if entry.get("state") in (EXCLUDED, EXCLUDING):
        raise InputError(f"Case '{case}' is excluded from the training set; undo the exclusion before accepting it.")
    image_path, label_path = case_paths(folder, case)
    source = data.image_path(case)
    reference = read_case_image(source)
    new_label = label_on_grid(label, reference, case)
    pseudo = pseudo_path(folder, case)
    pseudo_status = entry.get("pseudo_status", data.rows[case].get("status", ""))
    set_state(folder, case, {**entry, "state": ACCEPTING, "pseudo_status": pseudo_status})
    try:
        if not pseudo.exists():
            if label_path.exists():
                _copy_atomically(label_path, pseudo, staging)
            else:  # the zero-shot run kept no label: its pseudo-label is all background
                write_image(label_on_grid(np.zeros(sitk.GetArrayViewFromImage(reference).shape), reference, case),
                            pseudo, overwrite=True, staging=staging)
        elif entry.get("state") == ACCEPTED and label_path.exists():
            _copy_atomically(label_path, _history_name(folder, label_path.name), staging)
        if source != image_path:
            write_image(reference, image_path, overwrite=False, staging=staging)
        write_image(new_label, label_path, overwrite=True, staging=staging)
    finally:
        _remove_if_empty(staging)
    seg = write_accepted_seg(folder, case, data.rows[case], new_label, data.label_name)  # DICOM cases only
    before = sitk.GetArrayFromImage(sitk.ReadImage(str(pseudo))) > 0
    after = sitk.GetArrayViewFromImage(new_label) > 0
    changed = int(np.count_nonzero(before != after))
    accepted = set_state(folder, case, {"state": ACCEPTED, "pseudo_status": pseudo_status, "changed": changed > 0,
                                        "changed_voxels": changed, "dsc": round(dice(before, after), 6),
                                        "pseudo_voxels": int(before.sum()), "accepted_voxels": int(after.sum()),
                                        **seg})
    _refresh(data)
    return accepted


def exclude_case(dataset: ReviewDataset | str | Path, case: str) -> dict[str, Any]:
    """Move the case out of the training set (kept in ``medclipsam_review/excluded/``)."""
    data = _dataset(dataset)
    folder = data.folder
    data.row(case)  # a case not in labels.csv is a one-line error; one whose image is gone may be excluded
    entry = read_states(folder).get(case)
    if entry is not None and entry.get("state") == EXCLUDED:
        raise InputError(f"Case '{case}' is already excluded; 'Undo exclude' puts it back.")
    before = entry.get("before") if entry is not None and entry.get("state") == EXCLUDING else entry
    set_state(folder, case, {"state": EXCLUDING, "before": before})
    image_path, label_path = case_paths(folder, case)
    kept_image, kept_label = excluded_paths(folder, case)
    _move(folder, label_path, kept_label)  # the label first: dataset.json counts labels, and none is left alone
    _move(folder, image_path, kept_image)
    excluded = set_state(folder, case, {"state": EXCLUDED, "before": before})
    _refresh(data)
    return excluded


def undo_exclude(dataset: ReviewDataset | str | Path, case: str) -> dict[str, Any] | None:
    """Put an excluded case back into the training set, in the review state it had before."""
    data = _dataset(dataset)
    folder = data.folder
    entry = read_states(folder).get(case)
    if entry is None or entry.get("state") not in (EXCLUDED, EXCLUDING):
        raise InputError(f"Case '{case}' is not excluded; there is nothing to undo.")
    image_path, label_path = case_paths(folder, case)
    kept_image, kept_label = excluded_paths(folder, case)
    if kept_label.exists() and label_path.exists():
        raise InputError(f"Case '{case}' has a label in labelsTr again ({label_path}) and another kept aside "
                         f"({kept_label}); move one of them away by hand, then undo again.")
    _move(folder, kept_image, image_path)  # the image first: a label in labelsTr always has its image
    _move(folder, kept_label, label_path)
    restored = set_state(folder, case, entry.get("before"))
    _refresh(data)
    return restored


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def _refresh(data: ReviewDataset) -> None:
    """labels.csv's review column and dataset.json's numTraining from the state and the files on disk."""
    update_labels_csv(data.folder)
    current = read_dataset_json(data.folder)
    if current is not None:
        modality = current.get("channel_names", {}).get("0", "MRI")
        write_dataset_json(data.folder, data.label_name, modality)


def update_labels_csv(folder: Path) -> None:
    """Rewrite labels.csv (atomically) with each case's ``review`` column."""
    path = Path(folder) / "labels.csv"
    rows = list(csv.DictReader(path.read_text(encoding="utf-8-sig").splitlines()))
    fields = list(rows[0]) if rows else ["case", "status"]
    if "review" not in fields:
        fields.append("review")
    states = read_states(folder)
    for row in rows:
        row["review"] = review_column(states.get(row.get("case", "")))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, table.getvalue(), overwrite=True)
