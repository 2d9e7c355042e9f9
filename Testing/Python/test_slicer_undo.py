"""Undo per run, one overlay per volume, and prediction files on the wrong grid (real MRML, slicer-core)."""
import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from test_mrml import scene, segmentation_converters, volume_node  # noqa: E402,F401  (shared fixtures)
from MedCLIPSAMLib.slicer.mrml import (OVERLAY_ATTRIBUTE, ResultApplier, _volume_like, apply_result,  # noqa: E402
                                       array_from_volume, load_prediction, segment_to_array, volume_to_sitk)

SHAPE = (6, 40, 56)


def box_mask(*box) -> np.ndarray:
    mask = np.zeros(SHAPE, np.uint8)
    mask[box] = 1
    return mask


def paint(scene, node, segment_id, reference, mask) -> None:
    """A manual edit as the Segment Editor makes it: the segment's labelmap replaced through the logic."""
    labelmap = _volume_like(scene, "vtkMRMLLabelMapVolumeNode", mask, reference, "__edit")
    image = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(labelmap)
    scene.RemoveNode(labelmap)
    assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        image, node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)


def names(node) -> list:
    segmentation = node.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def test_undo_removes_only_the_runs_segment_and_keeps_later_edits_elsewhere(scene, volume_node):
    first = apply_result(scene, volume_node, {"liver": box_mask(slice(1, 3), slice(2, 8), slice(2, 9))})
    node = scene.GetNodeByID(first.segmentation_node_id)
    manual = node.GetSegmentation().AddEmptySegment("", "manual")
    run = apply_result(scene, volume_node, {"lesion": box_mask(slice(2, 5), slice(10, 20), slice(30, 45))}, node)
    edited = box_mask(slice(0, 6), slice(25, 35), slice(5, 15))
    paint(scene, node, manual, volume_node, edited)  # after the run, in another segment
    liver_before = segment_to_array(node, first.segment_ids[0], volume_node)

    assert run.undo_blocker() is None
    run.undo()
    assert names(node) == ["liver", "manual"]
    np.testing.assert_array_equal(segment_to_array(node, manual, volume_node), edited)
    np.testing.assert_array_equal(segment_to_array(node, first.segment_ids[0], volume_node), liver_before)
    assert run.undo_blocker() == "This run was already undone."


def test_undo_puts_back_a_replaced_segment_with_its_voxels_name_and_place(scene, volume_node):
    old = box_mask(slice(1, 4), slice(5, 10), slice(5, 10))
    first = apply_result(scene, volume_node, {"lesion": old, "liver": box_mask(3, slice(0, 4), slice(0, 4))})
    node = scene.GetNodeByID(first.segmentation_node_id)
    old_id, old_color = first.segment_ids[0], node.GetSegmentation().GetSegment(first.segment_ids[0]).GetColor()
    run = apply_result(scene, volume_node, {"lesion": np.ones(SHAPE, np.uint8)}, node, replace=True)
    assert names(node) == ["liver", "lesion"]
    later = box_mask(slice(0, 2), slice(30, 38), slice(40, 50))
    paint(scene, node, first.segment_ids[1], volume_node, later)  # the user edits 'liver' after the run

    run.undo()
    assert names(node) == ["lesion", "liver"]
    assert node.GetSegmentation().GetSegment(old_id).GetColor() == pytest.approx(old_color)
    np.testing.assert_array_equal(segment_to_array(node, old_id, volume_node), old)
    np.testing.assert_array_equal(segment_to_array(node, first.segment_ids[1], volume_node), later)


def test_undo_refuses_once_the_runs_own_segment_was_edited(scene, volume_node):
    run = apply_result(scene, volume_node, {"lesion": box_mask(slice(2, 5), slice(10, 20), slice(30, 45))})
    node = scene.GetNodeByID(run.segmentation_node_id)
    assert run.undo_blocker() is None
    corrected = box_mask(slice(2, 5), slice(10, 22), slice(30, 47))
    paint(scene, node, run.segment_ids[0], volume_node, corrected)
    reason = run.undo_blocker()
    assert reason.startswith("Segment 'lesion' was edited after the run") and "Segment Editor" in reason
    with pytest.raises(ValueError, match="edited after the run"):
        run.undo()
    np.testing.assert_array_equal(segment_to_array(node, run.segment_ids[0], volume_node), corrected)


