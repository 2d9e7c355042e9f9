"""`medclipsam evaluate`: case discovery, the three modes, outputs and resume."""
import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import disk_image, disk_mask
from MedCLIPSAMLib import evaluate
from MedCLIPSAMLib.cli import main
from MedCLIPSAMLib.errors import InputError
from MedCLIPSAMLib.evaluate import done_cases, find_cases, oracle_boxes

ORACLE = ["--oracle-boxes", "--sam", "litemedsam", "--device", "cpu", "--no-figures"]


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for i, center in enumerate([(40, 60), (50, 70), (45, 50)]):
        sitk.WriteImage(sitk.GetImageFromArray(disk_image(center=center, seed=i)), str(folder / f"case{i}.png"))
        mask = disk_mask(center=center).astype(np.uint8) * 255
        sitk.WriteImage(sitk.GetImageFromArray(mask), str(folder / f"case{i}_mask.png"))
    (folder / "notes.txt").write_text("not a case")
    return folder


def read_rows(out):
    with (out / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_case_discovery(tmp_path, dataset):
    assert [c.name for c in find_cases(dataset)] == ["case0", "case1", "case2"]
    (tmp_path / "vol").mkdir()
    for name in ("brain1_image.nrrd", "brain1_label.nrrd"):
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 9, 9), np.uint8)), str(tmp_path / "vol" / name))
    assert [(c.name, c.mask.name) for c in find_cases(tmp_path / "vol")] == [("brain1", "brain1_label.nrrd")]
    with pytest.raises(InputError, match="is not a folder"):
        find_cases(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="No image/mask pairs"):
        find_cases(tmp_path / "empty")


def test_oracle_boxes_per_component_and_growth():
    truth = np.zeros((2, 40, 40), bool)
    truth[1, 5:10, 5:10] = True
    truth[1, 20:30, 25:35] = True
    assert oracle_boxes(truth, 0.0) == {1: [(5, 5, 9, 9), (25, 20, 34, 29)]}
    assert oracle_boxes(truth, 0.2)[1][1] == (23, 18, 36, 31)
    assert oracle_boxes(truth, -0.1)[1][1] == (26, 21, 33, 28)  # shrunk: a box inside the target
    truth[1, 38, 2:4] = True  # a 2-pixel annotation speck gets no box of its own
    assert oracle_boxes(truth, 0.0) == {1: [(5, 5, 9, 9), (25, 20, 34, 29)]}
    only = np.zeros((1, 40, 40), bool)
    only[0, 3, 3:5] = True  # ... unless it is all there is
    assert oracle_boxes(only, 0.0) == {0: [(3, 3, 4, 3)]}


def test_oracle_mode_writes_metrics_summary_and_figures(tmp_path, dataset):
    out = tmp_path / "out"
    assert main(["evaluate", str(dataset), "--oracle-boxes", "--out", str(out), "--sam", "litemedsam",
                 "--device", "cpu", "--quiet"]) == 0
    rows = read_rows(out)
    assert [r["case"] for r in rows] == ["case0", "case1", "case2"]
    assert all(float(r["dsc"]) > 0.9 and int(r["boxes"]) == 1 and r["saliency_slices"] == "" for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["count"] == 3 and summary["mode"] == "oracle"
    assert summary["dsc_mean"] == pytest.approx(np.mean([float(r["dsc"]) for r in rows]), abs=1e-4)
    assert "torch" in summary["versions"] and summary["settings"]["sam_backend"] == "litemedsam"
    assert (out / "overlays" / "case1.png").stat().st_size > 1000 and (out / "best_worst.png").exists()


def test_results_never_go_into_the_data_folder(tmp_path, dataset, capsys):
    before = sorted(p.name for p in dataset.iterdir())
    assert main(["evaluate", str(dataset), "--oracle-boxes", "--out", str(dataset), "--quiet"]) == 2
    assert "is the data folder" in capsys.readouterr().err
    assert main(["evaluate", str(dataset), "--predictions", str(tmp_path), "--out", str(tmp_path), "--quiet"]) == 2
    assert "is the --predictions folder" in capsys.readouterr().err
    assert sorted(p.name for p in dataset.iterdir()) == before


def test_resume_skips_finished_cases_and_refuses_to_clobber(tmp_path, dataset):
    out = tmp_path / "out"
    args = ["evaluate", str(dataset), "--oracle-boxes", "--out", str(out), "--sam", "litemedsam", "--quiet",
            "--no-figures"]
    assert main(args + ["--limit", "1"]) == 0
    assert main(args) == 3  # metrics.csv exists and no --resume
    assert len(read_rows(out)) == 1
    assert main(args + ["--resume", "--refine-rounds", "0", "--grow", "0.25"]) == 2  # other settings: not comparable
    assert len(read_rows(out)) == 1
    assert main(args + ["--resume"]) == 0
    assert [r["case"] for r in read_rows(out)] == ["case0", "case1", "case2"]
    older = tmp_path / "older"  # written before the saliency_slices column existed
    older.mkdir()
    (older / "metrics.csv").write_text("case,dsc,nsd,runtime_s,boxes,prompt\ncase0,0.9,0.8,1.0,1,\n")
    with pytest.raises(InputError, match="cannot be resumed; choose another --out"):
        done_cases(older / "metrics.csv")


def test_zero_shot_and_saliency_only_modes(tmp_path, dataset, tiny_clip_folder):
    common = ["--clip-model", str(tiny_clip_folder), "--steps", "1", "--samples", "1", "--sam", "litemedsam",
              "--device", "cpu", "--quiet", "--no-figures", "--limit", "2"]
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"case0": "bright disk", "case1": "round lesion"}))
    assert main(["evaluate", str(dataset), "--prompt-json", str(prompts), "--out", str(tmp_path / "zs")] + common) == 0
    rows = read_rows(tmp_path / "zs")
    assert [r["prompt"] for r in rows] == ["bright disk", "round lesion"]
    assert all(0 <= float(r["dsc"]) <= 1 and 0 <= float(r["nsd"]) <= 1 for r in rows)
    assert [r["saliency_slices"] for r in rows] == ["1", "1"]  # a 2D image is one slice with its own map
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("a bright disk\na round bright shape\n")
    assert main(["evaluate", str(dataset), "--saliency-only", "--prompt-file", str(sentences),
                 "--out", str(tmp_path / "sal")] + common) == 0
    rows = read_rows(tmp_path / "sal")
    assert rows[0]["prompt"] == "a bright disk | a round bright shape" and int(rows[0]["boxes"]) >= 1
    assert main(["evaluate", str(dataset), "--out", str(tmp_path / "none")] + common) == 3


