"""Accept and Add to training set with the file work in a child process (real MRML, real files, real processes):
the same files as the one-go functions, the main thread only exports arrays, and a refusal is one line."""
import sys

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")

from test_mrml import scene, segmentation_converters, volume_node  # noqa: E402,F401  (shared fixtures)
from test_slicer_review import dataset, replace_segment, views  # noqa: E402,F401
from review_cases import pseudo_label, read_label  # noqa: E402
from MedCLIPSAMLib.errors import MedCLIPSAMError  # noqa: E402
from MedCLIPSAMLib.review.state import read_states  # noqa: E402
from MedCLIPSAMLib.slicer.file_jobs import start_accept, start_add_to_training_set  # noqa: E402
from MedCLIPSAMLib.slicer.mrml import add_to_training_set, apply_result, array_from_volume  # noqa: E402
from MedCLIPSAMLib.slicer.review import ReviewSession  # noqa: E402


def test_accept_in_a_child_process_writes_the_edited_label_and_counts_it_as_saved(scene, views, dataset):
    session = ReviewSession.open(scene, dataset)
    session.load("b_low")
    edited = pseudo_label(1)
    edited[3, 10:14, 2:6] = 1
    replace_segment(session, edited)
    assert session.has_unsaved_edits()
    job = start_accept(session, sys.executable)
    assert not job.finished
    entry = job.wait(120)
    assert entry["changed"] and entry["changed_voxels"] == int((edited != pseudo_label(1)).sum())
    np.testing.assert_array_equal(read_label(dataset, "b_low"), edited)
    assert read_states(dataset)["b_low"]["state"] == "accepted"
    assert not session.has_unsaved_edits(), "what is on screen is saved now"
    assert not job.folder.exists(), "the task's arrays are removed"


def test_a_refused_accept_is_one_line_and_the_edit_stays_unsaved(scene, views, dataset):
    session = ReviewSession.open(scene, dataset)
    session.load("c_mid")
    edited = pseudo_label(2)
    edited[:] = 0
    replace_segment(session, edited)
    session.exclude()
    job = start_accept(session, sys.executable)
    with pytest.raises(MedCLIPSAMError, match="^Case 'c_mid' is excluded from the training set; undo the exclusion"):
        job.wait(120)
    assert "\n" not in job.error and session.has_unsaved_edits()


def test_add_to_training_set_in_a_child_process_matches_the_one_go_export(scene, volume_node, tmp_path):
    mask = np.zeros((6, 40, 56), np.uint8)
    mask[1:4, 10:25, 5:30] = 1
    record = apply_result(scene, volume_node, {"lesion": mask})
    node = scene.GetNodeByID(record.segmentation_node_id)
    one_go = add_to_training_set(volume_node, node, record.segment_ids[0], tmp_path / "Dataset010_A", "case1",
                                 "lesion")
    job = start_add_to_training_set(sys.executable, volume_node, node, record.segment_ids[0],
                                    tmp_path / "Dataset011_B", "case1", "lesion")
    paths = job.wait(120)
    for ours, theirs in zip((paths["image"], paths["label"]), one_go):
        a, b = sitk.ReadImage(ours), sitk.ReadImage(str(theirs))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
        assert (a.GetSpacing(), a.GetOrigin(), a.GetDirection()) == (b.GetSpacing(), b.GetOrigin(), b.GetDirection())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(paths["image"])), array_from_volume(volume_node))
    again = start_add_to_training_set(sys.executable, volume_node, node, record.segment_ids[0],
                                      tmp_path / "Dataset011_B", "case1", "lesion")
    with pytest.raises(MedCLIPSAMError, match="case1"):
        again.wait(120)  # never a silent overwrite


def test_a_cancelled_job_stops_its_child(scene, volume_node, tmp_path):
    mask = np.zeros((6, 40, 56), np.uint8)
    record = apply_result(scene, volume_node, {"lesion": mask})
    job = start_add_to_training_set(sys.executable, volume_node, scene.GetNodeByID(record.segmentation_node_id),
                                    record.segment_ids[0], tmp_path / "Dataset012_C", "case1", "lesion")
    job.cancel()
    assert job.finished and job.error == "Cancelled." and job.poll()
    job.process.wait(10)
    assert not job.folder.exists()
