"""Accept on a case whose source is a DICOM series: a SEMIAUTOMATIC SEG beside the NIfTI label (highdicom reads
back the accepted voxels on the source instances); a case from a NIfTI/NRRD file gets none and no error."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicom_builders import write_series
from review_cases import LABEL_NAME, make_dataset, pseudo_label, read_label
from MedCLIPSAMLib.imageio import read_volume
from MedCLIPSAMLib.review.actions import accept_case
from MedCLIPSAMLib.review_state import accepted_seg_path, history_folder, read_states

DICOM_CASE = "c_mid"


def as_dicom_case(folder: Path, case: str) -> Path:
    """Make ``case`` one that ``label`` read from a DICOM series: the series written from its image, imagesTr
    re-written from the series as ``label`` writes it, labels.csv's image column naming the series folder."""
    image_path = folder / "imagesTr" / f"{case}_0000.nii.gz"
    series = folder.parent.parent / "cohort" / f"{case}_dicom"
    write_series(sitk.ReadImage(str(image_path)), series)
    sitk.WriteImage(read_volume(series).reference, str(image_path))
    table = folder / "labels.csv"
    rows = list(csv.DictReader(table.read_text().splitlines()))
    for row in rows:
        if row["case"] == case:
            row["image"] = str(series)
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return series


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path)


def seg_voxels(path: Path, series: Path) -> tuple[hd.seg.Segmentation, np.ndarray]:
    seg = hd.seg.segread(str(path))
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in read_volume(series).dicom_files]
    return seg, seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                                  relabel=False)


def test_accepting_a_dicom_case_writes_a_semiautomatic_seg_beside_the_label(dataset):
    series = as_dicom_case(dataset, DICOM_CASE)
    label = pseudo_label(2)
    label[3, 10:14, 2:6] = 1  # the reviewer's correction
    entry = accept_case(dataset, DICOM_CASE, label)
    path = accepted_seg_path(dataset, DICOM_CASE)
    assert entry["seg"] == str(path) and read_states(dataset)[DICOM_CASE]["seg"] == str(path)
    np.testing.assert_array_equal(read_label(dataset, DICOM_CASE), label)  # the NIfTI label is still written
    seg, voxels = seg_voxels(path, series)
    np.testing.assert_array_equal(voxels, label)
    assert [d.SegmentAlgorithmType for d in seg.SegmentSequence] == ["SEMIAUTOMATIC"]
    assert seg.SegmentSequence[0].SegmentLabel == LABEL_NAME
    sources = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in series.glob("*.dcm")}
    assert {i.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence
            for i in s.ReferencedInstanceSequence} == sources

    again = label.copy()
    again[1, 4:6, 5:8] = 0
    accept_case(dataset, DICOM_CASE, again)  # a second accept: the new SEG, the first one kept in the history
    np.testing.assert_array_equal(seg_voxels(path, series)[1], again)
    kept = list(history_folder(dataset).glob(f"{DICOM_CASE}_accepted_*.dcm"))
    assert len(kept) == 1 and np.array_equal(seg_voxels(kept[0], series)[1], label)


def test_a_case_from_an_image_file_gets_no_seg_and_no_error(dataset):
    entry = accept_case(dataset, "a_high", pseudo_label(0))
    assert "seg" not in entry and "seg_note" not in entry
    assert not accepted_seg_path(dataset, "a_high").exists()


def test_a_dicom_series_gone_from_disk_still_accepts_and_says_why_no_seg(dataset):
    series = as_dicom_case(dataset, DICOM_CASE)
    first = sorted(series.glob("*.dcm"))[0]
    first.write_bytes(first.read_bytes()[:200])  # a damaged file: the series cannot be read
    entry = accept_case(dataset, DICOM_CASE, pseudo_label(2))
    assert entry["state"] == "accepted" and entry["seg_note"].startswith("no DICOM SEG: ")
    assert not accepted_seg_path(dataset, DICOM_CASE).exists()
    np.testing.assert_array_equal(read_label(dataset, DICOM_CASE), pseudo_label(2))


def test_the_pages_review_accept_names_the_seg_of_a_dicom_case(tmp_path):
    from test_web_pacs import make_app

    folder = make_dataset(tmp_path)
    series = as_dicom_case(folder, DICOM_CASE)
    app = make_app(tmp_path, "review-dicom")
    app.review.open(str(folder))
    app.review.open_case(DICOM_CASE)
    mask = app.workspace.segment_mask(app.panel.selected_segment)
    app.review.accept()
    assert app.panel.message.startswith(f"Accepted '{DICOM_CASE}'. DICOM SEG: {DICOM_CASE}.dcm.")
    seg, voxels = seg_voxels(accepted_seg_path(folder, DICOM_CASE), series)
    np.testing.assert_array_equal(voxels > 0, mask)
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    app.review.open_case("a_high")
    app.review.accept()
    assert "DICOM SEG" not in app.panel.message and app.panel.message.startswith("Accepted 'a_high'.")


def test_accepting_a_2d_dicom_case_writes_a_seg_on_its_one_image(tmp_path, tiny_clip_folder):
    """A folder of 2D ultrasound files labelled by ``medclipsam label``; Accept on one of them writes the
    reviewer's label as a SEMIAUTOMATIC SEG on that image, beside label's AUTOMATIC draft."""
    from dicom_builders import sample_volume, write_2d
    from MedCLIPSAMLib.cli import main

    pixels = sitk.GetArrayFromImage(sample_volume())
    cohort = tmp_path / "us"
    sources = [write_2d(pixels[z], cohort / f"us{z}.dcm") for z in (3, 4)]
    raw = tmp_path / "raw"
    assert main(["label", str(cohort), "-p", "lesion", "--name", "US", "--raw", str(raw), "--dataset-id", "5",
                 "--clip-model", str(tiny_clip_folder), "--sam", "litemedsam", "--device", "cpu", "--steps", "1",
                 "--samples", "1", "--quiet"]) == 0
    folder = raw / "Dataset005_US"
    draft = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / "us3.nii.gz")))
    assert draft.shape == (80, 80)
    corrected = draft.copy()
    corrected[10:20, 30:45] = 1
    corrected[60:, :] = 0
    entry = accept_case(folder, "us3", corrected)
    seg = hd.seg.segread(entry["seg"])
    uid = pydicom.dcmread(sources[0], stop_before_pixels=True).SOPInstanceUID
    voxels = seg.get_pixels_by_source_instance([uid], combine_segments=True, relabel=False)
    np.testing.assert_array_equal(voxels[0], corrected)
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert [i.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence] \
        == [uid]
    assert hd.seg.segread(str(folder / "medclipsam_seg" / "us3.dcm")).SegmentSequence[0].SegmentAlgorithmType \
        == "AUTOMATIC"
