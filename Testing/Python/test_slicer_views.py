"""'Current slice' follows the slice view the user last pointed at (real MRML crosshair and slice nodes)."""
import pytest

slicer = pytest.importorskip("slicer")

from test_mrml import scene, segmentation_converters, volume_node  # noqa: E402,F401  (shared fixtures)
from MedCLIPSAMLib.pipeline import auto_device  # noqa: E402
from MedCLIPSAMLib.slicer.run import view_slice  # noqa: E402
from MedCLIPSAMLib.slicer.views import LastSliceView  # noqa: E402


def slice_node(scene, name: str, normal_axis: int):
    """A slice view whose normal is RAS axis ``normal_axis`` (2: axial, 0: sagittal)."""
    node = slicer.vtkMRMLSliceNode()
    node.SetName(name)
    node.SetLayoutName(name)
    node.SetSingletonTag(name)
    scene.AddNode(node)
    in_plane = [axis for axis in range(3) if axis != normal_axis]
    matrix = node.GetSliceToRAS()
    for column, axis in enumerate(in_plane + [normal_axis]):
        for row in range(3):
            matrix.SetElement(row, column, 1.0 if row == axis else 0.0)
    return node


def test_the_last_slice_view_pointed_at_is_remembered_after_the_mouse_leaves(scene, volume_node):
    red = slice_node(scene, "Red", 2)
    yellow = slice_node(scene, "Yellow", 0)
    crosshair = scene.AddNewNodeByClass("vtkMRMLCrosshairNode")
    views = LastSliceView(scene, crosshair)
    assert views.slice_node() is red, "Red until the user points at a view"
    crosshair.SetCursorPositionXYZ([10.0, 20.0, 0.0], yellow)
    crosshair.SetCursorPositionInvalid()  # the mouse leaves the view for the panel's Segment button
    assert views.slice_node() is yellow
    assert view_slice(volume_node, views.slice_node().GetSliceToRAS())[0] != view_slice(
        volume_node, red.GetSliceToRAS())[0], "a sagittal view picks another volume axis than the axial one"
    scene.RemoveNode(yellow)
    assert views.slice_node() is red, "a view that left the scene falls back to Red"
    views.stop()
    crosshair.SetCursorPositionXYZ([1.0, 2.0, 0.0], yellow)
    assert views.slice_node() is red


def test_auto_device_prefers_cuda_then_apples_metal_then_the_cpu():
    assert auto_device(cuda=True, mps=True) == "cuda"
    assert auto_device(cuda=False, mps=True) == "mps"
    assert auto_device(cuda=False, mps=False) == "cpu"