def test_oracle_maps_keep_the_target_at_token_resolution():
    from MedCLIPSAMLib.saliency import oracle_maps

    mask = np.zeros((1, 112, 224), bool)  # non-square: padded to 224 x 224, 16 px tokens
    mask[0, 40:72, 96:128] = True
    maps = oracle_maps(mask)
    assert maps.shape == (1, 112, 224) and maps.max() == pytest.approx(1.0, abs=0.02)
    peak = np.unravel_index(maps[0].argmax(), maps[0].shape)
    assert 40 <= peak[0] < 72 and 96 <= peak[1] < 128
    assert maps[0, :24].max() < 0.05 and maps[0, :, :80].max() < 0.05  # nothing far from the target


def test_oracle_saliency_mode_runs_the_pipeline_without_clip(tmp_path, dataset):
    out = tmp_path / "out"
    assert main(["evaluate", str(dataset), "--oracle-saliency", "--out", str(out), "--sam", "litemedsam",
                 "--device", "cpu", "--quiet", "--no-figures"]) == 0
    rows = read_rows(out)
    assert len(rows) == 3 and all(float(r["dsc"]) > 0.85 and int(r["boxes"]) == 1 for r in rows)
    assert {r["saliency_slices"] for r in rows} == {"1"}
    assert json.loads((out / "summary.json").read_text())["mode"] == "oracle-saliency"


