"""Review queue on disk: ordering, accept / exclude / undo, crash safety, label interplay, review-status."""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from MedCLIPSAMLib.cli import main
from MedCLIPSAMLib.errors import InputError
from MedCLIPSAMLib.metrics import dice
from MedCLIPSAMLib.review.actions import accept_case, exclude_case, undo_exclude
from MedCLIPSAMLib.review.queue import next_case, open_dataset, upcoming
from MedCLIPSAMLib.review_state import excluded_paths, pseudo_path, read_states
from review_cases import SHAPE, labels_csv, make_dataset, num_training, pseudo_label, read_label

ZERO_SHOT_ORDER = ["e_failed", "f_lost", "d_empty", "g_lowscore", "b_low", "c_mid", "a_high"]
ENTROPY_ORDER = ["e_failed", "f_lost", "d_empty", "a_high", "b_low", "c_mid", "g_lowscore"]


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path)


def edited(seed: int) -> np.ndarray:
    """The pseudo-label with a slab added and a corner erased, as a reviewer might."""
    label = pseudo_label(seed)
    label[3, 10:14, 2:6] = 1
    label[1, 4:6, 5:8] = 0
    return label


def case_order(folder, predictions=None):
    return [item.case for item in open_dataset(folder, predictions).queue()]


def test_queue_orders_missing_labels_first_then_lowest_score(dataset):
    assert case_order(dataset) == ZERO_SHOT_ORDER
    queue = open_dataset(dataset).queue()
    assert queue[0].describe() == "e_failed: failed (model error)"
    assert queue[-1].describe() == "a_high: score 0.900, added"
    assert next_case(queue).case == "e_failed"
    assert next_case(queue, "e_failed").case == "f_lost" and next_case(queue, "a_high").case == "e_failed"


def test_queue_orders_by_highest_entropy_when_predictions_are_given(dataset):
    order = case_order(dataset, dataset.parents[1] / "predictions")
    assert order == ENTROPY_ORDER, "unpredicted cases follow the predicted ones"
    item = open_dataset(dataset, dataset.parents[1] / "predictions").queue()[3]
    assert item.describe() == "a_high: entropy 0.300 bits, score 0.900, added"


def test_reviewed_cases_go_last_marked_and_the_queue_survives_reopening(dataset):
    order = case_order(dataset)
    accept_case(dataset, "b_low", edited(1))
    after_accept = upcoming(open_dataset(dataset).queue(), "b_low", order)
    assert [i.case for i in after_accept][:2] == ["c_mid", "a_high"], "Next goes on from where b_low stood"
    accept_case(dataset, "a_high", read_label(dataset, "a_high"))
    exclude_case(dataset, "e_failed")
    queue = open_dataset(dataset).queue()  # a fresh read, as after restarting Slicer
    assert [i.case for i in queue] == ["f_lost", "d_empty", "g_lowscore", "c_mid", "a_high", "b_low", "e_failed"]
    assert [i.reviewed for i in queue] == [False] * 4 + [True] * 3
    assert queue[-3].describe() == "[reviewer-approved] a_high, DSC 1.000 vs pseudo-label"
    assert queue[-2].describe().startswith("[reviewer-edited] b_low, DSC 0.")
    assert queue[-1].describe() == "[excluded] e_failed"
    assert next_case(queue, "c_mid").case == "f_lost", "reviewed cases are never offered again"


def test_accept_after_an_edit_writes_the_label_on_the_image_grid_and_keeps_the_pseudo_label(dataset):
    original = (dataset / "labelsTr" / "b_low.nii.gz").read_bytes()
    entry = accept_case(dataset, "b_low", edited(1))
    image = sitk.ReadImage(str(dataset / "imagesTr" / "b_low_0000.nii.gz"))
    label = sitk.ReadImage(str(dataset / "labelsTr" / "b_low.nii.gz"))
    assert label.GetOrigin() == image.GetOrigin() and label.GetSpacing() == image.GetSpacing()
    assert label.GetDirection() == image.GetDirection() and label.GetSize() == image.GetSize()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), edited(1))
    assert pseudo_path(dataset, "b_low").read_bytes() == original, "the pseudo-label is kept, byte for byte"
    assert not any(p.name.startswith(".") for p in (dataset / "labelsTr").iterdir())
    assert entry["state"] == "accepted" and entry["changed"]
    assert entry["dsc"] == pytest.approx(dice(pseudo_label(1), edited(1)), abs=1e-6)
    assert entry["changed_voxels"] == int((pseudo_label(1) != edited(1)).sum())
    assert labels_csv(dataset)["b_low"]["review"] == "reviewer-edited"
    assert labels_csv(dataset)["c_mid"]["review"] == "" and labels_csv(dataset)["b_low"]["score"] == "0.1"
    assert num_training(dataset) == 3 and not (dataset / ".medclipsam_tmp").exists()
    # a second accept keeps the first pseudo-label and moves the earlier accepted label to the history
    accept_case(dataset, "b_low", pseudo_label(1))
    assert pseudo_path(dataset, "b_low").read_bytes() == original
    (kept,) = (dataset / "medclipsam_review" / "history").iterdir()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(kept))), edited(1))
    assert read_states(dataset)["b_low"]["changed"] is False
    assert labels_csv(dataset)["b_low"]["review"] == "reviewer-approved"


