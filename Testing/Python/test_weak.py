"""Cyclic schedule, snapshot choice, entropy, and one real tiny nnU-Net run end to end on CPU."""
import csv
import os
import time

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import disk_image, disk_mask
from MedCLIPSAMLib.cli import main
from MedCLIPSAMLib.errors import OptionError
from MedCLIPSAMLib.weak.ensemble import entropy_bits
from MedCLIPSAMLib.weak.schedule import cycle_length, cyclic_lr, is_snapshot_epoch, snapshot_name


def test_cyclic_schedule_restarts_each_cycle():
    length = cycle_length(600, 3)
    assert length == 200
    assert cyclic_lr(0, 0.01, length) == cyclic_lr(200, 0.01, length) == cyclic_lr(400, 0.01, length) == 0.01
    assert cyclic_lr(100, 0.01, length) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert cyclic_lr(199, 0.01, length) < cyclic_lr(198, 0.01, length) < 0.01
    with pytest.raises(OptionError, match="3 cycles do not fit in 2 epochs"):
        cycle_length(2, 3)


def test_the_authors_schedule_holds_a_working_rate_through_the_snapshot_window():
    """600 epochs, 3 cycles, lr 0.01: restart at each cycle, poly over the whole run, flat from 80% of a cycle."""
    length, snapshots = 200, [e for e in range(600) if is_snapshot_epoch(e, 200, 10, 600)]
    authors = [cyclic_lr(e, 0.01, length, schedule="authors", epochs=600) for e in snapshots]
    restart = [cyclic_lr(e, 0.01, length, schedule="restart") for e in snapshots]
    assert authors == pytest.approx([0.01 * (1 - 160 / 600) ** 0.9] * 30) and min(authors) > 7.5e-3
    assert max(restart) < 7e-4 and min(restart) > 8e-5  # near zero: snapshots of a cycle barely differ
    assert [cyclic_lr(e, 0.01, length, schedule="authors", epochs=600) for e in (0, 200, 400)] == [0.01] * 3
    assert cyclic_lr(100, 0.01, length, schedule="authors", epochs=600) == pytest.approx(0.01 * (5 / 6) ** 0.9)
    with pytest.raises(OptionError, match="Unknown schedule"):
        cyclic_lr(1, 0.01, length, schedule="cosine", epochs=600)


def test_our_trainer_folder_comes_first_and_the_users_folders_stay(monkeypatch, tmp_path):
    from MedCLIPSAMLib.weak.train import TRAINER_FOLDER, add_trainer_folder

    monkeypatch.setenv("nnUNet_extTrainer", str(tmp_path))
    add_trainer_folder()
    add_trainer_folder()
    assert os.environ["nnUNet_extTrainer"].split(os.pathsep) == [str(TRAINER_FOLDER), str(tmp_path)]


def test_snapshots_are_the_last_epochs_of_each_cycle():
    chosen = [e for e in range(600) if is_snapshot_epoch(e, 200, 10, 600)]
    assert len(chosen) == 30  # the paper's G = 30
    assert chosen[:10] == list(range(190, 200)) and chosen[-1] == 599
    assert [e for e in range(7) if is_snapshot_epoch(e, 3, 1, 7)] == [2, 5]  # epoch 6 is outside any full cycle
    assert snapshot_name(199, 200) == "checkpoint_cycle1_epoch0200.pth"


def test_snapshot_agreement_is_the_mean_pairwise_dice():
    from MedCLIPSAMLib.weak.ensemble import snapshot_agreement

    a = np.zeros((4, 8), bool)
    a[:2] = True
    b = np.zeros((4, 8), bool)
    b[1:3] = True
    packed = [np.packbits(m) for m in (a, a, b)]
    assert snapshot_agreement(packed) == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    assert snapshot_agreement(packed[:1]) == 1.0
    assert snapshot_agreement([np.packbits(np.zeros(8, bool))] * 2) == 1.0


def test_entropy_of_known_probabilities():
    p = np.array([[0.5, 1.0, 0.0, 0.25], [0.5, 0.0, 1.0, 0.75]])
    h = entropy_bits(p)
    assert h[0] == pytest.approx(1.0) and h[1] == 0.0 and h[2] == 0.0
    assert h[3] == pytest.approx(-(0.25 * np.log2(0.25) + 0.75 * np.log2(0.75)))
    assert not np.isnan(h).any()


