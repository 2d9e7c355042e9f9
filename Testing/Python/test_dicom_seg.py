"""DICOM SEG results checked with tools no one here wrote: highdicom reads a SEG back to exactly the voxels of
the NIfTI result, and dcmqi's segimage2itkimage puts every segment back on the source grid."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicom_builders import sample_volume, write_2d, write_series
from MedCLIPSAMLib import __version__
from MedCLIPSAMLib.cli import main
from MedCLIPSAMLib.dicom.seg import read_seg_labels, write_label_seg, write_maps_seg
from MedCLIPSAMLib.imageio import read_volume, write_label
from MedCLIPSAMLib.terminology import term_for


def segimage2itkimage() -> Path:
    """dcmqi's converter, shipped inside the dcmqi wheel (the test extra installs it)."""
    import dcmqi

    binary = Path(dcmqi.__file__).parent / "bin" / "segimage2itkimage"
    assert binary.is_file(), f"dcmqi's segimage2itkimage not found at {binary}; pip install dcmqi"
    return binary


def dcmqi_labels(seg: Path, reference: sitk.Image, out: Path) -> np.ndarray:
    """The SEG converted by dcmqi (one image per segment), each put on the reference grid by physical position
    (nearest neighbour), as a label map: segment number where a segment is."""
    out.mkdir()
    subprocess.run([str(segimage2itkimage()), "--inputDICOM", str(seg), "--outputDirectory", str(out),
                    "--outputType", "nifti"], check=True, capture_output=True)
    meta = json.loads((out / "meta.json").read_text())
    labels = np.zeros(sitk.GetArrayFromImage(reference).shape, np.uint8)
    for group, attributes in enumerate(meta["segmentAttributes"], start=1):
        image = sitk.ReadImage(str(out / f"{group}.nii.gz"))
        on_grid = sitk.GetArrayFromImage(sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor))
        for segment in attributes:
            labels[on_grid == segment["labelID"]] = segment["labelID"]
    return labels


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dicom") / "series"
    write_series(sample_volume(), folder)
    return folder


@pytest.fixture(scope="module")
def result(series, fast_settings_module):
    """One zero-shot run on the DICOM series, saliency from the sample's expert tumour label (random CLIP finds
    nothing in particular), so the masks are real and non-empty."""
    from MedCLIPSAMLib.pipeline import Pipeline
    from MedCLIPSAMLib.saliency import oracle_maps

    volume = read_volume(series)
    truth = sitk.GetArrayFromImage(sitk.Resample(sample_volume(label=True), volume.reference)) > 0
    ring = np.zeros_like(truth)
    ring[:, 5:15, 5:15] = True  # a second, separate "structure" for a second segment
    result = Pipeline(fast_settings_module).run(volume, ["brain tumor", "ventricle"],
                                                saliency=[oracle_maps(truth), oracle_maps(ring)])
    return volume, result


@pytest.fixture(scope="module")
def fast_settings_module(tiny_clip_folder):
    from MedCLIPSAMLib.settings import Settings

    return Settings(clip_model=str(tiny_clip_folder), sam_backend="litemedsam", device="cpu", m2ib_steps=1,
                    m2ib_samples=1, refine_rounds=1, faithfulness_slices=0, runtime="torch")


