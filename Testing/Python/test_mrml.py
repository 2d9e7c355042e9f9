"""Slicer glue with the real MRML and Segmentations classes of the slicer-core wheel."""
import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from conftest import disk_image  # noqa: E402
from MedCLIPSAMLib.slicer.mrml import (add_saliency_volume, apply_result, array_from_volume,  # noqa: E402
                                       segment_style, segment_to_array)
from MedCLIPSAMLib.slicer.run import read_input, view_slice  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def segmentation_converters():
    """The conversion rules the Slicer application registers when its Segmentations module starts."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    for rule in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
                 slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule):
        factory.RegisterConverterRule(rule())


@pytest.fixture
def scene():
    """A scene with the default colour tables, as the Slicer application sets it up."""
    scene = slicer.vtkMRMLScene()
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)
    yield scene
    colors.SetMRMLScene(None)


@pytest.fixture
def volume_node(scene):
    """An anisotropic, obliquely oriented volume (IJK axes not aligned with RAS)."""
    array = np.stack([disk_image(40, 56, (18, 30), 9, seed=z) for z in range(6)]).astype(np.int16)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "patient")
    image = vtk.vtkImageData()
    image.SetDimensions(56, 40, 6)
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    from vtk.util import numpy_support
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = array.ravel()
    node.SetAndObserveImageData(image)
    node.SetSpacing(0.6, 0.9, 3.0)
    node.SetOrigin(-10.0, 25.0, 4.0)
    a = np.deg2rad(25)
    directions = vtk.vtkMatrix4x4()
    rotation = [[np.cos(a), 0, np.sin(a)], [0, -1, 0], [-np.sin(a), 0, np.cos(a)]]
    for r in range(3):
        for c in range(3):
            directions.SetElement(r, c, rotation[r][c])
    node.SetIJKToRASDirectionMatrix(directions)
    return node


def test_mask_reads_back_voxel_identical_through_slicer_export(scene, volume_node):
    mask = np.zeros((6, 40, 56), np.uint8)
    mask[2:5, 10:20, 30:45] = 1
    mask[3, 35, 2] = 1  # a lone voxel near a corner
    record = apply_result(scene, volume_node, {"brain tumor": mask})
    segmentation_node = scene.GetNodeByID(record.segmentation_node_id)
    (segment_id,) = record.segment_ids
    np.testing.assert_array_equal(segment_to_array(segmentation_node, segment_id, volume_node), mask)
    nodes_before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}  # after the first export:
    segment_to_array(segmentation_node, segment_id, volume_node)  # it may add the subject hierarchy singleton
    segment_to_array(segmentation_node, segment_id, volume_node)
    nodes_after = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    assert nodes_after == nodes_before, nodes_after ^ nodes_before  # no labelmap, display or colour table left
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    assert segment.GetName() == "brain tumor"
    style = segment_style("brain tumor")
    assert segment.GetColor() == pytest.approx(style.color)
    tag = vtk.reference("")
    assert segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), tag) and "108369006" in str(tag)
    assert str(tag).startswith("Segmentation category and type - DICOM master list~"), "Neoplasm's list"
    assert segment_style("liver").terminology.startswith("Segmentation category and type - 3D Slicer General")
    assert segment_style("lesion").terminology is None and segment_style("lesion").color




def test_existing_segments_survive_and_names_do_not_clash(scene, volume_node):
    first = np.zeros((6, 40, 56), np.uint8)
    first[1, 5:10, 5:10] = 1
    record = apply_result(scene, volume_node, {"lesion": first})
    node = scene.GetNodeByID(record.segmentation_node_id)
    second = np.zeros_like(first)
    second[4, 20:30, 20:30] = 1
    again = apply_result(scene, volume_node, {"lesion": second, "liver": np.zeros_like(first)}, node)
    segmentation = node.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(3)] == ["lesion", "lesion 2", "liver"]
    np.testing.assert_array_equal(segment_to_array(node, record.segment_ids[0], volume_node), first)
    np.testing.assert_array_equal(segment_to_array(node, again.segment_ids[0], volume_node), second)


def test_undo_restores_the_scene_in_one_step(scene, volume_node):
    base = np.zeros((6, 40, 56), np.uint8)
    base[1, 5:10, 5:10] = 1
    node = scene.GetNodeByID(apply_result(scene, volume_node, {"lesion": base}).segmentation_node_id)
    nodes_before = scene.GetNumberOfNodes()
    record = apply_result(scene, volume_node, {"lesion": np.ones_like(base)}, node, replace=True,
                          saliency={"lesion": np.random.default_rng(0).random((6, 40, 56))})
    assert node.GetSegmentation().GetNumberOfSegments() == 1 and scene.GetNumberOfNodes() == nodes_before + 2
    record.undo()
    assert scene.GetNumberOfNodes() == nodes_before
    (segment_id,) = node.GetSegmentation().GetSegmentIDs()
    np.testing.assert_array_equal(segment_to_array(node, segment_id, volume_node), base)


def test_failed_apply_leaves_no_trace(scene, volume_node):
    nodes_before = scene.GetNumberOfNodes()
    good = np.zeros((6, 40, 56), np.uint8)
    with pytest.raises(ValueError, match="has shape"):
        apply_result(scene, volume_node, {"a": good}, saliency={"a": np.zeros((2, 2, 2))})
    assert scene.GetNumberOfNodes() == nodes_before


def test_saliency_volume_has_the_reference_geometry_and_a_heat_map(scene, volume_node):
    values = np.random.default_rng(1).random((6, 40, 56)).astype(np.float32)
    node = add_saliency_volume(scene, volume_node, values, "tumor saliency")
    a, b = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(a)
    volume_node.GetIJKToRASMatrix(b)
    assert all(a.GetElement(r, c) == pytest.approx(b.GetElement(r, c)) for r in range(4) for c in range(4))
    np.testing.assert_array_equal(array_from_volume(node), values)
    assert node.GetDisplayNode().GetColorNodeID() == "vtkMRMLPETProceduralColorNodePET-Heat"


def test_view_slice_picks_the_axis_along_the_view_normal(volume_node):
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    slice_to_ras = vtk.vtkMatrix4x4()
    for r in range(3):  # a view whose normal is the volume's k axis, centred on slice 4
        slice_to_ras.SetElement(r, 2, ijk_to_ras.GetElement(r, 2))
        slice_to_ras.SetElement(r, 3, ijk_to_ras.MultiplyPoint([20, 10, 4, 1])[r])
    assert view_slice(volume_node, slice_to_ras) == (0, 4)


def test_volume_to_sitk_maps_every_voxel_to_the_same_point(volume_node):
    from MedCLIPSAMLib.slicer.mrml import volume_to_sitk

    image = volume_to_sitk(volume_node, array_from_volume(volume_node))
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    for ijk in ((0, 0, 0), (55, 39, 5), (10, 20, 3)):
        r, a, s, _ = ijk_to_ras.MultiplyPoint([*ijk, 1.0])
        assert image.TransformIndexToPhysicalPoint(ijk) == pytest.approx((-r, -a, s))


def test_edited_segment_goes_to_the_training_set_and_prediction_comes_back(scene, volume_node, tmp_path):
    import SimpleITK as sitk
    from MedCLIPSAMLib.slicer.mrml import add_to_training_set, load_prediction

    mask = np.zeros((6, 40, 56), np.uint8)
    mask[1:4, 10:25, 5:30] = 1
    record = apply_result(scene, volume_node, {"lesion": mask})
    node = scene.GetNodeByID(record.segmentation_node_id)
    image_path, label_path = add_to_training_set(volume_node, node, record.segment_ids[0],
                                                 tmp_path / "Dataset010_Lesion", "case1", "lesion")
    label = sitk.ReadImage(str(label_path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), mask)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(image_path))),
                                  array_from_volume(volume_node))
    # a prediction written on the exported grid loads back voxel-identical, with its entropy overlay
    entropy = sitk.GetImageFromArray(np.full((6, 40, 56), 0.25, np.float32))
    entropy.CopyInformation(label)
    sitk.WriteImage(entropy, str(tmp_path / "entropy.nii.gz"))
    loaded = load_prediction(scene, volume_node, label_path, tmp_path / "entropy.nii.gz", name="nnU-Net lesion")
    loaded_node = scene.GetNodeByID(loaded.segmentation_node_id)
    np.testing.assert_array_equal(segment_to_array(loaded_node, loaded.segment_ids[0], volume_node), mask)
    overlay = scene.GetNodeByID(loaded.created_node_ids[0])
    assert overlay.GetName() == "nnU-Net lesion uncertainty"
    assert array_from_volume(overlay).max() == pytest.approx(0.25)


def test_the_selected_segment_is_the_segment_editors_choice_in_this_segmentation_only(scene, volume_node):
    from MedCLIPSAMLib.slicer.mrml import selected_segment_id

    mask = np.zeros((6, 40, 56), np.uint8)
    mask[2, 10:20, 10:20] = 1
    first = scene.GetNodeByID(apply_result(scene, volume_node, {"a": mask, "b": mask}).segmentation_node_id)
    other = scene.GetNodeByID(apply_result(scene, volume_node, {"c": mask}).segmentation_node_id)
    a_id, b_id = (first.GetSegmentation().GetNthSegmentID(i) for i in range(2))
    assert selected_segment_id(scene, first) == b_id  # no editor yet: the last segment
    scene.RegisterNodeClass(slicer.vtkMRMLSegmentEditorNode())  # as Slicer's Segmentations module does at start-up
    embedded = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")  # another module's editor: not the user's
    embedded.SetAndObserveSegmentationNode(first)
    embedded.SetSelectedSegmentID(a_id)
    assert selected_segment_id(scene, first) == b_id
    editor = slicer.vtkMRMLSegmentEditorNode()
    editor.SetSingletonTag("SegmentEditor")
    editor = scene.AddNode(editor)
    editor.SetAndObserveSegmentationNode(first)
    editor.SetSelectedSegmentID(a_id)
    assert selected_segment_id(scene, first) == a_id
    assert selected_segment_id(scene, other) == other.GetSegmentation().GetNthSegmentID(0)  # it edits another one
