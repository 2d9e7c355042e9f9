"""nnU-Net export: 2D and 3D round trips validated by nnU-Net itself; nothing is ever lost."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from MedCLIPSAMLib.errors import InputError
from MedCLIPSAMLib.weak.export import add_case, dataset_dir, next_case_id

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
    with pytest.raises(InputError, match="not 0/1"):
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
