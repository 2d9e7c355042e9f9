"""nnU-Net export: 2D and 3D round trips validated by nnU-Net itself; nothing is ever lost."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import disk_image, disk_mask
from MedCLIPSAMLib.cli import main
from MedCLIPSAMLib.errors import InputError
from MedCLIPSAMLib.weak import export
from MedCLIPSAMLib.weak.export import CaseSource, add_case, add_cases, dataset_dir, next_case_id

from test_imageio import assert_same_geometry, make_volume


def volume_and_label(seed=0):
    image = make_volume(shape=(6, 20, 24))
    label = np.zeros((6, 20, 24), np.uint8)
    label[2:4, 5:10, 6:12] = 1
    return image, label


def test_3d_and_2d_round_trip_pass_nnunet_integrity_check(tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    folder = dataset_dir(tmp_path, 501, "BrainTumor")
    for case in ("case_a", "case_b"):
        image, label = volume_and_label()
        image_path, label_path = add_case(folder, case, image, label, "brain tumor")
        written = sitk.ReadImage(str(label_path))
        assert_same_geometry(written, image)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(written), label)
        assert image_path.name == f"{case}_0000.nii.gz"
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "brain tumor": 1} and meta["numTraining"] == 2
    assert meta["file_ending"] == ".nii.gz" and meta["channel_names"] == {"0": "MRI"}
    verify_dataset_integrity(str(folder), num_processes=1)

    folder2d = dataset_dir(tmp_path, 502, "BreastUS")
    for i in range(2):
        image = sitk.GetImageFromArray(np.random.default_rng(i).integers(0, 255, (30, 40)).astype(np.uint8))
        label = np.zeros((30, 40), np.uint8)
        label[10:20, 5:15] = 1
        add_case(folder2d, f"us{i}", image, label, "breast tumor", modality="US")
    verify_dataset_integrity(str(folder2d), num_processes=1)


def test_existing_cases_and_datasets_are_never_overwritten_silently(tmp_path):
    folder = dataset_dir(tmp_path, 7, "Liver")
    image, label = volume_and_label()
    _, label_path = add_case(folder, "c1", image, label, "liver")
    with pytest.raises(InputError, match="already in Dataset007_Liver"):
        add_case(folder, "c1", image, np.zeros_like(label), "liver")
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(label_path))).sum() == label.sum()
    add_case(folder, "c1", image, np.zeros_like(label), "liver", overwrite=True)
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(label_path))).sum() == 0
    with pytest.raises(InputError, match="labels"):
        add_case(folder, "c2", image, label, "spleen")
    with pytest.raises(InputError, match="already used by 'Dataset007_Liver'"):
        dataset_dir(tmp_path, 7, "Other")
    assert not (folder / "dataset.json.part").exists()


def test_label_checks(tmp_path):
    folder = dataset_dir(tmp_path, 9, "T")
    image, label = volume_and_label()
    with pytest.raises(InputError, match=r"the label holds the values \{0, 2\}; nnU-Net needs 0 \(background\)"):
        add_case(folder, "c", image, label * 2, "t")
    shifted = sitk.GetImageFromArray(label)
    shifted.CopyInformation(image)
    shifted.SetOrigin((0.0, 0.0, 0.0))
    with pytest.raises(InputError, match="differs from the image"):
        add_case(folder, "c", image, shifted, "t")
    with pytest.raises(InputError, match="does not match the image size"):
        add_case(folder, "c", image, label[:3], "t")
    with pytest.raises(InputError, match="Case id"):
        add_case(folder, "bad id!", image, label, "t")
    assert not (folder / "labelsTr").exists() or not list((folder / "labelsTr").iterdir())


def test_next_case_id_follows_the_highest_number_so_a_deleted_case_causes_no_collision(tmp_path):
    folder = dataset_dir(tmp_path, 9, "Tumour")
    assert next_case_id(folder, "Tumour") == "Tumour_0001"  # the folder does not exist yet
    image, label = volume_and_label()
    for case in ("Tumour_0001", "Tumour_0002", "Tumour_0003", "other_0009"):
        add_case(folder, case, image, label, "tumour")
    (folder / "labelsTr" / "Tumour_0002.nii.gz").unlink()  # two cases left, the highest is 3
    assert next_case_id(folder, "Tumour") == "Tumour_0004"
    assert next_case_id(folder, "other") == "other_0010"


def case_files(tmp_path, name="c", values=(0, 1)):
    """An image and a label file whose label holds ``values``."""
    image, _ = volume_and_label()
    label = np.zeros((6, 20, 24), np.uint8)
    for i, value in enumerate(values):
        label[i] = value
    sitk.WriteImage(image, str(tmp_path / f"{name}.nrrd"))
    labelled = sitk.GetImageFromArray(label)
    labelled.CopyInformation(image)
    sitk.WriteImage(labelled, str(tmp_path / f"{name}_label.nrrd"))
    return tmp_path / f"{name}.nrrd", tmp_path / f"{name}_label.nrrd"


def export_args(tmp_path, case="c2", label_name="liver", **files):
    image, label = files.get("image"), files.get("label")
    if image is None:
        image, label = case_files(tmp_path, case)
    return ["nnunet-export", "--raw", str(tmp_path / "raw"), "--dataset-id", "7", "--name", "Liver",
            "--label-name", label_name, "--image", str(image), "--label", str(label), "--case-id", case]


def dataset_files(tmp_path):
    return sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "raw").rglob("*") if p.is_file())


def test_a_damaged_dataset_json_is_one_line_and_nothing_is_written(tmp_path, capsys):
    assert main(export_args(tmp_path, "c1")) == 0
    index = tmp_path / "raw" / "Dataset007_Liver" / "dataset.json"
    index.write_text('{"labels": {"background": 0, "liver": 1},')  # cut off by a crash of another tool
    files = dataset_files(tmp_path)
    assert main(export_args(tmp_path, "c2")) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not valid JSON" in err and "line 1" in err and "Traceback" not in err
    assert dataset_files(tmp_path) == files and index.read_text().endswith(",")


def test_a_label_name_that_differs_writes_nothing_and_the_retry_works(tmp_path, capsys):
    assert main(export_args(tmp_path, "c1")) == 0
    files = dataset_files(tmp_path)
    assert main(export_args(tmp_path, "c2", label_name="spleen")) == 3
    assert "give the dataset's own --label-name" in capsys.readouterr().err
    assert dataset_files(tmp_path) == files  # no orphan case files
    assert main(export_args(tmp_path, "c2")) == 0  # the retry is not refused as "already in"
    meta = json.loads((tmp_path / "raw" / "Dataset007_Liver" / "dataset.json").read_text())
    assert meta["numTraining"] == 2
    assert main(export_args(tmp_path, "c3", ) + ["--modality", "CT"]) == 3
    assert "give the dataset's own --modality" in capsys.readouterr().err


@pytest.mark.parametrize("values, shown", [((0, 2), "{0, 2}"), ((0, 1, 2), "{0, 1, 2}"), ((0, 255), "{0, 255}")])
def test_label_values_other_than_0_and_1_are_refused_with_the_values_found(tmp_path, capsys, values, shown):
    image, label = case_files(tmp_path, "c", values)
    assert main(export_args(tmp_path, "c", image=image, label=label)) == 3
    assert f"the label holds the values {shown}" in capsys.readouterr().err
    assert dataset_files(tmp_path) == []


def test_a_png_mask_of_0_and_255_is_the_target(tmp_path):
    """What `segment -o mask.png` writes (0/255, as viewers show a mask) exports as 0/1."""
    mask = disk_mask(40, 48, (20, 24), 8)
    sitk.WriteImage(sitk.GetImageFromArray(disk_image(40, 48, (20, 24), 8)), str(tmp_path / "us.png"))
    sitk.WriteImage(sitk.GetImageFromArray(mask.astype(np.uint8) * 255), str(tmp_path / "us_mask.png"))
    args = export_args(tmp_path, "us", image=tmp_path / "us.png", label=tmp_path / "us_mask.png")
    assert main(args) == 0
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "raw" / "Dataset007_Liver" / "labelsTr" / "us.nii.gz")))
    assert set(np.unique(written)) == {0, 1} and written.sum() == mask.sum()


def test_one_bad_case_among_pairs_exports_none(tmp_path, capsys):
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    case_files(pairs, "a", (0, 1))
    case_files(pairs, "b", (0, 3))
    sitk.WriteImage(make_volume(shape=(6, 20, 24)), str(pairs / "lonely.nrrd"))
    args = ["nnunet-export", "--raw", str(tmp_path / "raw"), "--dataset-id", "8", "--name", "P", "--label-name", "p",
            "--pairs", str(pairs)]
    assert main(args) == 3
    err = capsys.readouterr().err
    assert "Case 'b': the label holds the values {0, 3}" in err
    assert "note: 1 image(s) have no mask and are skipped: lonely.nrrd" in err
    assert dataset_files(tmp_path) == []


def test_a_write_that_fails_half_way_leaves_no_orphan_files(tmp_path, monkeypatch):
    folder = dataset_dir(tmp_path, 9, "T")
    image, label = volume_and_label()
    add_case(folder, "first", image, label, "t")
    before = sorted(p.name for p in folder.rglob("*"))
    index = (folder / "dataset.json").read_bytes()
    real, calls = export.write_image, []

    def failing(data, path, overwrite=False, staging=None):
        calls.append(path)
        if len(calls) == 3:
            raise InputError("disk full")
        return real(data, path, overwrite, staging)

    monkeypatch.setattr(export, "write_image", failing)
    cases = [CaseSource("second", image, label), CaseSource("third", image, label)]
    with pytest.raises(InputError, match="disk full"):
        add_cases(folder, cases, "t")
    assert sorted(p.name for p in folder.rglob("*")) == before and (folder / "dataset.json").read_bytes() == index