def test_accepting_a_case_the_zero_shot_run_left_empty_adds_it_to_the_training_set(dataset):
    drawn = np.zeros(SHAPE, np.uint8)
    drawn[2, 3:8, 3:9] = 1
    entry = accept_case(dataset, "d_empty", drawn)
    source = sitk.ReadImage(str(dataset.parents[1] / "cohort" / "d_empty.nrrd"))
    image = sitk.ReadImage(str(dataset / "imagesTr" / "d_empty_0000.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(source))
    assert image.GetDirection() == pytest.approx(source.GetDirection())
    np.testing.assert_array_equal(read_label(dataset, "d_empty"), drawn)
    assert not sitk.GetArrayFromImage(sitk.ReadImage(str(pseudo_path(dataset, "d_empty")))).any()
    assert entry["dsc"] == 0.0 and entry["pseudo_status"] == "empty"
    assert num_training(dataset) == 4


def test_exclude_moves_the_case_out_and_undo_puts_it_back(dataset):
    image, label = dataset / "imagesTr" / "c_mid_0000.nii.gz", dataset / "labelsTr" / "c_mid.nii.gz"
    contents = image.read_bytes(), label.read_bytes()
    exclude_case(dataset, "c_mid")
    kept_image, kept_label = excluded_paths(dataset, "c_mid")
    assert not image.exists() and not label.exists()
    assert (kept_image.read_bytes(), kept_label.read_bytes()) == contents
    assert num_training(dataset) == 2 and labels_csv(dataset)["c_mid"]["review"] == "excluded"
    with pytest.raises(InputError, match="already excluded"):
        exclude_case(dataset, "c_mid")
    with pytest.raises(InputError, match="undo the exclusion"):
        accept_case(dataset, "c_mid", pseudo_label(2))
    undo_exclude(dataset, "c_mid")
    assert (image.read_bytes(), label.read_bytes()) == contents and not kept_label.exists()
    assert num_training(dataset) == 3 and "c_mid" not in read_states(dataset)
    assert labels_csv(dataset)["c_mid"]["review"] == ""
    with pytest.raises(InputError, match="not excluded"):
        undo_exclude(dataset, "c_mid")
    # an accepted case excluded and restored is accepted again, with its accepted label
    accept_case(dataset, "a_high", edited(0))
    exclude_case(dataset, "a_high")
    assert num_training(dataset) == 2
    undo_exclude(dataset, "a_high")
    assert read_states(dataset)["a_high"]["state"] == "accepted" and num_training(dataset) == 3
    np.testing.assert_array_equal(read_label(dataset, "a_high"), edited(0))


def test_excluding_a_case_without_a_label_keeps_it_out_of_label_runs(dataset):
    exclude_case(dataset, "g_lowscore")
    assert num_training(dataset) == 3 and read_states(dataset)["g_lowscore"]["state"] == "excluded"


@pytest.mark.parametrize("failing_write", [0, 1, 2, 3])
def test_a_crash_between_writes_leaves_the_old_or_the_new_label_whole(dataset, monkeypatch, failing_write):
    """os.replace fails on its n-th call (the temporary file is written by then): the intent, the pseudo copy,
    the label, the final state."""
    old = read_label(dataset, "b_low")
    real_replace, calls = os.replace, []

    def crashing_replace(source, target):
        calls.append(target)
        if len(calls) - 1 == failing_write:
            raise OSError("power cut")
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(OSError, match="power cut"):
        accept_case(dataset, "b_low", edited(1))
    monkeypatch.setattr(os, "replace", real_replace)
    label = read_label(dataset, "b_low")  # always readable: never a partial file
    assert np.array_equal(label, old) or np.array_equal(label, edited(1))
    assert np.array_equal(label, edited(1)) == (failing_write >= 3)
    assert not any(p.name.startswith(".") for p in (dataset / "labelsTr").iterdir())
    if pseudo_path(dataset, "b_low").exists():
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(pseudo_path(dataset, "b_low")))),
                                      old)
    state_file = dataset / "medclipsam_review.json"
    assert state_file.exists() == (failing_write > 0) and (failing_write == 0 or json.loads(state_file.read_text()))
    item = next(i for i in open_dataset(dataset).queue() if i.case == "b_low")
    assert item.state == ("pending" if failing_write == 0 else "accepting")
    if failing_write:
        assert open_dataset(dataset).queue()[0].case == "b_low", "an interrupted review comes first"
    accept_case(dataset, "b_low", edited(1))  # redone after the crash
    np.testing.assert_array_equal(read_label(dataset, "b_low"), edited(1))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(pseudo_path(dataset, "b_low")))), old)


