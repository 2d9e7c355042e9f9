"""`medclipsam label URL`: a real PACS (Orthanc + DICOMweb plugin, started here) as the cohort's source and,
with --stow, as the store of its SEGs; a bad study is skipped and named, the rest labelled."""
from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicom_builders import sample_volume, write_series
from orthanc import orthanc  # noqa: F401 (the fixture)
from MedCLIPSAMLib.cli import main
from MedCLIPSAMLib.dicom import dicomweb
from MedCLIPSAMLib.errors import MedCLIPSAMError

TINY = ["--steps", "1", "--samples", "1", "--sam", "litemedsam", "--device", "cpu", "--runtime", "torch",
        "--faithfulness-slices", "0", "--quiet"]


def good_and_bad_studies(orthanc, folder: Path) -> dict[str, list[Path]]:
    """Two good MR studies and one whose series misses a slice, uploaded through Orthanc's own REST API."""
    series = {"P1": write_series(sample_volume(), folder / "p1", patient="P1"),
              "P2": write_series(sample_volume(box=(130, 70, 80, 80)), folder / "p2", patient="P2")}
    gap = write_series(sample_volume(), folder / "p3", patient="P3")
    gap[3].unlink()
    series["P3"] = gap[:3] + gap[4:]
    for paths in series.values():
        orthanc.upload(paths)
    return series


def test_label_from_a_pacs_stores_segs_back_and_skips_a_bad_study(orthanc, tmp_path, tiny_clip_folder, capsys):
    series = good_and_bad_studies(orthanc, tmp_path / "upload")
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    raw = tmp_path / "raw"
    args = ["label", orthanc.dicomweb, "-p", "brain tumor", "--raw", str(raw), "--dataset-id", "7", "--name",
            "Pacs", "--pacs-modality", "MR", "--pacs-token-file", str(token), "--stow",
            "--clip-model", str(tiny_clip_folder), *TINY]
    code = main(args)
    captured = capsys.readouterr()
    assert code == 3, captured.err  # a study was skipped: the exit code says so
    skipped_uid = pydicom.dcmread(series["P3"][0]).SeriesInstanceUID
    assert "skipped 1 series" in captured.err and skipped_uid in captured.err and "missing slices" in captured.err
    assert "skipped series 1" in captured.out and "stored 2 SEG(s)" in captured.out

    dataset = raw / "Dataset007_Pacs"
    labels = sorted((dataset / "labelsTr").glob("*.nii.gz"))
    assert [p.name.split("_")[0] for p in labels] == ["P1", "P2"]
    for patient in ("P1", "P2"):
        source = pydicom.dcmread(series[patient][0])
        on_server = orthanc.series_of(source.StudyInstanceUID)
        segs = [s for s in on_server if s["Modality"] == "SEG"]
        assert len(segs) == 1, on_server
        client = dicomweb.connect(orthanc.dicomweb)
        [stored] = client.retrieve_series(source.StudyInstanceUID, segs[0]["SeriesInstanceUID"])
        seg = hd.seg.Segmentation.from_dataset(stored)
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
        assert seg.get_segment_description(1).segment_label == "brain tumor"
        case = next(p for p in labels if p.name.startswith(patient))
        expected = sitk.GetArrayFromImage(sitk.ReadImage(str(case)))
        reference = sitk.ReadImage(str(next((dataset / "imagesTr").glob(f"{patient}_*"))))
        uids = [_instance_at(series[patient], reference.TransformIndexToPhysicalPoint((0, 0, k)))
                for k in range(reference.GetDepth())]  # the source instance under each NIfTI slice
        from_server = seg.get_pixels_by_source_instance(uids, combine_segments=True, relabel=False)
        assert expected.any()
        np.testing.assert_array_equal(from_server, expected)
    records = {p.stem: json.loads(p.read_text()) for p in (dataset / "medclipsam_labels").glob("*.json")}
    assert all(r["stowed"] for r in records.values()) and len(records) == 2

    # a re-run resumes: nothing retrieved again, nothing relabelled, nothing stored twice
    cache = dataset / "medclipsam_dicom"
    stamps = {p: p.stat().st_mtime_ns for p in cache.rglob("*.dcm")}
    assert main(args) == 3
    again = capsys.readouterr()
    assert "stored 0 SEG(s)" in again.out and "0 labelled" in again.out
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.dcm")} == stamps
    assert sum(s["Modality"] == "SEG" for s in orthanc.series_of(pydicom.dcmread(series["P1"][0]).StudyInstanceUID)) == 1


def _instance_at(files: list[Path], point) -> str:
    """The SOP instance UID of the file whose first pixel sits at ``point`` (mm, LPS)."""
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if np.allclose([float(v) for v in ds.ImagePositionPatient], point, atol=1e-3):
            return ds.SOPInstanceUID
    raise AssertionError(f"no source slice at {point}")


def test_listing_and_a_stopped_fetch_leave_the_cache_whole(orthanc, tmp_path):
    files = write_series(sample_volume(), tmp_path / "s", patient="LIST1")
    orthanc.upload(files)
    client = dicomweb.connect(orthanc.dicomweb)
    [study] = dicomweb.list_studies(client, modality="MR")
    assert (study.patient_id, study.modalities, study.series_count) == ("LIST1", ("MR",), 1)
    [series] = dicomweb.list_series(client, study.study_uid)
    assert (series.modality, series.instances, series.series_uid) == \
        ("MR", 8, pydicom.dcmread(files[0]).SeriesInstanceUID)
    assert dicomweb.list_series(client, modality="CT") == []

    cache = tmp_path / "cache"
    stale = cache / series.study_uid / f"{dicomweb.PARTIAL_PREFIX}{series.series_uid}-dead"
    stale.mkdir(parents=True)  # what a fetch stopped part-way leaves: never read as the series
    (stale / "half.dcm").write_bytes(b"")
    assert not dicomweb.series_folder(cache, series).exists()
    folder = dicomweb.fetch_series(client, series, cache)
    assert not stale.exists()
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{pydicom.dcmread(f).SOPInstanceUID}.dcm" for f in files)


def test_token_server_and_option_errors_are_one_line(orthanc, tmp_path, capsys):
    token = tmp_path / "token"
    token.write_text("abc123\n")
    client = dicomweb.connect(orthanc.dicomweb, token)
    assert client._session.headers["Authorization"] == "Bearer abc123"
    token.write_text("")
    with pytest.raises(MedCLIPSAMError, match="must hold one token"):
        dicomweb.connect(orthanc.dicomweb, token)
    with pytest.raises(MedCLIPSAMError, match="Cannot reach the DICOMweb server"):
        dicomweb.list_studies(dicomweb.connect("http://127.0.0.1:9/dicom-web"))
    assert main(["label", str(tmp_path), "-p", "x", "--raw", str(tmp_path / "raw"), "--dataset-id", "1",
                 "--name", "A", "--stow"]) == 2
    assert "need(s) a DICOMweb URL" in capsys.readouterr().err