def test_a_created_segmentation_stays_when_the_user_added_segments_to_it(scene, volume_node):
    run = apply_result(scene, volume_node, {"lesion": box_mask(2, slice(10, 20), slice(30, 45))})
    node = scene.GetNodeByID(run.segmentation_node_id)
    drawn = box_mask(slice(0, 6), slice(1, 5), slice(1, 5))
    manual = node.GetSegmentation().AddEmptySegment("", "drawn")
    paint(scene, node, manual, volume_node, drawn)
    run.undo()
    assert scene.IsNodePresent(node) and names(node) == ["drawn"]
    np.testing.assert_array_equal(segment_to_array(node, manual, volume_node), drawn)
    alone = apply_result(scene, volume_node, {"lesion": box_mask(2, slice(10, 20), slice(30, 45))})
    alone.undo()
    assert scene.GetNodeByID(alone.segmentation_node_id) is None


def test_one_overlay_per_volume_replaced_by_the_next_run_and_restored_by_undo(scene, volume_node):
    rng = np.random.default_rng(0)
    first_map, second_map = rng.random(SHAPE), rng.random(SHAPE)
    first = apply_result(scene, volume_node, {"lesion": box_mask(2, slice(1, 5), slice(1, 5))},
                         saliency={"lesion": first_map})
    node = scene.GetNodeByID(first.segmentation_node_id)
    second = apply_result(scene, volume_node, {"liver": box_mask(3, slice(1, 5), slice(1, 5))}, node,
                          saliency={"liver": second_map})
    overlays = [scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
                for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
    overlays = [o for o in overlays if o.GetAttribute(OVERLAY_ATTRIBUTE)]
    assert len(overlays) == 1 and first.created_node_ids == second.created_node_ids
    overlay = overlays[0]
    assert overlay.GetName() == "liver saliency"
    values = array_from_volume(overlay)
    assert values.dtype == np.uint8
    np.testing.assert_array_equal(values, np.round(second_map * 255).astype(np.uint8))
    assert overlay.GetDisplayNode().GetWindowLevelMax() == 255
    second.undo()
    assert overlay.GetName() == "lesion saliency"
    np.testing.assert_array_equal(array_from_volume(overlay), np.round(first_map * 255).astype(np.uint8))
    first.undo()
    assert not scene.IsNodePresent(overlay)


def test_a_rollback_between_steps_leaves_the_scene_as_it_was(scene, volume_node):
    before = scene.GetNumberOfNodes()
    applier = ResultApplier(scene, volume_node, {"a": box_mask(1, slice(1, 4), slice(1, 4)),
                                                 "b": box_mask(2, slice(1, 4), slice(1, 4))},
                            overlay=np.zeros(SHAPE, np.uint8))
    assert applier.steps == 6, "node, then import and fingerprint per segment, then the overlay"
    applier.step()
    applier.step()
    assert scene.GetNumberOfNodes() > before and not applier.finished
    applier.rollback()
    assert scene.GetNumberOfNodes() == before


@pytest.mark.parametrize("change, what", [
    (lambda image: image.SetOrigin((5.0, 5.0, 5.0)), "origin"),
    (lambda image: image.SetSpacing((0.6, 0.9, 2.0)), "spacing"),
    (lambda image: image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1)), "direction"),
])
def test_load_prediction_refuses_a_same_sized_file_on_another_grid(scene, volume_node, tmp_path, change, what):
    import SimpleITK as sitk

    image = volume_to_sitk(volume_node, box_mask(2, slice(1, 9), slice(1, 9)))
    sitk.WriteImage(image, str(tmp_path / "right.nii.gz"))
    change(image)
    sitk.WriteImage(image, str(tmp_path / "wrong.nii.gz"))
    before = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match=f"has {what} .* but volume 'patient' has .*another case or orientation"):
        load_prediction(scene, volume_node, tmp_path / "wrong.nii.gz")
    with pytest.raises(ValueError, match="Uncertainty map .* has"):
        load_prediction(scene, volume_node, tmp_path / "right.nii.gz", tmp_path / "wrong.nii.gz")
    assert scene.GetNumberOfNodes() == before
    record = load_prediction(scene, volume_node, tmp_path / "right.nii.gz")
    node = scene.GetNodeByID(record.segmentation_node_id)
    np.testing.assert_array_equal(segment_to_array(node, record.segment_ids[0], volume_node),
                                  box_mask(2, slice(1, 9), slice(1, 9)))
