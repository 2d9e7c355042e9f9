"""Qt-free Slicer glue: engine results into MRML nodes, all-or-nothing, undoable as one step.

Arrays are in the reference volume's (k, j, i) voxel order (what ``slicer.util.arrayFromVolume``
returns and what the engine works in), and every node gets the reference's IJK-to-RAS
matrix, so no RAS/LPS conversion happens anywhere and results cannot come out flipped.
Runs in the real Slicer application and, for the tests, with the ``slicer-core`` wheel.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import vtk
from vtk.util import numpy_support

from ..resources import resource_path

SALIENCY_COLOR_NODES = ("vtkMRMLPETProceduralColorNodePET-Heat", "vtkMRMLColorTableNodeRainbow")
TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"


def _slicer():
    import slicer
    return slicer


def array_from_volume(volume_node) -> np.ndarray:
    """A copy of the voxels in (k, j, i) order."""
    image = volume_node.GetImageData()
    if image is None:
        raise ValueError(f"Volume '{volume_node.GetName()}' has no image data.")
    dims = image.GetDimensions()
    components = image.GetNumberOfScalarComponents()
    values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    shape = (dims[2], dims[1], dims[0]) + ((components,) if components > 1 else ())
    return values.reshape(shape).copy()


def spacing_kji(volume_node) -> tuple[float, float, float]:
    return tuple(reversed(volume_node.GetSpacing()))


def _image_data(array: np.ndarray) -> vtk.vtkImageData:
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=True)
    image.GetPointData().SetScalars(scalars)
    return image


def _volume_like(scene, node_class: str, array: np.ndarray, reference, name: str):
    """A new volume node on the reference's exact grid (IJK-to-RAS copied, not recomputed)."""
    node = scene.AddNewNodeByClass(node_class, name)
    matrix = vtk.vtkMatrix4x4()
    reference.GetIJKToRASMatrix(matrix)
    node.SetIJKToRASMatrix(matrix)
    node.SetAndObserveImageData(_image_data(array))
    if reference.GetParentTransformNode() is not None:
        node.SetAndObserveTransformNodeID(reference.GetParentTransformNode().GetID())
    return node


def _check_shape(array: np.ndarray, reference, what: str) -> None:
    expected = tuple(reversed(reference.GetImageData().GetDimensions()))
    if array.shape != expected:
        raise ValueError(f"{what} has shape {array.shape} but volume '{reference.GetName()}' has {expected}.")


@dataclass
class SegmentStyle:
    color: tuple[float, float, float]
    terminology: str | None = None


def segment_style(name: str) -> SegmentStyle | None:
    """Colour and terminology entry for a prompt that names a known structure, else None."""
    table = json.loads(resource_path("terminology.json").read_text())
    entry = table.get(name.strip().lower())
    if entry is None:
        return None
    (cs, cv, cm), (ts, tv, tm) = entry["category"], entry["type"]
    context = entry.get("list", TERMINOLOGY_CONTEXT)
    if context is None:
        return SegmentStyle(tuple(entry["color"]))
    terminology = f"{context}~{cs}^{cv}^{cm}~{ts}^{tv}^{tm}~^^~Anatomic codes - DICOM master list~^^~^^"
    return SegmentStyle(tuple(entry["color"]), terminology)


def unique_segment_name(segmentation, name: str) -> str:
    taken = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
    if name not in taken:
        return name
    number = 2
    while f"{name} {number}" in taken:
        number += 1
    return f"{name} {number}"


@dataclass
class RunRecord:
    """What one run changed; ``undo`` puts the scene back as it was before the run."""

    scene: object
    segmentation_node_id: str
    created_segmentation_node: bool
    snapshot: object | None
    created_node_ids: list[str] = field(default_factory=list)
    segment_ids: list[str] = field(default_factory=list)

    def undo(self) -> None:
        node = self.scene.GetNodeByID(self.segmentation_node_id)
        if node is not None:
            if self.created_segmentation_node:
                remove_node(self.scene, node)
            elif self.snapshot is not None:
                node.GetSegmentation().DeepCopy(self.snapshot)
        for node_id in self.created_node_ids:
            created = self.scene.GetNodeByID(node_id)
            if created is not None:
                remove_node(self.scene, created)
        self.created_node_ids.clear()


def remove_node(scene, node) -> None:
    """Remove a node with the display and storage nodes it brought along."""
    helpers = []
    for getter in ("GetNumberOfDisplayNodes", "GetNumberOfStorageNodes"):
        count = getattr(node, getter, lambda: 0)()
        nth = getattr(node, getter.replace("GetNumberOf", "GetNth")[:-1])
        helpers += [nth(i) for i in range(count)]
    scene.RemoveNode(node)
    for helper in helpers:
        if helper is not None and scene.IsNodePresent(helper):
            scene.RemoveNode(helper)


def _add_segment(scene, logic, segmentation_node, reference, name: str, mask: np.ndarray) -> str:
    """Import one binary mask as a new segment; returns its ID."""
    segmentation = segmentation_node.GetSegmentation()
    before = set(segmentation.GetSegmentIDs())
    if mask.any():
        labelmap = _volume_like(scene, "vtkMRMLLabelMapVolumeNode", mask.astype(np.uint8), reference, name)
        try:
            if not logic.ImportLabelmapToSegmentationNode(labelmap, segmentation_node, ""):
                raise RuntimeError(f"Slicer could not import the mask of '{name}' as a segment.")
        finally:
            remove_node(scene, labelmap)
        (segment_id,) = set(segmentation.GetSegmentIDs()) - before
        segmentation.GetSegment(segment_id).SetName(name)
        return segment_id
    return segmentation.AddEmptySegment("", name)


