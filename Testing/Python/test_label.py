"""`medclipsam label`: a cohort into an nnU-Net dataset (tiny random CLIP + LiteMedSAM, synthetic cases)."""
import csv
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import disk_image
from MedCLIPSAMLib.cli import main
from MedCLIPSAMLib.errors import InputError, MedCLIPSAMError
from MedCLIPSAMLib.weak.label import (LabelCase, LabelJob, find_label_cases, label_cases, part_of, read_record,
                                      record_path)


def write_volume(path, seed: int, blank: bool = False) -> None:
    array = np.stack([disk_image(48, 48, (22, 26), 9, seed=seed + z) for z in range(3)]).astype(np.int16)
    if blank:
        array[:] = 7
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.8, 3.0))
    image.SetOrigin((seed, -5.0, 2.0))
    sitk.WriteImage(image, str(path))


@pytest.fixture
def cohort(tmp_path):
    folder = tmp_path / "cohort"
    folder.mkdir()
    for i in range(3):
        write_volume(folder / f"case {i}.nrrd", seed=i)
    write_volume(folder / "blank.nrrd", seed=9, blank=True)
    write_volume(folder / "case 0_mask.nrrd", seed=0)  # a mask beside its image is not a case
    (folder / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    return folder


def run_label(cohort, raw, tiny_clip_folder, *extra) -> int:
    return main(["label", str(cohort), "-p", "brain tumor", "--raw", str(raw), "--dataset-id", "7", "--name", "Vol",
                 "--clip-model", str(tiny_clip_folder), "--sam", "litemedsam", "--device", "cpu", "--steps", "1",
                 "--samples", "1", "--refine-rounds", "0", "-q", *extra])


def rows_of(dataset) -> dict:
    with (dataset / "labels.csv").open() as handle:
        return {row["case"]: row for row in csv.DictReader(handle)}


def test_a_folder_becomes_a_dataset_nnunet_accepts(cohort, tmp_path, tiny_clip_folder):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    raw = tmp_path / "raw"
    assert run_label(cohort, raw, tiny_clip_folder) == 0
    dataset = raw / "Dataset007_Vol"
    rows = rows_of(dataset)
    assert sorted(rows) == ["blank", "broken", "case_0", "case_1", "case_2"]
    assert rows["broken"]["status"] == "failed" and rows["broken"]["reason"]
    assert rows["blank"]["status"] == "empty" and rows["broken"]["faithfulness"] == ""
    added = [case for case, row in rows.items() if row["status"] == "added"]
    assert added == ["case_0", "case_1", "case_2"], rows
    for case in added:
        assert int(rows[case]["foreground_voxels"]) > 0 and 1 <= int(rows[case]["target_slices"]) <= 3
        assert -2.0 <= float(rows[case]["faithfulness"]) <= 2.0  # the prompt check's cosine margin, a column per case
        assert read_record(dataset, case)["faithfulness"] == pytest.approx(float(rows[case]["faithfulness"]))
        label = sitk.ReadImage(str(dataset / "labelsTr" / f"{case}.nii.gz"))
        image = sitk.ReadImage(str(dataset / "imagesTr" / f"{case}_0000.nii.gz"))
        assert label.GetSpacing() == pytest.approx(image.GetSpacing())
        assert image.GetSpacing() == pytest.approx((0.8, 0.8, 3.0))
        assert set(np.unique(sitk.GetArrayFromImage(label))) <= {0, 1}
        assert read_record(dataset, case)["settings_hash"] == rows[case]["settings_hash"]
    content = json.loads((dataset / "dataset.json").read_text())
    assert content["numTraining"] == 3 and content["labels"] == {"background": 0, "brain tumor": 1}
    assert not (dataset / ".medclipsam_tmp").exists()
    verify_dataset_integrity(str(dataset), num_processes=1)


def test_a_rerun_skips_done_cases_and_a_changed_setting_redoes_them_only_when_asked(cohort, tmp_path,
                                                                                   tiny_clip_folder, capsys):
    raw = tmp_path / "raw"
    assert run_label(cohort, raw, tiny_clip_folder) == 0
    dataset = raw / "Dataset007_Vol"
    stamps = {p.name: p.stat().st_mtime_ns for p in (dataset / "labelsTr").iterdir()}
    capsys.readouterr()
    assert run_label(cohort, raw, tiny_clip_folder) == 0
    assert "0 labelled, 1 failed, 4 skipped" in capsys.readouterr().out  # only the failed case is tried again
    assert {p.name: p.stat().st_mtime_ns for p in (dataset / "labelsTr").iterdir()} == stamps
    before = read_record(dataset, "case_1")["settings_hash"]
    assert run_label(cohort, raw, tiny_clip_folder, "--beta", "0.5") == 0
    assert read_record(dataset, "case_1")["settings_hash"] == before, "redone without --overwrite"
    assert run_label(cohort, raw, tiny_clip_folder, "--beta", "0.5", "--overwrite") == 0
    assert read_record(dataset, "case_1")["settings_hash"] != before


def test_two_parts_write_disjoint_cases_and_together_equal_one_run(cohort, tmp_path, tiny_clip_folder, capsys):
    single, split = tmp_path / "single", tmp_path / "split"
    assert run_label(cohort, single, tiny_clip_folder) == 0
    assert run_label(cohort, split, tiny_clip_folder, "--num-parts", "2", "--part-id", "1") == 0
    assert "not labelled yet" in capsys.readouterr().out
    assert not (split / "Dataset007_Vol" / "dataset.json").exists()
    assert run_label(cohort, split, tiny_clip_folder, "--num-parts", "2", "--part-id", "0") == 0
    one, two = single / "Dataset007_Vol", split / "Dataset007_Vol"
    assert json.loads((two / "dataset.json").read_text())["numTraining"] == 3
    for case in ("case_0", "case_1", "case_2"):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(one / "labelsTr" / f"{case}.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(two / "labelsTr" / f"{case}.nii.gz")))
        np.testing.assert_array_equal(a, b)
    assert {r: rows_of(two)[r]["status"] for r in rows_of(two)} == {r: rows_of(one)[r]["status"] for r in rows_of(one)}
    cases = [LabelCase(str(i), "x", "p") for i in range(5)]
    assert [c.case_id for c in part_of(cases, 2, 0)] == ["0", "2", "4"]
    with pytest.raises(MedCLIPSAMError, match="--part-id"):
        part_of(cases, 2, 2)


def test_a_case_interrupted_mid_write_is_redone_and_leaves_nothing_half_written(cohort, tmp_path, tiny_clip_folder):
    raw = tmp_path / "raw"
    assert run_label(cohort, raw, tiny_clip_folder) == 0
    dataset = raw / "Dataset007_Vol"
    record = read_record(dataset, "case_2")
    # as if the process died after renaming the image, before the label and the final record
    record_path(dataset, "case_2").write_text(json.dumps({**record, "status": "writing"}))
    (dataset / "labelsTr" / "case_2.nii.gz").unlink()
    (dataset / ".medclipsam_tmp").mkdir()
    (dataset / ".medclipsam_tmp" / "123_case_2.nii.gz").write_bytes(b"half")
    assert run_label(cohort, raw, tiny_clip_folder) == 0
    assert read_record(dataset, "case_2")["status"] == "added"
    assert (dataset / "labelsTr" / "case_2.nii.gz").is_file() and not (dataset / ".medclipsam_tmp").exists()
    assert json.loads((dataset / "dataset.json").read_text())["numTraining"] == 3


def test_cases_not_written_by_label_are_never_replaced_silently(cohort, tmp_path, tiny_clip_folder):
    raw = tmp_path / "raw"
    labels = raw / "Dataset007_Vol" / "labelsTr"
    labels.mkdir(parents=True)
    (labels / "case_1.nii.gz").write_bytes(b"a reviewer's label")
    assert run_label(cohort, raw, tiny_clip_folder) == 0
    assert (labels / "case_1.nii.gz").read_bytes() == b"a reviewer's label"
    assert read_record(raw / "Dataset007_Vol", "case_1") is None


def test_manifest_with_prompts_and_case_ids(tmp_path):
    (tmp_path / "a.nrrd").write_bytes(b"")
    manifest = tmp_path / "cases.csv"
    manifest.write_text("image,prompt,case_id\na.nrrd,liver,P001\n/abs/b.nii.gz,,P002\n")
    cases = find_label_cases(manifest, "kidney")
    assert cases == [LabelCase("P001", str(tmp_path / "a.nrrd"), "liver"), LabelCase("P002", "/abs/b.nii.gz", "kidney")]
    manifest.write_text("image,prompt,case_id\n")
    with pytest.raises(InputError, match="lists no cases"):
        find_label_cases(manifest, "kidney")
    manifest.write_text("path\nx.nrrd\n")
    with pytest.raises(InputError, match="'image' column"):
        find_label_cases(manifest, "kidney")
    manifest.write_bytes("image\nb\xe4d.nrrd\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        find_label_cases(manifest, "kidney")
    with pytest.raises(InputError, match="No prompt"):
        find_label_cases(tmp_path, None)


def test_ray_labels_equal_the_serial_run(cohort, tmp_path, tiny_clip_folder):
    pytest.importorskip("ray")
    import ray

    from MedCLIPSAMLib.weak.label import label_with_ray

    serial, distributed = tmp_path / "serial", tmp_path / "ray"
    cases = find_label_cases(cohort, "brain tumor")
    settings = {"clip_model": str(tiny_clip_folder), "sam_backend": "litemedsam", "device": "cpu", "m2ib_steps": 1,
                "m2ib_samples": 1, "refine_rounds": 0}
    label_cases(cases, LabelJob(str(serial), "brain tumor", settings))
    try:
        statuses = label_with_ray(cases, LabelJob(str(distributed), "brain tumor", settings), actors=1)
    finally:
        ray.shutdown()
    assert statuses == {c.case_id: read_record(serial, c.case_id)["status"] for c in cases}
    for case in ("case_0", "case_1", "case_2"):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(serial / "labelsTr" / f"{case}.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(distributed / "labelsTr" / f"{case}.nii.gz")))
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("option, value, words", [("--dataset-id", "1000", "--dataset-id must be an nnU-Net dataset id"),
                                                  ("--name", "a/b", "--name must hold only letters"),
                                                  ("--modality", " ", "--modality must name the channel"),
                                                  ("--min-score", "nan", "--min-score must be a finite number")])
def test_dataset_options_are_checked_as_options(cohort, tmp_path, tiny_clip_folder, capsys, option, value, words):
    assert run_label(cohort, tmp_path / "raw", tiny_clip_folder, option, value) == 2
    assert words in capsys.readouterr().err and not (tmp_path / "raw").exists()


def test_a_second_input_into_the_same_dataset_keeps_the_first_ones_cases_listed(cohort, tmp_path, tiny_clip_folder):
    raw = tmp_path / "raw"
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    first.write_text(f"image,case_id\n{cohort / 'case 0.nrrd'},A\n")
    second.write_text(f"image,case_id\n{cohort / 'case 1.nrrd'},B\n")
    assert run_label(first, raw, tiny_clip_folder) == 0
    assert run_label(second, raw, tiny_clip_folder) == 0
    dataset = raw / "Dataset007_Vol"
    assert set(rows_of(dataset)) == {"A", "B"}
    assert json.loads((dataset / "dataset.json").read_text())["numTraining"] == sum(
        row["status"] == "added" for row in rows_of(dataset).values())


def test_oracle_saliency_cases_are_pairs_and_an_image_without_mask_is_named(tmp_path):
    for name in ("a.png", "a_mask.png", "lonely.png"):
        (tmp_path / name).write_bytes(b"")
    notes = []
    cases = find_label_cases(tmp_path, "tumor", oracle_saliency=True, note=notes.append)
    assert cases == [LabelCase("a", str(tmp_path / "a.png"), "tumor", str(tmp_path / "a_mask.png"))]
    assert len(notes) == 1 and "1 image(s) have no mask and are skipped: lonely.png" in notes[0]


def test_a_folder_of_2d_dicom_files_is_one_case_per_file(tmp_path):
    from dicom_builders import sample_volume, write_2d, write_series

    pixels = sitk.GetArrayFromImage(sample_volume())
    cohort = tmp_path / "us_export"
    write_2d(pixels[3], cohort / "us_0001.dcm")
    write_2d(pixels[4], cohort / "IM0002", "DX")  # DICOM without a suffix, as PACS exports often come
    (cohort / "notes.txt").write_text("not an image")
    (cohort / "IM0003").write_bytes(b"\0" * 300)  # no DICM marker: not DICOM, not a case
    write_series(sample_volume(slices=(10, 12)), cohort / "mr_series")  # a series folder is still one case
    seg = pydicom_copy(cohort / "us_0001.dcm", cohort / "old_seg.dcm", Modality="SEG")
    notes = []
    cases = find_label_cases(cohort, "lesion", note=notes.append)
    assert [(c.case_id, os.path.basename(c.image)) for c in cases] == [
        ("IM0002", "IM0002"), ("mr_series", "mr_series"), ("us_0001", "us_0001.dcm")]
    assert notes == [f"1 DICOM file(s) hold no image (a SEG, SR, ...) and are skipped: {seg.name}."]

    write_series(sample_volume(slices=(10, 13)), tmp_path / "flat")  # slices of a 3D series loose in the folder
    for path in (tmp_path / "flat").iterdir():
        path.rename(cohort / path.name)
    with pytest.raises(InputError) as caught:
        find_label_cases(cohort, "lesion")
    message = str(caught.value)
    assert "3 DICOM slice file(s) of a 3D series" in message and "sub-folder of its own" in message
    assert "\n" not in message


def pydicom_copy(source, target, **changes):
    import pydicom

    ds = pydicom.dcmread(source)
    for name, value in changes.items():
        setattr(ds, name, value)
    ds.save_as(target, enforce_file_format=True)
    return target
