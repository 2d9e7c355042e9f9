"""The review queue in a real MRML scene (slicer-core wheel): load, edit, accept, next, exclude."""
import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from MedCLIPSAMLib.errors import InputError  # noqa: E402
from MedCLIPSAMLib.slicer.mrml import array_from_volume, segment_style, segment_to_array  # noqa: E402
from MedCLIPSAMLib.slicer.review import (ACCEPT, CANCEL, DISCARD, NO_SALIENCY_NOTE, ReviewSession,  # noqa: E402
                                         UnsavedEditsError, leave_edited_case, show_case)
from MedCLIPSAMLib.review_state import pseudo_path, read_states  # noqa: E402
from test_mrml import scene, segmentation_converters  # noqa: E402,F401  (the MRML tests' fixtures)
from test_slicer_undo import paint  # noqa: E402
from review_cases import make_dataset, num_training, pseudo_label, read_label  # noqa: E402


@pytest.fixture
def views(scene):
    """The scene of the MRML tests plus the three slice views' nodes and a Segment Editor node, as in Slicer."""
    scene.RegisterNodeClass(slicer.vtkMRMLSegmentEditorNode())  # the Segmentations module registers it in Slicer
    editor = slicer.vtkMRMLSegmentEditorNode()
    editor.SetSingletonTag("SegmentEditor")  # the Segment Editor module's own node (SegmentEditor.py)
    scene.AddNode(editor)
    for name in ("Red", "Yellow", "Green"):
        scene.AddNewNodeByClass("vtkMRMLSliceNode").SetLayoutName(name)
        scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode").SetLayoutName(name)
    return scene


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path)


def replace_segment(session, mask: np.ndarray) -> None:
    """Edit the loaded segment as a Segment Editor effect does (replace its binary labelmap)."""
    loaded, scene = session.current, session.scene
    paint(scene, scene.GetNodeByID(loaded.segmentation_node_id), loaded.segment_id,
          scene.GetNodeByID(loaded.volume_node_id), mask)


def test_a_case_loads_as_image_editable_segment_and_entropy_overlay_on_the_file_geometry(scene, views, dataset):
    session = ReviewSession.open(scene, dataset, dataset.parents[1] / "predictions")
    loaded = session.load("a_high")
    volume = scene.GetNodeByID(loaded.volume_node_id)
    image = sitk.ReadImage(str(dataset / "imagesTr" / "a_high_0000.nii.gz"))
    np.testing.assert_array_equal(array_from_volume(volume), sitk.GetArrayFromImage(image))
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijk_to_ras)
    for ijk in ((0, 0, 0), (19, 15, 4), (7, 3, 2)):
        r, a, s, _ = ijk_to_ras.MultiplyPoint([*ijk, 1.0])
        assert image.TransformIndexToPhysicalPoint(ijk) == pytest.approx((-r, -a, s))
    segmentation_node = scene.GetNodeByID(loaded.segmentation_node_id)
    segment = segmentation_node.GetSegmentation().GetSegment(loaded.segment_id)
    assert segment.GetName() == "brain tumor"
    assert segment.GetColor() == pytest.approx(segment_style("brain tumor").color)
    tag = vtk.reference("")
    assert segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), tag) and "108369006" in str(tag)
    np.testing.assert_array_equal(segment_to_array(segmentation_node, loaded.segment_id, volume), pseudo_label(0))
    overlay = scene.GetNodeByID(loaded.overlay_node_id)
    assert overlay.GetName() == "brain tumor uncertainty" and array_from_volume(overlay).max() == pytest.approx(0.9)
    assert loaded.note == ""
    # centred on the label's centroid, and the views show the case
    k, j, i = (v.mean() for v in np.nonzero(pseudo_label(0)))
    assert loaded.center_ras == pytest.approx(ijk_to_ras.MultiplyPoint([i, j, k, 1.0])[:3])
    show_case(scene, loaded, 0.3)
    for index in range(3):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        assert composite.GetBackgroundVolumeID() == loaded.volume_node_id
        assert composite.GetForegroundVolumeID() == loaded.overlay_node_id
        assert composite.GetForegroundOpacity() == pytest.approx(0.3)
        slice_to_ras = scene.GetNthNodeByClass(index, "vtkMRMLSliceNode").GetSliceToRAS()
        assert [slice_to_ras.GetElement(r, 3) for r in range(3)] == pytest.approx(loaded.center_ras)
    editor = scene.GetSingletonNode("SegmentEditor", "vtkMRMLSegmentEditorNode")
    assert editor.GetSegmentationNode().GetID() == loaded.segmentation_node_id
    assert editor.GetSourceVolumeNode().GetID() == loaded.volume_node_id
    assert editor.GetSelectedSegmentID() == loaded.segment_id
    assert session.summary() == ("Dataset007_Vol: 7 of 7 cases to review (0 accepted, 0 excluded); ordered by "
                                 "nnU-Net entropy.")


