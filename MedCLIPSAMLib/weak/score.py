"""Score any folder of predicted masks against ground truth (`medclipsam evaluate --predictions`).

The weak-supervision comparison of the paper is two scorings of the same cases: the zero-shot
pseudo-labels and the nnU-Net trained on them. Predictions are matched to ``<case>`` by file name
(nnU-Net's ``<case>.nii.gz``, or ``<case>.png``, ``<case>_mask.png``); nnU-Net's uncertainty.csv
is joined where present. A case without a prediction gets a row saying so and is left out of the
means (and counted).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..metrics import dice, normalized_surface_dice, nsd_2d
from ..outputs import check_output, write_json, write_text

TOLERANCE_2D_PX, TOLERANCE_3D_MM = 2.0, 2.0
SKIP_SUFFIXES = ("_probability", "_entropy", "_saliency")
FIELDS = ["case", "status", "dsc", "nsd", "prediction", "foreground_voxels", "mean_entropy_bits",
          "foreground_entropy_bits"]


def prediction_files(folder: Path) -> dict[str, Path]:
    """case -> predicted mask file in ``folder`` (probability and entropy maps are not masks)."""
    from ..cases import case_id_of

    if not folder.is_dir():
        raise InputError(f"Predictions folder '{folder}' does not exist.")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix.lower() in (".csv", ".json"):
            continue
        stem = case_id_of(path.name)
        if stem.endswith(SKIP_SUFFIXES):
            continue
        for marker in ("_mask", "_label", "_seg", "_pred"):
            stem = stem.removesuffix(marker)
        found.setdefault(stem, path)
    return found


def read_uncertainty(folder: Path) -> dict[str, dict[str, str]]:
    path = folder / "uncertainty.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        return {row["case"]: row for row in csv.DictReader(handle) if row.get("case")}


def score_case(image: Path, mask: Path, prediction: Path | None, nsd_convention: str) -> dict:
    from ..imageio import read_volume

    row = {"case": None, "status": "scored", "dsc": "", "nsd": "", "prediction": str(prediction or "")}
    if prediction is None:
        row["status"] = "missing prediction"
        return row
    reference = read_volume(image)
    truth = read_volume(mask).array > 0
    predicted = read_volume(prediction).array > 0
    if predicted.shape != truth.shape:
        row["status"] = f"shape {predicted.shape} differs from the mask's {truth.shape}"
        return row
    if reference.is_2d:
        nsd = nsd_2d(predicted[0], truth[0], TOLERANCE_2D_PX, nsd_convention)
    else:
        nsd = normalized_surface_dice(predicted, truth, TOLERANCE_3D_MM, reference.spacing_zyx)
    row.update(dsc=round(dice(predicted, truth), 5), nsd=round(nsd, 5), foreground_voxels=int(predicted.sum()))
    return row


def score_predictions(data: Path, predictions: Path, out: Path, nsd_convention: str = "ours",
                      overwrite: bool = False) -> dict:
    """metrics.csv (one row per ground-truth case) and summary.json in ``out``; returns the summary."""
    from ..cases import find_cases

    cases = find_cases(Path(data))
    files = prediction_files(Path(predictions))
    uncertainty = read_uncertainty(Path(predictions))
    out = Path(out)
    for name in ("metrics.csv", "summary.json"):
        check_output(out / name, "--out", overwrite, extensions=None)
    rows = []
    for case in cases:
        row = score_case(case.image, case.mask, files.get(case.name), nsd_convention)
        row["case"] = case.name
        extra = uncertainty.get(case.name, {})
        row.update({k: extra.get(k, "") for k in ("mean_entropy_bits", "foreground_entropy_bits")})
        rows.append(row)
    scored = [r for r in rows if r["status"] == "scored"]
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "metrics.csv", table.getvalue(), overwrite)
    mean = (lambda key: float(np.mean([float(r[key]) for r in scored])) if scored else float("nan"))
    entropies = [float(r["mean_entropy_bits"]) for r in scored if r["mean_entropy_bits"] != ""]
    summary = {"cases": len(rows), "scored": len(scored), "missing": len(rows) - len(scored),
               "dsc_mean": mean("dsc"), "nsd_mean": mean("nsd"), "nsd_convention": nsd_convention,
               "mean_entropy_bits": float(np.mean(entropies)) if entropies else None,
               "data": str(data), "predictions": str(predictions)}
    write_json(out / "summary.json", summary, overwrite)
    return summary
