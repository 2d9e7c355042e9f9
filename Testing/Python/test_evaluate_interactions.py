"""`medclipsam evaluate --simulate-interactions N`: the curve in summary.json and one column per step."""
import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import disk_image, disk_mask
from MedCLIPSAMLib.cli import main


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for i, center in enumerate([(40, 60), (50, 70)]):
        sitk.WriteImage(sitk.GetImageFromArray(disk_image(center=center, seed=i)), str(folder / f"case{i}.png"))
        mask = disk_mask(center=center).astype(np.uint8) * 255
        sitk.WriteImage(sitk.GetImageFromArray(mask), str(folder / f"case{i}_mask.png"))
    return folder


def test_simulated_interactions_from_an_empty_mask(tmp_path, dataset, capsys):
    out = tmp_path / "out"
    code = main(["evaluate", str(dataset), "--out", str(out), "--simulate-interactions", "3", "--sam", "litemedsam",
                 "--device", "cpu", "--no-figures", "-q"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    steps = summary["interactions"]
    assert [s["n"] for s in steps] == [1, 2, 3] and summary["mode"] == "interactive"
    assert steps[0]["dsc_mean"] > 0.9 and all(0 <= s["nsd_mean"] <= 1 for s in steps)
    with (out / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["case"] for r in rows] == ["case0", "case1"]
    assert {"dsc_1", "dsc_2", "dsc_3", "nsd_1", "nsd_2", "nsd_3"} <= set(rows[0])
    assert float(rows[0]["dsc"]) == float(rows[0]["dsc_3"])  # the final columns are the last step's
    assert np.mean([float(r["dsc_1"]) for r in rows]) == pytest.approx(steps[0]["dsc_mean"])
    curves = [[float(r[f"dsc_{i}"]) for i in (1, 2, 3)] for r in rows]
    expected = np.mean([next((i for i, v in enumerate(c, 1) if v >= 0.9), 3) for c in curves])
    assert summary["noc_90"] == pytest.approx(expected) and 1 <= summary["noc_85"] <= summary["noc_90"] <= 3
    assert summary["noc_85_failed"] == sum(max(c) < 0.85 for c in curves)
    printed = capsys.readouterr().out
    assert "DSC after each interaction  1:" in printed and f"NoC@90 {summary['noc_90']:.2f}" in printed


def test_click_mode_needs_simulated_interactions(tmp_path, dataset, capsys):
    code = main(["evaluate", str(dataset), "--out", str(tmp_path / "out"), "--oracle-boxes", "--click-mode", "points"])
    assert code == 2 and "--click-mode applies to --simulate-interactions only" in capsys.readouterr().err