def test_bad_inputs_are_one_line_errors_naming_what_to_do(dataset, tmp_path, capsys):
    with pytest.raises(InputError, match="does not exist"):
        open_dataset(tmp_path / "nowhere")
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match="not an nnU-Net raw dataset"):
        open_dataset(tmp_path / "plain")
    (dataset / "labels.csv").rename(dataset / "labels.old")
    with pytest.raises(InputError, match="no labels.csv; run 'medclipsam label'"):
        open_dataset(dataset)
    (dataset / "labels.old").rename(dataset / "labels.csv")
    with pytest.raises(InputError, match="has no uncertainty.csv"):
        open_dataset(dataset, tmp_path / "plain")
    with pytest.raises(InputError, match="Case 'f_lost': its image is missing"):
        accept_case(dataset, "f_lost", np.zeros(SHAPE))
    with pytest.raises(InputError, match="has shape"):
        accept_case(dataset, "b_low", np.zeros((2, 3, 4)))
    assert "b_low" not in read_states(dataset), "a refused accept records nothing"
    with pytest.raises(InputError, match="not in .*labels.csv"):
        accept_case(dataset, "zz", np.zeros(SHAPE))
    assert main(["review-status", str(tmp_path / "plain")]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_label_leaves_reviewed_cases_alone_and_finalize_does_not_readd_excluded_ones(dataset):
    from MedCLIPSAMLib.weak.label import LabelCase, LabelJob, decide, finalize

    accept_case(dataset, "b_low", edited(1))
    accept_case(dataset, "e_failed", edited(4))  # a failed case is normally redone by every label run
    exclude_case(dataset, "c_mid")
    job = LabelJob(str(dataset), "brain tumor", {}, overwrite=True)
    for case in ("b_low", "e_failed", "c_mid"):
        note = decide(LabelCase(case, "x", "brain tumor"), job)
        assert note and "review queue" in note and "even with --overwrite" in note
    assert decide(LabelCase("a_high", "x", "brain tumor"), job) is None  # pending: --overwrite still redoes it
    cases = [LabelCase(case, "x", "brain tumor") for case in labels_csv(dataset)]
    summary = finalize(cases, job)
    assert summary["numTraining"] == 3 == num_training(dataset)  # a_high, b_low, e_failed; not c_mid
    rows = labels_csv(dataset)
    assert rows["b_low"]["review"] == "reviewer-edited" and rows["c_mid"]["review"] == "excluded"


def test_review_status_counts_states_and_measures_the_reviewer_changes(dataset, tmp_path, capsys):
    accept_case(dataset, "b_low", edited(1))
    accept_case(dataset, "a_high", read_label(dataset, "a_high"))
    exclude_case(dataset, "c_mid")
    out = tmp_path / "status.json"
    assert main(["review-status", str(dataset), "--json", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("Dataset007_Vol: 7 cases: 4 pending (1 empty, 2 failed, 1 low-score), 2 accepted, "
                        "1 excluded; 2 in the training set (dataset.json)")
    b_dsc = dice(pseudo_label(1), edited(1))
    changed = int((pseudo_label(1) != edited(1)).sum())
    assert lines[1] == (f"labels changed by the reviewer: 1 of 2 accepted ({changed} voxels); DSC pseudo vs "
                        f"accepted: mean {(1 + b_dsc) / 2:.3f}, median {(1 + b_dsc) / 2:.3f}, min {b_dsc:.3f}")
    summary = json.loads(out.read_text())
    assert summary["states"] == {"pending": 4, "accepted": 2, "excluded": 1, "interrupted": 0}
    agreement = summary["pseudo_vs_accepted"]
    assert agreement["changed"] == 1 and agreement["unchanged"] == 1
    assert agreement["dsc_min"] == pytest.approx(b_dsc, abs=1e-6)
    assert {c["case"]: c["dsc"] for c in summary["per_case"]} == {"a_high": 1.0, "b_low": pytest.approx(b_dsc)}
    assert main(["review-status", str(dataset), "--json", str(out)]) == 3
    assert "already exists" in capsys.readouterr().err
    before = (dataset / "dataset.json").read_bytes()
    for inside in (dataset / "dataset.json", dataset / "medclipsam_review.json", dataset / "summary.json"):
        assert main(["review-status", str(dataset), "--json", str(inside), "--overwrite"]) == 2
        assert "is inside" in capsys.readouterr().err
    assert (dataset / "dataset.json").read_bytes() == before and not (dataset / "summary.json").exists()


def test_a_real_label_rerun_with_overwrite_keeps_the_review(tmp_path, tiny_clip_folder, capsys):
    """End to end: `label` writes the dataset, the review accepts one case and excludes another, and
    `label --overwrite` afterwards changes neither (and dataset.json does not count the excluded case)."""
    from conftest import disk_image

    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for seed in range(2):
        array = np.stack([disk_image(48, 48, (22, 26), 9, seed=seed + z) for z in range(3)]).astype(np.int16)
        sitk.WriteImage(sitk.GetImageFromArray(array), str(cohort / f"case{seed}.nrrd"))
    argv = ["label", str(cohort), "-p", "brain tumor", "--raw", str(tmp_path / "raw"), "--dataset-id", "7", "--name",
            "Vol", "--clip-model", str(tiny_clip_folder), "--sam", "litemedsam", "--device", "cpu", "--steps", "1",
            "--samples", "1", "--refine-rounds", "0", "-q"]
    assert main(argv) == 0
    dataset = tmp_path / "raw" / "Dataset007_Vol"
    rows = labels_csv(dataset)
    added = [case for case, row in rows.items() if row["status"] == "added"]
    reviewed = np.zeros((3, 48, 48), np.uint8)
    reviewed[1, 10:20, 10:20] = 1
    accept_case(dataset, "case0", reviewed)
    exclude_case(dataset, "case1")
    capsys.readouterr()
    assert main([*argv, "--overwrite", "--beta", "0.5"]) == 0
    err = capsys.readouterr().err
    assert "note: case0: accepted in the review queue: left alone, even with --overwrite" in err
    assert "note: case1: excluded in the review queue" in err
    np.testing.assert_array_equal(read_label(dataset, "case0"), reviewed)
    assert not (dataset / "labelsTr" / "case1.nii.gz").exists()
    assert num_training(dataset) == 1 and set(added) <= {"case0", "case1"}
    assert labels_csv(dataset)["case0"]["review"] == "reviewer-edited"
    assert labels_csv(dataset)["case1"]["review"] == "excluded"


def test_a_case_whose_result_did_not_look_like_the_prompt_is_reviewed_first_of_the_labelled(dataset):
    """labels.csv's faithfulness column is an ordering key: a case under the threshold comes before lower scores."""
    import csv

    from MedCLIPSAMLib.faithfulness import UNFAITHFUL_BELOW

    rows = list(csv.DictReader((dataset / "labels.csv").read_text().splitlines()))
    for row in rows:
        row["faithfulness"] = {"a_high": f"{UNFAITHFUL_BELOW / 2:g}", "b_low": "0.6"}.get(row["case"], "")
    with (dataset / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    order = case_order(dataset)
    labelled = [case for case in ZERO_SHOT_ORDER if case not in ("e_failed", "f_lost", "d_empty")]
    assert order[:3] == ZERO_SHOT_ORDER[:3] and order[3:] == ["a_high", *[c for c in labelled if c != "a_high"]]
    described = {item.case: item.describe() for item in open_dataset(dataset).queue()}
    assert f"faithfulness {UNFAITHFUL_BELOW / 2:.2g} (result does not look like the prompt)" in described["a_high"]
    assert "faithfulness" not in described["b_low"], "only a score under the threshold is worth a mention"