def test_tiny_nnunet_run_export_train_ensemble(tmp_path, monkeypatch):
    """8 synthetic 2D cases -> dataset -> 4 epochs over 2 cycles keeping 2 each -> ensembled prediction."""
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        center = tuple(int(v) for v in rng.integers(20, 44, size=2))
        sitk.WriteImage(sitk.GetImageFromArray(disk_image(64, 64, center, 10, seed=i)), str(pairs / f"c{i}.png"))
        mask = disk_mask(64, 64, center, 10).astype(np.uint8) * 255
        sitk.WriteImage(sitk.GetImageFromArray(mask), str(pairs / f"c{i}_mask.png"))
    raw, pre, res = tmp_path / "raw", tmp_path / "pre", tmp_path / "res"
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer", "nnUNet_n_proc_DA"):
        monkeypatch.delenv(name, raising=False)
    assert main(["nnunet-export", "--raw", str(raw), "--dataset-id", "42", "--name", "Disk", "--label-name",
                 "disk", "--modality", "US", "--pairs", str(pairs)]) == 0
    start = time.perf_counter()
    assert main(["nnunet-train", "42", "--raw", str(raw), "--preprocessed", str(pre), "--results", str(res),
                 "--config", "2d", "--epochs", "4", "--cycles", "2", "--keep-last", "2", "--iterations", "5",
                 "--val-iterations", "2", "--device", "cpu", "--processes", "1"]) == 0
    print(f"\ntiny nnU-Net training: {time.perf_counter() - start:.1f} s")
    model = res / "Dataset042_Disk" / "nnUNetTrainerCyclicLR__nnUNetPlans__2d"
    snaps = sorted(p.name for p in (model / "fold_0").glob("checkpoint_cycle*"))
    assert snaps == ["checkpoint_cycle1_epoch0001.pth", "checkpoint_cycle1_epoch0002.pth",
                     "checkpoint_cycle2_epoch0003.pth", "checkpoint_cycle2_epoch0004.pth"]
    images = [str(raw / "Dataset042_Disk" / "imagesTr" / f"c{i}_0000.nii.gz") for i in (0, 1)]
    out = tmp_path / "pred"
    assert main(["nnunet-predict", str(model), *images, "--out", str(out), "--device", "cpu"]) == 0
    reference = sitk.ReadImage(images[0])
    for suffix in ("", "_probability", "_entropy"):
        written = sitk.ReadImage(str(out / f"c0{suffix}.nii.gz"))
        assert written.GetSize() == reference.GetSize() and written.GetSpacing() == reference.GetSpacing()
    entropy = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "c0_entropy.nii.gz")))
    probability = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "c0_probability.nii.gz")))
    assert np.isfinite(entropy).all() and 0 <= entropy.min() and entropy.max() <= 1.0 + 1e-6
    assert 0 <= probability.min() and probability.max() <= 1
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "c0.nii.gz")))
    np.testing.assert_array_equal(mask, (probability > 0.5).astype(np.uint8))  # argmax of two classes
    with (out / "uncertainty.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["case"] for r in rows] == ["c0", "c1"] and rows[0]["checkpoints"] == "4"
    assert 0.0 <= float(rows[0]["snapshot_agreement_dsc"]) <= 1.0

    # a DICOM source (the same image as a 2D DICOM file): its entropy also as a FRACTIONAL SEG on that image
    import highdicom as hd
    import pydicom

    from dicom_builders import write_2d

    pixels = sitk.GetArrayFromImage(sitk.ReadImage(images[0])).squeeze().astype(np.float64)
    pixels = (pixels - pixels.min()) / max(float(np.ptp(pixels)), 1e-9) * 1000
    dcm = write_2d(np.round(pixels).astype(np.int16), tmp_path / "dicom" / "c0.dcm")
    out_dicom = tmp_path / "pred_dicom"
    assert main(["nnunet-predict", str(model), str(dcm), "--out", str(out_dicom), "--device", "cpu"]) == 0
    seg = hd.seg.segread(str(out_dicom / "c0_uncertainty.dcm"))
    assert seg.SegmentationType == "FRACTIONAL" and seg.SegmentationFractionalType == "PROBABILITY"
    assert seg.get_segment_description(1).segment_label == "disk uncertainty"
    uid = pydicom.dcmread(dcm, stop_before_pixels=True).SOPInstanceUID
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == uid
    values = seg.get_pixels_by_source_instance([uid], combine_segments=False, rescale_fractional=True)[..., 0]
    entropy_dicom = sitk.GetArrayFromImage(sitk.ReadImage(str(out_dicom / "c0_entropy.nii.gz")))
    assert entropy_dicom.max() > 0  # two classes: entropy in bits is already in [0, 1]
    assert np.abs(values.reshape(entropy_dicom.shape) - entropy_dicom).max() <= 0.5 / 255 + 1e-6


def test_a_schedule_that_does_not_fit_is_refused_before_training():
    from MedCLIPSAMLib.weak.train import set_trainer_knobs

    with pytest.raises(OptionError, match="3 cycles do not fit in 2 epochs"):
        set_trainer_knobs(2, 3, 1, 0.01, 5, 2)
    with pytest.raises(OptionError, match="--keep-last must be between 1 and the cycle length 5"):
        set_trainer_knobs(10, 2, 6, 0.01, 5, 2)
    with pytest.raises(OptionError, match="Unknown --schedule 'cosine'"):
        set_trainer_knobs(10, 2, 2, 0.01, 5, 2, "cosine")
