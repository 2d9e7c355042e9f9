"""The panel's Export DICOM SEG with real MRML (a volume from a DICOM series, as Slicer's DICOM loader leaves it),
the SEG written by the engine's Python in a child process and read back by highdicom."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
import highdicom as hd  # noqa: E402
import pydicom  # noqa: E402

from dicom_builders import sample_volume, write_series  # noqa: E402
from test_mrml import scene  # noqa: E402,F401  (shared fixture)
from test_slicer_undo import paint  # noqa: E402  (a Segment Editor-like edit)
from MedCLIPSAMLib.errors import InputError, MedCLIPSAMError  # noqa: E402
from MedCLIPSAMLib.imageio import read_volume  # noqa: E402
from MedCLIPSAMLib.slicer.dicom_export import UIDS_ATTRIBUTE, start_seg_export  # noqa: E402
from MedCLIPSAMLib.slicer.mrml import apply_result  # noqa: E402
from MedCLIPSAMLib.slicer.review import volume_from_sitk  # noqa: E402
from MedCLIPSAMLib.terminology import term_for  # noqa: E402

def node_from_series(scene, folder: Path, uids: bool = True):
    """A scalar volume of the series as Slicer's DICOM module loads it: ITK's grid (LPS to RAS), and the
    ``DICOM.instanceUIDs`` attribute (the files' SOPInstanceUIDs in the loader's slice order)."""
    volume = read_volume(folder)
    node = volume_from_sitk(scene, volume.reference, "brain MR")  # a 2D image: a one-slice volume
    if uids:
        node.SetAttribute(UIDS_ATTRIBUTE, " ".join(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
                                                   for f in volume.dicom_files))
    return node, volume


@pytest.fixture
def series(tmp_path):
    """A DICOM series written from the bundled sample (8 slices) and its database: UID -> file."""
    paths = write_series(sample_volume(), tmp_path / "series")
    database = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: str(p) for p in paths}
    return tmp_path / "series", database


def masks_for(shape) -> dict[str, np.ndarray]:
    tumour = np.zeros(shape, np.uint8)
    tumour[2:6, 20:50, 30:60] = 1
    tumour[7, 0, 0] = 1  # a lone voxel in the last slice's corner
    brain = np.zeros(shape, np.uint8)
    brain[1:7, 10:70, 10:70] = 1  # overlaps the tumour: a BINARY SEG keeps both
    return {"brain tumor": tumour, "brain": brain}


def read_back(path: Path, volume) -> tuple[hd.seg.Segmentation, np.ndarray]:
    seg = hd.seg.segread(str(path))
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in volume.dicom_files]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=False)
    return seg, np.moveaxis(pixels, -1, 0)  # (segments, k, j, i)


def test_export_writes_a_seg_with_the_segments_voxels_codes_and_source_instances(scene, series, tmp_path):
    folder, database = series
    node, volume = node_from_series(scene, folder)
    masks = masks_for(volume.array.shape)
    record = apply_result(scene, node, masks)
    segmentation = scene.GetNodeByID(record.segmentation_node_id)
    edited = masks["brain"].copy()
    edited[3, 10:30, 10:30] = 0  # the user erased a corner of "brain": corrected
    paint(scene, segmentation, record.segment_ids[1], node, edited)
    out = tmp_path / "out" / "result.dcm"
    job = start_seg_export(sys.executable, node, segmentation, out, database.get, record)
    result = job.wait(120)
    assert result == {"path": str(out), "segments": 2, "corrected": 1}
    seg, pixels = read_back(out, volume)
    np.testing.assert_array_equal(pixels[0], masks["brain tumor"])
    np.testing.assert_array_equal(pixels[1], edited)
    assert seg.SegmentationType == "BINARY"
    described = {d.SegmentNumber: d for d in seg.SegmentSequence}
    assert [described[n].SegmentLabel for n in (1, 2)] == ["brain tumor", "brain"]
    assert [described[n].SegmentAlgorithmType for n in (1, 2)] == ["AUTOMATIC", "SEMIAUTOMATIC"]
    term = term_for("brain tumor")
    coded = described[1].SegmentedPropertyTypeCodeSequence[0]
    assert (coded.CodingSchemeDesignator, coded.CodeValue) == term.type[:2]
    assert described[1].SegmentedPropertyCategoryCodeSequence[0].CodeValue == term.category[1]
    referenced = {item.ReferencedSOPInstanceUID for series_item in seg.ReferencedSeriesSequence
                  for item in series_item.ReferencedInstanceSequence}
    assert referenced == set(database)
    assert seg.StudyInstanceUID == pydicom.dcmread(volume.dicom_files[0], stop_before_pixels=True).StudyInstanceUID


def test_the_attribute_order_does_not_matter_files_are_matched_by_position(scene, series, tmp_path):
    folder, database = series
    node, volume = node_from_series(scene, folder)
    uids = node.GetAttribute(UIDS_ATTRIBUTE).split()
    node.SetAttribute(UIDS_ATTRIBUTE, " ".join(reversed(uids)))
    masks = masks_for(volume.array.shape)
    record = apply_result(scene, node, {"brain tumor": masks["brain tumor"]})
    segmentation = scene.GetNodeByID(record.segmentation_node_id)
    out = tmp_path / "result.dcm"
    start_seg_export(sys.executable, node, segmentation, out, database.get, record).wait(120)
    _, pixels = read_back(out, volume)
    np.testing.assert_array_equal(pixels[0], masks["brain tumor"])
    assert hd.seg.segread(str(out)).SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"


def test_a_volume_not_from_dicom_is_one_line_and_nothing_is_written(scene, series, tmp_path):
    folder, database = series
    node, volume = node_from_series(scene, folder, uids=False)
    record = apply_result(scene, node, masks_for(volume.array.shape))
    segmentation = scene.GetNodeByID(record.segmentation_node_id)
    out = tmp_path / "result.dcm"
    with pytest.raises(InputError, match=r"^'brain MR' was not loaded from DICOM, so a DICOM SEG has no images"):
        start_seg_export(sys.executable, node, segmentation, out, database.get, record)
    assert not out.exists() and list(tmp_path.iterdir()) == [folder]


def test_an_existing_file_is_never_replaced_and_a_missing_database_file_is_named(scene, series, tmp_path):
    folder, database = series
    node, volume = node_from_series(scene, folder)
    record = apply_result(scene, node, masks_for(volume.array.shape))
    segmentation = scene.GetNodeByID(record.segmentation_node_id)
    out = tmp_path / "result.dcm"
    out.write_bytes(b"earlier export")
    with pytest.raises(InputError, match="exists; choose another file name"):
        start_seg_export(sys.executable, node, segmentation, out, database.get, record)
    assert out.read_bytes() == b"earlier export"
    missing = next(iter(database))
    with pytest.raises(InputError, match=f"^The DICOM database has no file for instance {missing} of 'brain MR'"):
        start_seg_export(sys.executable, node, segmentation, tmp_path / "other.dcm",
                         lambda uid: "" if uid == missing else database[uid], record)


def test_a_volume_resampled_after_loading_is_refused_in_the_child_and_nothing_is_written(scene, series, tmp_path):
    folder, database = series
    node, volume = node_from_series(scene, folder)
    node.SetOrigin(*(np.array(node.GetOrigin()) + (0.0, 0.0, 1.3)))  # moved off the files' positions
    record = apply_result(scene, node, masks_for(volume.array.shape))
    segmentation = scene.GetNodeByID(record.segmentation_node_id)
    out = tmp_path / "result.dcm"
    job = start_seg_export(sys.executable, node, segmentation, out, database.get, record)
    with pytest.raises(MedCLIPSAMError, match=r"^The DICOM files of 'brain MR' do not match its grid"):
        job.wait(120)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["series"]


def test_without_the_engines_packages_the_export_says_what_to_install():
    from MedCLIPSAMLib.dependencies import REQUIREMENTS
    from MedCLIPSAMLib.slicer.dicom_export import check_writer_installed

    assert "highdicom" in REQUIREMENTS, "the install into Slicer's Python must bring the SEG writer"
    with pytest.raises(InputError, match=r"^Writing a DICOM SEG needs the engine's packages \(highdicom\)"):
        check_writer_installed(lambda name: None)
    check_writer_installed()  # installed here


def test_a_2d_ultrasound_image_exports_as_a_seg_of_its_one_instance(scene, tmp_path):
    from dicom_builders import write_2d

    pixels = (np.arange(60 * 80).reshape(60, 80) % 255).astype(np.int16)
    path = write_2d(pixels, tmp_path / "us" / "US1.dcm")
    node, volume = node_from_series(scene, path)
    mask = np.zeros((1, 60, 80), np.uint8)
    mask[0, 10:30, 20:50] = 1
    record = apply_result(scene, node, {"liver": mask})
    segmentation = scene.GetNodeByID(record.segmentation_node_id)
    out = tmp_path / "us.dcm"
    uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    start_seg_export(sys.executable, node, segmentation, out, {uid: str(path)}.get, record).wait(120)
    seg = hd.seg.segread(str(out))
    pixels_back = seg.get_pixels_by_source_instance(source_sop_instance_uids=[uid], combine_segments=True,
                                                    relabel=False)
    np.testing.assert_array_equal(pixels_back.reshape(mask.shape), mask)


def test_a_volume_from_one_multi_frame_object_is_refused_with_what_to_do(scene, series, tmp_path):
    folder, database = series
    node, volume = node_from_series(scene, folder)
    first = node.GetAttribute(UIDS_ATTRIBUTE).split()[0]
    node.SetAttribute(UIDS_ATTRIBUTE, first)  # as Slicer records an enhanced (multi-frame) object: one instance
    record = apply_result(scene, node, masks_for(volume.array.shape))
    segmentation = scene.GetNodeByID(record.segmentation_node_id)
    job = start_seg_export(sys.executable, node, segmentation, tmp_path / "mf.dcm", database.get, record)
    with pytest.raises(MedCLIPSAMError, match=r"^'brain MR' was loaded from one multi-frame DICOM object.*emf2sf"):
        job.wait(120)
    assert not (tmp_path / "mf.dcm").exists()
