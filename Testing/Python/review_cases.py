"""A small dataset as ``medclipsam label`` leaves it (plus an nnunet-predict folder), built directly with SimpleITK.

Images are anisotropic and obliquely oriented, so any geometry slip shows. Cases (zero-shot status, score):
a_high added 0.9, b_low added 0.1, c_mid added 0.5, d_empty empty, e_failed failed (image readable),
f_lost failed (image gone), g_lowscore low-score 0.05. Predictions: mean entropy a_high 0.30, b_low 0.20,
c_mid 0.10, with an entropy map for a_high.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedCLIPSAMLib.weak.export import write_dataset_json
from MedCLIPSAMLib.weak.label import CSV_FIELDS

SHAPE = (5, 16, 20)  # (z, y, x)
LABEL_NAME = "brain tumor"
CASES = {"a_high": ("added", 0.9), "b_low": ("added", 0.1), "c_mid": ("added", 0.5), "d_empty": ("empty", 0.02),
         "e_failed": ("failed", 0.0), "f_lost": ("failed", 0.0), "g_lowscore": ("low-score", 0.05)}
ENTROPY = {"a_high": 0.30, "b_low": 0.20, "c_mid": 0.10}


def oblique(array: np.ndarray, seed: int) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.9, 3.0))
    image.SetOrigin((5.0 + seed, -3.0, 2.0))
    a = np.deg2rad(25)
    image.SetDirection((np.cos(a), 0, np.sin(a), 0, 1, 0, -np.sin(a), 0, np.cos(a)))
    return image


def image_array(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (100 + 20 * rng.standard_normal(SHAPE)).astype(np.int16)


def pseudo_label(seed: int) -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    label[1:4, 4 + seed % 3:10, 5:12 + seed % 4] = 1
    return label


def make_dataset(root: Path, predictions: bool = True) -> Path:
    folder = root / "raw" / "Dataset007_Vol"
    cohort = root / "cohort"
    for sub in (folder / "imagesTr", folder / "labelsTr", folder / "medclipsam_labels", cohort):
        sub.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed, (case, (status, score)) in enumerate(CASES.items()):
        source = cohort / f"{case}.nrrd"
        image = oblique(image_array(seed), seed)
        if case != "f_lost":
            sitk.WriteImage(image, str(source))
        if status == "added":
            sitk.WriteImage(image, str(folder / "imagesTr" / f"{case}_0000.nii.gz"))
            label = sitk.GetImageFromArray(pseudo_label(seed))
            label.CopyInformation(image)
            sitk.WriteImage(label, str(folder / "labelsTr" / f"{case}.nii.gz"))
        record = {"case": case, "status": status, "reason": "model error" if status == "failed" else "",
                  "score": score, "prompt": LABEL_NAME, "image": str(source), "settings_hash": "same"}
        (folder / "medclipsam_labels" / f"{case}.json").write_text(json.dumps(record))
        rows.append(record)
    with (folder / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f for f in CSV_FIELDS if f != "review"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    write_dataset_json(folder, LABEL_NAME, "MRI")
    if predictions:
        make_predictions(root / "predictions", folder)
    return folder


def make_predictions(out: Path, folder: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "uncertainty.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "checkpoints", "mean_entropy_bits"])
        for case, value in ENTROPY.items():
            writer.writerow([case, 6, value])
    reference = sitk.ReadImage(str(folder / "imagesTr" / "a_high_0000.nii.gz"))
    values = np.zeros(SHAPE, np.float32)
    values[2, 12:15, 15:19] = 0.9  # a hot spot away from the label
    entropy = sitk.GetImageFromArray(values)
    entropy.CopyInformation(reference)
    sitk.WriteImage(entropy, str(out / "a_high_entropy.nii.gz"))
    return out


def read_label(folder: Path, case: str) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / f"{case}.nii.gz")))


def labels_csv(folder: Path) -> dict[str, dict[str, str]]:
    with (folder / "labels.csv").open() as handle:
        return {row["case"]: row for row in csv.DictReader(handle)}


def num_training(folder: Path) -> int:
    return json.loads((folder / "dataset.json").read_text())["numTraining"]