def apply_result(scene, reference, masks: dict[str, np.ndarray], segmentation_node=None,
                 saliency: dict[str, np.ndarray] | None = None, replace: bool = False,
                 overlay_suffix: str = "saliency") -> RunRecord:
    """Write one segment per prompt (and optional saliency volumes) in one all-or-nothing step.

    Existing segments are kept; a name clash gets a numbered name unless ``replace`` is set,
    in which case the old segment of that name is replaced (``RunRecord.undo`` restores it).
    """
    slicer = _slicer()
    for name, mask in masks.items():
        _check_shape(mask, reference, f"Mask '{name}'")
    created = segmentation_node is None
    if created:
        segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{reference.GetName()} MedCLIP-SAM")
        segmentation_node.CreateDefaultDisplayNodes()
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    snapshot = None
    if not created:
        snapshot = slicer.vtkSegmentation()
        snapshot.DeepCopy(segmentation_node.GetSegmentation())
    record = RunRecord(scene, segmentation_node.GetID(), created, snapshot)
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentation = segmentation_node.GetSegmentation()
    try:
        for name, mask in masks.items():
            if replace:
                old = segmentation.GetSegmentIdBySegmentName(name)
                if old:
                    segmentation.RemoveSegment(old)
            segment_id = _add_segment(scene, logic, segmentation_node, reference,
                                      unique_segment_name(segmentation, name), mask)
            style = segment_style(name)
            if style is not None:
                segment = segmentation.GetSegment(segment_id)
                segment.SetColor(*style.color)
                if style.terminology:
                    segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), style.terminology)
            record.segment_ids.append(segment_id)
        for name, values in (saliency or {}).items():
            _check_shape(values, reference, f"Saliency '{name}'")
            overlay = add_saliency_volume(scene, reference, values, f"{name} {overlay_suffix}")
            record.created_node_ids.append(overlay.GetID())
    except BaseException:
        record.undo()
        raise
    return record


def add_saliency_volume(scene, reference, values: np.ndarray, name: str):
    """A scalar volume on the reference grid with a heat colour map over [0, 1]."""
    node = _volume_like(scene, "vtkMRMLScalarVolumeNode", values.astype(np.float32), reference, name)
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    color = next((c for c in SALIENCY_COLOR_NODES if scene.GetNodeByID(c) is not None), None)
    if color is not None:
        display.SetAndObserveColorNodeID(color)
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.SetLowerThreshold(0.05)
    display.ApplyThresholdOn()
    return node


def segment_to_array(segmentation_node, segment_id: str, reference) -> np.ndarray:
    """A segment as a (k, j, i) 0/1 array on the reference grid, via Slicer's own export."""
    slicer = _slicer()
    scene = segmentation_node.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__medclipsam_export")
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, ids, labelmap, reference):
            raise RuntimeError(f"Slicer could not export segment '{segment_id}'.")
        return (array_from_volume(labelmap) > 0).astype(np.uint8)
    finally:
        remove_node(scene, labelmap)


def volume_to_sitk(volume_node, array: np.ndarray):
    """A SimpleITK image of ``array`` on the node's grid, in ITK's LPS convention.

    Slicer's IJK-to-RAS becomes ITK's LPS geometry by negating the first two world axes;
    done once here, so exported files overlay the volume in any viewer.
    """
    import SimpleITK as sitk

    directions = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASDirectionMatrix(directions)
    ras = np.array([[directions.GetElement(r, c) for c in range(3)] for r in range(3)])
    flip = np.diag([-1.0, -1.0, 1.0])
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(v) for v in volume_node.GetSpacing()))
    image.SetOrigin(tuple(float(v) for v in flip @ np.array(volume_node.GetOrigin())))
    image.SetDirection(tuple(float(v) for v in (flip @ ras).ravel()))
    return image


def add_to_training_set(volume_node, segmentation_node, segment_id: str, dataset_folder, case_id: str,
                        label_name: str, modality: str = "MRI", overwrite: bool = False):
    """Export the volume and one (edited) segment as an nnU-Net case; returns the written paths."""
    from ..weak.export import add_case

    image = volume_to_sitk(volume_node, array_from_volume(volume_node))
    label = volume_to_sitk(volume_node, segment_to_array(segmentation_node, segment_id, volume_node))
    return add_case(dataset_folder, case_id, image, label, label_name, modality, overwrite)


def load_prediction(scene, reference, mask_path, entropy_path=None, name: str = "nnU-Net",
                    segmentation_node=None) -> RunRecord:
    """An ensembled nnU-Net prediction for ``reference``: mask as a segment, entropy as an overlay."""
    import SimpleITK as sitk

    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path))) > 0
    _check_shape(mask, reference, f"Prediction '{mask_path}'")
    entropy = None
    if entropy_path is not None:
        entropy = {name: sitk.GetArrayFromImage(sitk.ReadImage(str(entropy_path))).astype(np.float32)}
    return apply_result(scene, reference, {name: mask.astype(np.uint8)}, segmentation_node, entropy,
                        overlay_suffix="uncertainty")