def test_binary_seg_matches_the_nifti_result_in_highdicom_and_dcmqi(tmp_path, series, result):
    volume, run = result
    assert {name: int(run.masks[name].sum() > 0) for name in run.names} == {"brain tumor": 1, "ventricle": 1}
    nifti = write_label(run.labels, volume.reference, tmp_path / "result.nii.gz")
    seg_path = write_label_seg(tmp_path / "result.dcm", run.labels, run.names, volume)
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(nifti)))

    np.testing.assert_array_equal(read_seg_labels(seg_path, volume), expected)  # highdicom
    np.testing.assert_array_equal(dcmqi_labels(seg_path, sitk.ReadImage(str(nifti)), tmp_path / "dcmqi"), expected)

    seg = hd.seg.segread(str(seg_path))
    source = [pydicom.dcmread(path, stop_before_pixels=True) for path in volume.dicom_files]
    assert seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == source[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source[0].SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == \
        {ds.SOPInstanceUID for ds in source}
    assert int(seg.NumberOfFrames) == len(source) * 2  # every slice of both segments, empty ones included
    for number, name in enumerate(run.names, start=1):
        description = seg.get_segment_description(number)
        term = term_for(name)
        assert description.segment_label == name
        assert (description.segmented_property_category.value, description.segmented_property_type.value) == \
            (term.category[1], term.type[1])
        assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        algorithm = description.algorithm_identification[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("MedCLIP-SAM", __version__)
    assert term_for("brain tumor").type[2] == "Neoplasm" and not term_for("ventricle").known


def test_corrected_seg_is_semiautomatic(tmp_path, result):
    volume, run = result
    path = write_label_seg(tmp_path / "corrected.dcm", run.labels, run.names, volume, corrected=True)
    seg = hd.seg.segread(str(path))
    assert all(seg.get_segment_description(n).algorithm_type == hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC
               for n in (1, 2))
    assert "corrected" in seg.SeriesDescription


def test_fractional_seg_keeps_maps_to_8_bits(tmp_path, result):
    volume, run = result
    maps = {name: run.saliency[name] for name in run.names}
    path = write_maps_seg(tmp_path / "saliency.dcm", maps, volume)
    seg = hd.seg.segread(str(path))
    assert seg.SegmentationType == "FRACTIONAL" and seg.SegmentationFractionalType == "PROBABILITY"
    assert [seg.get_segment_description(n).segment_label for n in (1, 2)] == \
        ["brain tumor saliency", "ventricle saliency"]
    uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in volume.dicom_files]
    pixels = seg.get_pixels_by_source_instance(uids, combine_segments=False, rescale_fractional=True)
    for index, name in enumerate(run.names):
        assert np.abs(pixels[..., index] - maps[name]).max() <= 0.5 / 255 + 1e-6
        assert maps[name].max() > 0.5


def test_segment_command_writes_seg_for_a_dicom_series(tmp_path, series, tiny_clip_folder, capsys):
    out = tmp_path / "result.dcm"
    code = main(["segment", str(series), "-p", "brain tumor", "-o", str(out), "--saliency-out",
                 str(tmp_path / "saliency.dcm"), "--clip-model", str(tiny_clip_folder), "--steps", "1",
                 "--samples", "1", "--sam", "litemedsam", "--device", "cpu", "--runtime", "torch", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    volume = read_volume(series)
    labels = read_seg_labels(out, volume)
    assert f"voxels={int((labels == 1).sum())} " in printed
    assert hd.seg.segread(str(out)).get_segment_description(1).segment_label == "brain tumor"
    assert hd.seg.segread(str(tmp_path / "saliency.dcm")).SegmentationType == "FRACTIONAL"


def test_dcm_output_for_a_non_dicom_source_is_refused_before_any_work(tmp_path, capsys):
    sitk.WriteImage(sample_volume(), str(tmp_path / "brain.nrrd"))
    code = main(["segment", str(tmp_path / "brain.nrrd"), "-p", "brain tumor", "-o", str(tmp_path / "x.dcm"),
                 "--clip-model", str(tmp_path / "no-such-model"), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "is not DICOM" in err and ".nii.gz" in err
    assert not (tmp_path / "x.dcm").exists()


@pytest.mark.parametrize("modality", ["US", "DX"])
def test_2d_dicom_gets_a_seg_on_its_one_image(tmp_path, tiny_clip_folder, modality, capsys):
    image = write_2d(sitk.GetArrayFromImage(sample_volume())[4], tmp_path / f"{modality}.dcm", modality)
    out = tmp_path / "seg.dcm"
    code = main(["segment", str(image), "-p", "lesion", "-o", str(out), "--clip-model", str(tiny_clip_folder),
                 "--steps", "1", "--samples", "1", "--sam", "litemedsam", "--device", "cpu", "--runtime", "torch", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    volume = read_volume(image)
    assert volume.is_2d
    labels = read_seg_labels(out, volume)
    assert labels.shape == (1, 80, 80)
    assert f"voxels={int(labels.sum())} " in printed
    seg = hd.seg.segread(str(out))
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == \
        pydicom.dcmread(image).SOPInstanceUID