def test_resume_of_an_empty_metrics_file_starts_it_with_a_header(tmp_path, dataset, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.csv").write_bytes(b"")
    assert main(["evaluate", str(dataset), "--out", str(out), "--resume", "-q"] + ORACLE) == 0
    assert [r["case"] for r in read_rows(out)] == ["case0", "case1", "case2"]
    assert "oracle: 3 cases  DSC 0." in capsys.readouterr().out


def test_resume_of_a_metrics_file_with_a_word_for_a_number_names_the_line(tmp_path, dataset, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.csv").write_text("case,dsc,nsd,runtime_s,boxes,saliency_slices,prompt\n"
                                     "case0,0.9,0.8,1.0,1,,\ncase1,good,0.8,1.0,1,,\n")
    assert main(["evaluate", str(dataset), "--out", str(out), "--resume", "-q"] + ORACLE) == 3
    err = capsys.readouterr().err
    assert "line 3 (case 'case1') has dsc 'good', not a number" in err and "Traceback" not in err


def test_an_image_without_a_mask_is_named_not_skipped_silently(tmp_path, dataset, capsys):
    sitk.WriteImage(sitk.GetImageFromArray(disk_image()), str(dataset / "orphan.png"))
    assert main(["evaluate", str(dataset), "--out", str(tmp_path / "out"), "-q", "--limit", "1"] + ORACLE) == 0
    assert "note: 1 image(s) have no mask and are skipped: orphan.png" in capsys.readouterr().err


@pytest.mark.parametrize("options, message", [
    (["--grow", "-1"], "--grow must be between -0.4 and 2 (got -1)"),
    (["--limit", "0"], "--limit must be at least 1 (got 0)"),
    (["--saliency-only", "--prompt", "x", "--grow", "0.2"], "--grow applies to --oracle-boxes only"),
    (["--oracle-boxes", "--resume", "--overwrite"], "choose one"),
])
def test_option_errors_exit_2_before_any_case(tmp_path, dataset, capsys, options, message):
    code = main(["evaluate", str(dataset), "--out", str(tmp_path / "out"), "-q", "--device", "cpu"] + options)
    assert code == 2 and message in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_inputs_are_checked_before_the_first_case(tmp_path, dataset, capsys, monkeypatch):
    monkeypatch.setattr(evaluate, "evaluate_case", lambda *a: pytest.fail("a case ran before the checks"))
    sitk.WriteImage(sitk.GetImageFromArray(disk_mask(50, 60).astype(np.uint8)), str(dataset / "case2_mask.png"))
    assert main(["evaluate", str(dataset), "--out", str(tmp_path / "out"), "-q"] + ORACLE) == 3
    assert "Case 'case2': the mask 'case2_mask.png' has size (60, 50)" in capsys.readouterr().err
    prompts = tmp_path / "prompts.json"
    prompts.write_text('{"case0": "disk",')
    assert main(["evaluate", str(dataset), "--prompt-json", str(prompts), "--out", str(tmp_path / "zs"), "-q"]) == 3
    assert "is not valid JSON" in capsys.readouterr().err
    prompts.write_text('{"case0": "disk"}')
    assert main(["evaluate", str(dataset), "--prompt-json", str(prompts), "--out", str(tmp_path / "zs"), "-q"]) == 3
    assert "No prompt for case 'case1'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "zs").exists()


def test_ctrl_c_says_what_is_on_disk_and_resume_finishes(tmp_path, dataset, capsys, monkeypatch):
    real = evaluate.evaluate_case

    def stopped_at_case1(case, *args):
        if case.name == "case1":
            raise KeyboardInterrupt
        return real(case, *args)

    monkeypatch.setattr(evaluate, "evaluate_case", stopped_at_case1)
    args = ["evaluate", str(dataset), "--out", str(tmp_path / "out"), "-q"] + ORACLE[:-1]
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "interrupted after 1 of 3 cases" in err and "run the same command with --resume" in err
    assert "nothing was written" not in err
    assert [r["case"] for r in read_rows(tmp_path / "out")] == ["case0"]
    assert (tmp_path / "out" / "overlays" / "case0.png").exists()
    monkeypatch.setattr(evaluate, "evaluate_case", real)
    assert main(args + ["--resume"]) == 0
    assert [r["case"] for r in read_rows(tmp_path / "out")] == ["case0", "case1", "case2"]


def test_the_progress_bar_counts_cases(tmp_path, dataset, capsys):
    assert main(["evaluate", str(dataset), "--out", str(tmp_path / "out"), "--limit", "1"] + ORACLE) == 0
    err = capsys.readouterr().err
    assert "evaluate:" in err and "case/s" in err and "slice/s" not in err


def test_overwrite_starts_over(tmp_path, dataset):
    out = tmp_path / "out"
    assert main(["evaluate", str(dataset), "--out", str(out), "-q", "--limit", "2"] + ORACLE) == 0
    assert main(["evaluate", str(dataset), "--out", str(out), "-q", "--limit", "1", "--overwrite"] + ORACLE) == 0
    assert [r["case"] for r in read_rows(out)] == ["case0"]


def test_a_paper_nsd_run_from_before_surfels_is_not_resumed(tmp_path, dataset, capsys):
    """Rows of the old boundary-pixel paper NSD and of the surfel one must not be mixed in one metrics.csv."""
    out = tmp_path / "out"
    args = ["evaluate", str(dataset), "--oracle-boxes", "--out", str(out), "--sam", "litemedsam", "--quiet",
            "--no-figures", "--nsd-convention", "paper"]
    assert main(args + ["--limit", "1"]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["nsd_convention"] == "paper (surfels)"
    record["nsd_convention"] = "paper"  # as a run made before the surfel method recorded it
    (out / "run.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert main(args + ["--resume"]) == 2
    assert "nsd_convention 'paper' -> 'paper (surfels)'" in capsys.readouterr().err
    assert len(read_rows(out)) == 1