def test_without_predictions_there_is_no_overlay_and_the_panel_says_why(scene, views, dataset):
    session = ReviewSession.open(scene, dataset)
    loaded = session.load("b_low")
    assert loaded.overlay_node_id is None and loaded.note == NO_SALIENCY_NOTE
    empty = session.load("d_empty")  # not in the set: the source image and an empty, editable segment
    segmentation_node = scene.GetNodeByID(empty.segmentation_node_id)
    assert segmentation_node.GetSegmentation().GetNumberOfSegments() == 1
    volume = scene.GetNodeByID(empty.volume_node_id)
    assert not segment_to_array(segmentation_node, empty.segment_id, volume).any()


def test_next_case_follows_the_queue_and_removes_the_previous_case_nodes(scene, views, dataset):
    session = ReviewSession.open(scene, dataset)
    with pytest.raises(InputError, match="image is missing"):
        session.load("f_lost")
    before = scene.GetNumberOfNodes()
    seen, counts, previous = [], [], None
    for _ in range(7):
        loaded = session.next_case()
        if previous is not None:
            assert all(scene.GetNodeByID(node_id) is None for node_id in previous.node_ids)
        seen.append((loaded.case, loaded.note.startswith("Passed over: Case 'f_lost': its image is missing")))
        counts.append(scene.GetNumberOfNodes())
        previous = loaded
    assert [case for case, _ in seen] == ["e_failed", "d_empty", "g_lowscore", "b_low", "c_mid", "a_high", "e_failed"]
    assert [passed for _, passed in seen] == [False, True, False, False, False, False, False]
    assert counts[0] > before and len(set(counts)) == 1, f"node count grows over cases: {counts}"
    session.exclude("f_lost")  # a case whose image is gone can still be taken out of the queue
    assert session.next_case().case == "d_empty" and "Passed over" not in session.current.note
    assert session.next_case().case == "g_lowscore"
    session.unload()
    assert scene.GetNumberOfNodes() == before


def test_accept_after_an_edit_writes_the_edited_segment_and_the_next_case_comes_up(scene, views, dataset):
    session = ReviewSession.open(scene, dataset)
    session.load("b_low")
    edited = pseudo_label(1)
    edited[3, 10:14, 2:6] = 1
    edited[1, 4:6, 5:8] = 0
    replace_segment(session, edited)
    entry = session.accept()
    np.testing.assert_array_equal(read_label(dataset, "b_low"), edited)
    label = sitk.ReadImage(str(dataset / "labelsTr" / "b_low.nii.gz"))
    image = sitk.ReadImage(str(dataset / "imagesTr" / "b_low_0000.nii.gz"))
    assert (label.GetOrigin(), label.GetSpacing(), label.GetDirection()) == \
        (image.GetOrigin(), image.GetSpacing(), image.GetDirection())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(pseudo_path(dataset, "b_low")))),
                                  pseudo_label(1))
    assert entry["changed"] and read_states(dataset)["b_low"]["state"] == "accepted"
    assert session.next_case().case == "c_mid", "after b_low in the queue; b_low itself is done"
    session.exclude()
    assert read_states(dataset)["c_mid"]["state"] == "excluded" and num_training(dataset) == 2
    assert session.summary() == ("Dataset007_Vol: 5 of 7 cases to review (1 accepted, 1 excluded); ordered by "
                                 "zero-shot score.")
    session.undo_exclude()
    assert num_training(dataset) == 3


