"""Scoring a folder of predicted masks (evaluate --predictions) and the paper's 2D NSD convention."""
import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import disk_image, disk_mask
from MedCLIPSAMLib.errors import InputError
from MedCLIPSAMLib.metrics import dice, nsd_2d
from MedCLIPSAMLib.weak.score import prediction_files, score_predictions


def png(path, array) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.uint8)), str(path))


@pytest.fixture
def cases(tmp_path):
    data, predictions = tmp_path / "data", tmp_path / "pred"
    data.mkdir()
    predictions.mkdir()
    for i in range(3):
        png(data / f"c{i}.png", disk_image(48, 48, (24, 24), 10, seed=i))
        png(data / f"c{i}_mask.png", disk_mask(48, 48, (24, 24), 10) * 255)
    png(predictions / "c0_mask.png", disk_mask(48, 48, (24, 24), 10) * 255)            # perfect
    sitk.WriteImage(sitk.GetImageFromArray(disk_mask(48, 48, (24, 27), 10).astype(np.uint8)[None]),
                    str(predictions / "c1.nii.gz"))                                    # nnU-Net's name, shifted
    png(predictions / "c1_entropy.png", np.zeros((48, 48)))                             # not a mask
    (predictions / "uncertainty.csv").write_text("case,mean_entropy_bits,foreground_entropy_bits\nc1,0.25,0.5\n")
    return data, predictions


def test_predictions_are_matched_by_case_and_a_missing_one_gets_its_own_row(cases, tmp_path):
    data, predictions = cases
    assert sorted(prediction_files(predictions)) == ["c0", "c1"]
    summary = score_predictions(data, predictions, tmp_path / "out")
    with (tmp_path / "out" / "metrics.csv").open() as handle:
        rows = {r["case"]: r for r in csv.DictReader(handle)}
    assert rows["c0"]["status"] == "scored" and float(rows["c0"]["dsc"]) == 1.0
    expected = dice(disk_mask(48, 48, (24, 27), 10), disk_mask(48, 48, (24, 24), 10))
    assert float(rows["c1"]["dsc"]) == pytest.approx(expected, abs=1e-5) and rows["c1"]["mean_entropy_bits"] == "0.25"
    assert rows["c2"]["status"] == "missing prediction" and rows["c2"]["dsc"] == ""
    assert (summary["scored"], summary["missing"]) == (2, 1)
    assert summary["dsc_mean"] == pytest.approx((1.0 + expected) / 2, abs=1e-5)
    assert summary["mean_entropy_bits"] == 0.25
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["nsd_convention"] == "ours"
    with pytest.raises(InputError, match="exists"):
        score_predictions(data, predictions, tmp_path / "out")


def test_the_papers_2d_nsd_counts_area_not_boundary():
    truth = disk_mask(64, 64, (32, 32), 12)
    from scipy import ndimage

    grown = ndimage.binary_dilation(truth, iterations=5)  # every boundary pixel 5 px off: outside a 2 px tolerance
    assert nsd_2d(grown, truth, 2.0, "ours") == 0.0
    assert nsd_2d(grown, truth, 2.0, "paper") > 0.6
    assert nsd_2d(truth, truth, 2.0, "paper") == nsd_2d(truth, truth, 2.0, "ours") == 1.0


def test_evaluate_predictions_command(cases, tmp_path, capsys):
    from MedCLIPSAMLib.cli import main

    data, predictions = cases
    out = tmp_path / "scored"
    assert main(["evaluate", str(data), "--predictions", str(predictions), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "2 of 3 cases scored, 1 without a prediction" in text and "mean entropy 0.2500 bits" in text
    assert main(["evaluate", str(data), "--predictions", str(predictions), "--out", str(out),
                 "--nsd-convention", "paper", "--overwrite"]) == 0
    assert json.loads((out / "summary.json").read_text())["nsd_convention"] == "paper"
    assert main(["evaluate", str(data), "--predictions", str(tmp_path / "nowhere"), "--out",
                 str(tmp_path / "o2")]) == 3
    assert "does not exist" in capsys.readouterr().err


def test_options_that_do_not_apply_to_predictions_are_refused(cases, tmp_path, capsys):
    from MedCLIPSAMLib.cli import main

    data, predictions = cases
    for extra in (["--resume"], ["--grow", "0.2"], ["--limit", "1"]):
        assert main(["evaluate", str(data), "--predictions", str(predictions), "--out", str(tmp_path / "x"),
                     *extra]) == 2
        assert f"{extra[0]} does not apply to --predictions" in capsys.readouterr().err
