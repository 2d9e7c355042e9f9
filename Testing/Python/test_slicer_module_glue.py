"""Glue behind the panel's fixes (issue 34), on real MRML (slicer-core): corrections that show in the views, the
preselected input volume, and the Segment Editor's Undo around the module's writes (Slicer's own
``vtkSegmentationHistory``, the class the Segment Editor widget keeps its undo states in)."""
import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from test_mrml import scene, segmentation_converters, volume_node  # noqa: E402,F401  (shared fixtures)
from test_slicer_undo import box_mask, paint  # noqa: E402
from MedCLIPSAMLib.client import EngineClient  # noqa: E402
from MedCLIPSAMLib.slicer.correct import Correction, prepare_target  # noqa: E402
from MedCLIPSAMLib.slicer.editor_undo import before_write_hook, save_editor_undo_state  # noqa: E402
from MedCLIPSAMLib.slicer.mrml import apply_result, default_input_volume, segment_to_array  # noqa: E402
from MedCLIPSAMLib.slicer.segment_slices import write_slices  # noqa: E402


def test_a_correction_on_a_segmentation_made_by_the_selector_is_shown(scene, volume_node):
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")  # what "Create new Segmentation" makes
    assert node.GetDisplayNode() is None
    prepare_target(node)
    display = node.GetDisplayNode()
    assert display is not None and display.IsA("vtkMRMLSegmentationDisplayNode") and display.GetVisibility()
    assert node.GetSegmentation().GetNumberOfSegments() == 1
    prepare_target(node)
    assert node.GetNumberOfDisplayNodes() == 1 and node.GetSegmentation().GetNumberOfSegments() == 1


def test_the_preselected_input_is_an_image_never_a_labelmap_or_an_overlay(scene, volume_node):
    mask = box_mask(slice(1, 3), slice(2, 8), slice(2, 9))
    saliency = np.zeros(mask.shape, np.float32)
    saliency[2, 5, 5] = 1.0
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "a labelmap")
    scene.RemoveNode(volume_node)  # the scene's order: labelmap, then the overlay, then the image
    assert default_input_volume(scene) is None
    image = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "image")
    image.Copy(volume_node)
    image.SetAndObserveImageData(volume_node.GetImageData())
    record = apply_result(scene, image, {"liver": mask}, None, {"liver": saliency})
    overlay = scene.GetNodeByID(record.created_node_ids[0])
    scene.RemoveNode(image)
    assert scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode") is labelmap, "what the panel used to pick"
    assert default_input_volume(scene) is None and overlay is not None
    scene.AddNode(image)
    assert default_input_volume(scene) is image


class SegmentEditorLike:
    """The two calls the Segment Editor widget offers for this (segmentationNode, saveStateForUndo), over
    Slicer's real undo history, which is what the widget's own calls drive."""

    def __init__(self, node):
        self.node = node
        self.history = slicer.vtkSegmentationHistory()
        self.history.SetSegmentation(node.GetSegmentation())

    def segmentationNode(self):
        return self.node

    def saveStateForUndo(self):
        self.history.SaveState()

    def stroke(self, scene, segment_id, reference, mask):
        """An effect's stroke: the editor saves a state, then paints."""
        self.saveStateForUndo()
        paint(scene, self.node, segment_id, reference, mask)


def two_segments(scene, volume_node):
    record = apply_result(scene, volume_node, {"liver": box_mask(slice(1, 3), slice(2, 8), slice(2, 9)),
                                               "lesion": box_mask(slice(2, 4), slice(20, 30), slice(30, 40))})
    return scene.GetNodeByID(record.segmentation_node_id), record.segment_ids


@pytest.mark.parametrize("saved", [False, True])
def test_ctrl_z_after_a_module_write_takes_back_that_write_alone_once_a_state_is_saved(scene, volume_node, saved):
    node, (liver, lesion) = two_segments(scene, volume_node)
    editor = SegmentEditorLike(node)
    stroke = box_mask(slice(0, 6), slice(10, 14), slice(10, 14))
    editor.stroke(scene, liver, volume_node, stroke)  # the user's last stroke
    correction = box_mask(slice(3, 4), slice(20, 25), slice(30, 35))
    if saved:
        assert save_editor_undo_state(editor, node)
    write_slices(node, lesion, volume_node, 0, {3: correction[3]})  # the module's write (a correction)
    assert editor.history.RestorePreviousState()  # Ctrl+Z in the Segment Editor
    lesion_now, liver_now = (segment_to_array(node, s, volume_node) for s in (lesion, liver))
    if saved:  # only the correction is gone; the stroke stays
        np.testing.assert_array_equal(liver_now, stroke)
        np.testing.assert_array_equal(lesion_now, box_mask(slice(2, 4), slice(20, 30), slice(30, 40)))
    else:  # the defect: the stroke and the correction go together
        np.testing.assert_array_equal(liver_now, box_mask(slice(1, 3), slice(2, 8), slice(2, 9)))


def test_no_state_is_saved_in_an_editor_of_another_segmentation(scene, volume_node):
    node, _ = two_segments(scene, volume_node)
    other, _ = two_segments(scene, volume_node)
    editor = SegmentEditorLike(other)
    assert not save_editor_undo_state(editor, node) and editor.history.GetNumberOfStates() == 0
    assert not save_editor_undo_state(None, node)
    hook = before_write_hook(lambda: [editor, SegmentEditorLike(node)], other)
    hook()
    assert editor.history.GetNumberOfStates() == 1


def test_a_correction_saves_the_editor_state_right_before_it_writes(scene, volume_node, engine_server):
    node, (liver, lesion) = two_segments(scene, volume_node)
    editor = SegmentEditorLike(node)
    seen = []

    def before_write():
        seen.append(segment_to_array(node, lesion, volume_node).copy())
        save_editor_undo_state(editor, node)

    before = segment_to_array(node, lesion, volume_node)
    correction = Correction(EngineClient(engine_server.url, engine_server.token), scene, volume_node, node, lesion,
                            axis=0, before_write=before_write)
    correction.wait()
    correction.box(3, (20, 8, 40, 28))
    correction.wait()
    assert not correction.error, correction.error
    after = segment_to_array(node, lesion, volume_node)
    assert len(seen) == 1 and not np.array_equal(after, before)
    np.testing.assert_array_equal(seen[0], before)
    editor.history.RestorePreviousState()
    np.testing.assert_array_equal(segment_to_array(node, lesion, volume_node), before)
    correction.close()