def test_a_2d_case_round_trips_as_a_one_slice_volume(scene, views, tmp_path):
    folder = make_dataset(tmp_path, predictions=False)
    image = sitk.GetImageFromArray(np.arange(16 * 20, dtype=np.int16).reshape(16, 20))
    image.SetSpacing((0.5, 0.7))
    image.SetOrigin((3.0, 4.0))
    sitk.WriteImage(image, str(folder / "imagesTr" / "b_low_0000.nii.gz"))
    label = sitk.GetImageFromArray(pseudo_label(1)[2])
    label.CopyInformation(image)
    sitk.WriteImage(label, str(folder / "labelsTr" / "b_low.nii.gz"))
    session = ReviewSession.open(scene, folder)
    loaded = session.load("b_low")
    assert scene.GetNodeByID(loaded.volume_node_id).GetImageData().GetDimensions() == (20, 16, 1)
    mask = np.zeros((1, 16, 20), np.uint8)
    mask[0, 2:5, 3:9] = 1
    replace_segment(session, mask)
    session.accept()
    written = sitk.ReadImage(str(folder / "labelsTr" / "b_low.nii.gz"))
    stored = sitk.ReadImage(str(folder / "imagesTr" / "b_low_0000.nii.gz"))
    assert written.GetDimension() == 2 and written.GetSpacing() == stored.GetSpacing() == pytest.approx((0.5, 0.7))
    assert written.GetOrigin() == stored.GetOrigin() == (3.0, 4.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), mask[0])


def test_leaving_an_edited_case_is_refused_until_the_edit_is_accepted_or_discarded(scene, views, dataset):
    session = ReviewSession.open(scene, dataset)
    loaded = session.load("b_low")
    assert not session.has_unsaved_edits()
    edited = pseudo_label(1)
    edited[2, 3:9, 4:10] = 1
    replace_segment(session, edited)
    assert session.has_unsaved_edits()
    nodes = scene.GetNumberOfNodes()
    for leave in (lambda: session.next_case(), lambda: session.load("c_mid")):
        with pytest.raises(UnsavedEditsError, match="Case 'b_low' has edits that were not accepted"):
            leave()
        assert session.current is loaded and scene.GetNumberOfNodes() == nodes, "nothing changed"
    assert not leave_edited_case(session, CANCEL) and session.has_unsaved_edits()
    assert leave_edited_case(session, ACCEPT) and not session.has_unsaved_edits()
    np.testing.assert_array_equal(read_label(dataset, "b_low"), edited)
    assert session.next_case().case == "c_mid", "after Accept, leaving is free"


def test_discarding_leaves_the_case_and_the_dataset_as_they_were(scene, views, dataset):
    session = ReviewSession.open(scene, dataset)
    session.load("b_low")
    edited = pseudo_label(1)
    edited[:] = 0
    replace_segment(session, edited)
    assert leave_edited_case(session, DISCARD)
    assert session.load("c_mid", discard_edits=True).case == "c_mid"
    np.testing.assert_array_equal(read_label(dataset, "b_low"), pseudo_label(1))
    assert "b_low" not in read_states(dataset)


def test_an_unchanged_rewrite_or_another_segments_edit_is_not_an_edit(scene, views, dataset):
    session = ReviewSession.open(scene, dataset)
    loaded = session.load("b_low")
    replace_segment(session, pseudo_label(1))  # the stamp moves, the voxels stay
    assert not session.has_unsaved_edits()
    segmentation = scene.GetNodeByID(loaded.segmentation_node_id).GetSegmentation()
    other = segmentation.AddEmptySegment("", "other")
    assert not session.has_unsaved_edits()
    segmentation.RemoveSegment(loaded.segment_id)  # deleted: nothing left to keep
    assert not session.has_unsaved_edits() and other


def test_show_case_sets_only_the_segment_editor_modules_node(scene, views, dataset):
    own = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")  # another module's embedded editor
    theirs = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    own.SetAndObserveSegmentationNode(theirs)
    session = ReviewSession.open(scene, dataset)
    show_case(scene, session.load("b_low"))
    assert own.GetSegmentationNode() is theirs
    editor = scene.GetSingletonNode("SegmentEditor", "vtkMRMLSegmentEditorNode")
    assert editor.GetSegmentationNode().GetID() == session.current.segmentation_node_id


def test_show_case_makes_the_segment_editor_node_when_the_module_has_not(scene, dataset):
    scene.RegisterNodeClass(slicer.vtkMRMLSegmentEditorNode())
    session = ReviewSession.open(scene, dataset)
    loaded = session.load("b_low")
    show_case(scene, loaded)
    editor = scene.GetSingletonNode("SegmentEditor", "vtkMRMLSegmentEditorNode")
    assert editor is not None and editor.GetSelectedSegmentID() == loaded.segment_id
    show_case(scene, loaded)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentEditorNode") == 1
