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
from MedCLIPSAMLib.review_state import read_states  # noqa: E402
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


def drive(load, timeout: float = 120.0) -> int:
    """What the panel's timer does; returns the number of steps."""
    import time

    steps, deadline = 0, time.monotonic() + timeout
    while not load.step():
        assert time.monotonic() < deadline
        steps += 1
        time.sleep(0.01)
    return steps


def prediction_files(tmp_path, volume_node):
    from MedCLIPSAMLib.slicer.mrml import volume_to_sitk

    mask = np.zeros((6, 40, 56), np.uint8)
    mask[1:4, 10:25, 5:30] = 1
    entropy = np.zeros(mask.shape, np.float32)
    entropy[2, 12:14, 6:9] = 0.75
    sitk.WriteImage(volume_to_sitk(volume_node, mask), str(tmp_path / "mask.nii.gz"))
    sitk.WriteImage(volume_to_sitk(volume_node, entropy), str(tmp_path / "entropy.nii.gz"))
    return mask, tmp_path / "mask.nii.gz", tmp_path / "entropy.nii.gz"


def test_a_prediction_read_in_a_child_process_is_applied_step_by_step_like_the_one_go_load(scene, volume_node,
                                                                                          tmp_path):
    from MedCLIPSAMLib.slicer.file_jobs import PredictionLoad
    from MedCLIPSAMLib.slicer.mrml import segment_to_array

    mask, mask_path, entropy_path = prediction_files(tmp_path, volume_node)
    target = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    calls = []
    load = PredictionLoad(sys.executable, scene, volume_node, mask_path, entropy_path, "nnU-Net", target,
                          before_write=lambda: calls.append(target.GetSegmentation().GetNumberOfSegments()))
    assert drive(load) > 2 and not load.error, load.error
    assert calls == [0], "the undo state is saved once, before the first write"
    record = load.record
    np.testing.assert_array_equal(segment_to_array(target, record.segment_ids[0], volume_node), mask)
    overlay = scene.GetNodeByID(record.created_node_ids[0])
    assert overlay.GetName() == "nnU-Net uncertainty" and array_from_volume(overlay).max() == pytest.approx(0.75)
    assert not load.job.folder.exists()
    record.undo()
    assert target.GetSegmentation().GetNumberOfSegments() == 0


def test_a_prediction_for_another_grid_or_a_removed_volume_adds_nothing(scene, volume_node, tmp_path):
    from MedCLIPSAMLib.slicer.file_jobs import PredictionLoad

    _, mask_path, _ = prediction_files(tmp_path, volume_node)
    other = sitk.GetImageFromArray(np.zeros((6, 40, 57), np.uint8))
    sitk.WriteImage(other, str(tmp_path / "other.nii.gz"))
    nodes = scene.GetNumberOfNodes()
    wrong = PredictionLoad(sys.executable, scene, volume_node, tmp_path / "other.nii.gz")
    drive(wrong)
    assert wrong.error.startswith("Prediction '") and "has shape (6, 40, 57)" in wrong.error and "\n" not in wrong.error
    load = PredictionLoad(sys.executable, scene, volume_node, mask_path)
    while load.applier is None and not load.finished:
        load.step()
    load.step()  # the segmentation node is made
    scene.RemoveNode(volume_node)
    drive(load)
    assert load.error == "The input volume was removed while the prediction loaded; nothing was added."
    assert scene.GetNumberOfNodes() == nodes - 1


def test_a_review_case_read_in_a_child_process_is_placed_step_by_step_like_the_one_go_load(scene, views, dataset):
    from MedCLIPSAMLib.slicer.file_jobs import CaseLoad
    from MedCLIPSAMLib.slicer.mrml import segment_to_array

    predictions = dataset.parents[1] / "predictions"
    one_go = ReviewSession.open(scene, dataset, predictions).load("a_high")
    expected = {"center": one_go.center_ras, "note": one_go.note}
    session = ReviewSession.open(scene, dataset, predictions)
    load = CaseLoad(session, sys.executable, "a_high")
    assert drive(load) > 3 and not load.error, load.error
    loaded = load.loaded
    assert loaded is session.current and loaded.case == "a_high"
    assert loaded.center_ras == pytest.approx(expected["center"]) and loaded.note == expected["note"]
    volume = scene.GetNodeByID(loaded.volume_node_id)
    image = sitk.ReadImage(str(dataset / "imagesTr" / "a_high_0000.nii.gz"))
    np.testing.assert_array_equal(array_from_volume(volume), sitk.GetArrayFromImage(image))
    node = scene.GetNodeByID(loaded.segmentation_node_id)
    np.testing.assert_array_equal(segment_to_array(node, loaded.segment_id, volume), pseudo_label(0))
    assert scene.GetNodeByID(loaded.overlay_node_id).GetName() == "brain tumor uncertainty"
    assert not session.has_unsaved_edits()
    replace_segment(session, np.zeros_like(pseudo_label(0)))
    from MedCLIPSAMLib.slicer.review import UnsavedEditsError

    with pytest.raises(UnsavedEditsError):
        CaseLoad(session, sys.executable, "b_low")


def test_a_broken_case_or_a_cancel_leaves_the_scene_as_it_was(scene, views, dataset):
    from MedCLIPSAMLib.slicer.file_jobs import CaseLoad

    session = ReviewSession.open(scene, dataset)
    empty = scene.GetNumberOfNodes()
    session.load("b_low")
    nodes = scene.GetNumberOfNodes()
    lost = CaseLoad(session, sys.executable, "f_lost")
    drive(lost)
    assert lost.error.startswith("Case 'f_lost': its image is missing") and session.current.case == "b_low"
    assert scene.GetNumberOfNodes() == nodes
    load = CaseLoad(session, sys.executable, "c_mid")
    while load._placing is None:
        load.step()
    load.step()
    load.step()  # the previous case is gone, the new image is there
    load.cancel()
    assert load.error == "Cancelled." and session.current is None
    assert scene.GetFirstNodeByName("c_mid") is None and scene.GetNumberOfNodes() == empty


def test_next_case_in_the_background_passes_over_a_case_that_cannot_be_read(scene, views, dataset):
    from MedCLIPSAMLib.slicer.file_jobs import CaseLoad

    session = ReviewSession.open(scene, dataset)
    session.load("e_failed")
    expected = ReviewSession.open(slicer.vtkMRMLScene(), dataset)
    expected.load("e_failed")
    order = session.upcoming_cases()
    assert order[:2] == ["f_lost", "d_empty"] and order == expected.upcoming_cases()
    load = CaseLoad(session, sys.executable, order)
    drive(load)
    assert load.loaded.case == "d_empty" and load.loaded.note.startswith("Passed over: Case 'f_lost': its image is")
    done = CaseLoad(session, sys.executable, [])
    assert done.finished and done.loaded is None and not done.error


def test_accept_of_a_dicom_case_in_the_child_process_writes_its_seg_too(scene, views, dataset):
    from test_review_dicom_seg import as_dicom_case, seg_voxels
    from MedCLIPSAMLib.review_state import accepted_seg_path

    series = as_dicom_case(dataset, "c_mid")
    session = ReviewSession.open(scene, dataset)
    session.load("c_mid")
    edited = pseudo_label(2)
    edited[3, 10:14, 2:6] = 1
    replace_segment(session, edited)
    entry = start_accept(session, sys.executable).wait(120)
    assert entry["seg"] == str(accepted_seg_path(dataset, "c_mid"))
    seg, voxels = seg_voxels(accepted_seg_path(dataset, "c_mid"), series)
    np.testing.assert_array_equal(voxels, edited)
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
