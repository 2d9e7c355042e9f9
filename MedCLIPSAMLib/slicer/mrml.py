"""Qt-free Slicer glue: engine results into MRML nodes, all-or-nothing, undoable as one step.

Arrays are in the reference volume's (k, j, i) voxel order (what ``slicer.util.arrayFromVolume``
returns and what the engine works in), and every node gets the reference's IJK-to-RAS
matrix, so no RAS/LPS conversion happens anywhere and results cannot come out flipped.
Runs in the real Slicer application and, for the tests, with the ``slicer-core`` wheel.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import vtk
from vtk.util import numpy_support

from ..terminology import GENERAL_ANATOMY_LIST, find_term

SALIENCY_COLOR_NODES = ("vtkMRMLPETProceduralColorNodePET-Heat", "vtkMRMLColorTableNodeRainbow")
TERMINOLOGY_CONTEXT = GENERAL_ANATOMY_LIST


def _slicer():
    import slicer
    return slicer


def array_from_volume(volume_node) -> np.ndarray:
    """A copy of the voxels in (k, j, i) order."""
    return volume_view(volume_node).copy()


def volume_view(volume_node) -> np.ndarray:
    """The voxels in (k, j, i) order without a copy: a numpy view on the node's current image data, which the
    view keeps alive even if the node gets another image or leaves the scene."""
    image = volume_node.GetImageData()
    if image is None:
        raise ValueError(f"Volume '{volume_node.GetName()}' has no image data.")
    dims = image.GetDimensions()
    components = image.GetNumberOfScalarComponents()
    values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return values.reshape((dims[2], dims[1], dims[0]) + ((components,) if components > 1 else ()))


def spacing_kji(volume_node) -> tuple[float, float, float]:
    return tuple(reversed(volume_node.GetSpacing()))


def _image_data(array: np.ndarray) -> vtk.vtkImageData:
    """A vtkImageData holding a copy of a (k, j, i) array (allocated by VTK, filled by one numpy copy:
    ~8x faster than ``numpy_to_vtk(deep=True)`` on a CT-sized overlay)."""
    array = np.ascontiguousarray(array)
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.AllocateScalars(numpy_support.get_vtk_array_type(array.dtype), 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = array.ravel()
    return image


def _volume_like(scene, node_class: str, array: np.ndarray, reference, name: str,
                 offset_kji: tuple[int, int, int] = (0, 0, 0), window: tuple[float, float] | None = None):
    """A new volume node on the reference's exact grid (IJK-to-RAS copied, not recomputed); ``offset_kji``:
    where the array's first voxel sits on that grid (a crop); ``window``: display nodes with this fixed
    window, made before the voxels arrive so Slicer computes no automatic window over them."""
    node = scene.AddNewNodeByClass(node_class, name)
    if window is not None:
        node.CreateDefaultDisplayNodes()
        node.GetDisplayNode().AutoWindowLevelOff()
        node.GetDisplayNode().SetWindowLevelMinMax(*window)
    matrix = vtk.vtkMatrix4x4()
    reference.GetIJKToRASMatrix(matrix)
    if any(offset_kji):
        origin = matrix.MultiplyPoint([*reversed(offset_kji), 1.0])
        for row in range(3):
            matrix.SetElement(row, 3, origin[row])
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
    term = find_term(name)
    if term is None:
        return None
    if term.slicer_list is None:
        return SegmentStyle(term.color)
    (cs, cv, cm), (ts, tv, tm) = term.category, term.type
    terminology = f"{term.slicer_list}~{cs}^{cv}^{cm}~{ts}^{tv}^{tm}~^^~Anatomic codes - DICOM master list~^^~^^"
    return SegmentStyle(term.color, terminology)


def unique_segment_name(segmentation, name: str) -> str:
    taken = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
    if name not in taken:
        return name
    number = 2
    while f"{name} {number}" in taken:
        number += 1
    return f"{name} {number}"


LABELMAP = "Binary labelmap"


def labelmap_stamp(segmentation, segment_id: str) -> int:
    """The modification time of the segment's binary labelmap (0: none); any paint or erase raises it,
    and so does an edit of another segment that shares its layer."""
    segment = segmentation.GetSegment(segment_id)
    representation = segment.GetRepresentation(LABELMAP) if segment is not None else None
    return representation.GetMTime() if representation is not None else 0


def own_labelmap(segmentation_node, segment_id: str):
    """(image, mask): a copy of the segment's labelmap holding only its own voxels (as 1), and those voxels
    as a (k, j, i) bool array; a layer shared with other segments holds their label values too."""
    slicer = _slicer()
    image = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(segmentation_node, segment_id,
                                                                                   image, False)
    scalars = image.GetPointData().GetScalars()
    if scalars is None or not image.GetNumberOfPoints():
        return image, np.zeros((0, 0, 0), bool)
    x0, x1, y0, y1, z0, z1 = image.GetExtent()
    values = numpy_support.vtk_to_numpy(scalars)
    label = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    mask = (values == label).reshape(z1 - z0 + 1, y1 - y0 + 1, x1 - x0 + 1)
    values[:] = mask.ravel()
    scalars.Modified()
    return image, mask


def segment_digest(segmentation_node, segment_id: str) -> str:
    """A fingerprint of exactly this segment's voxels (where they are in mm, which they are), whatever layer
    holds them: layers differ in origin and extent, so positions are compared in world coordinates."""
    import hashlib

    image, mask = own_labelmap(segmentation_node, segment_id)
    digest = hashlib.sha1()
    if mask.any():
        x0, _, y0, _, z0, _ = image.GetExtent()
        box = _bounding_box(mask)
        to_world = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(to_world)
        corner = to_world.MultiplyPoint([x0 + box[2].start, y0 + box[1].start, z0 + box[0].start, 1.0])[:3]
        digest.update(np.round(np.array(corner), 3).tobytes())
        digest.update(np.array(mask[box].shape, np.int64).tobytes())
        digest.update(np.packbits(mask[box]).tobytes())
    return digest.hexdigest()


@dataclass
class SavedSegment:
    """A segment a run replaced: its metadata and its own labelmap, to put back on undo."""

    segment_id: str
    index: int
    segment: object

    @classmethod
    def of(cls, segmentation_node, segment_id: str) -> "SavedSegment":
        slicer = _slicer()
        segmentation = segmentation_node.GetSegmentation()
        copy = slicer.vtkSegment()
        copy.DeepCopyMetadata(segmentation.GetSegment(segment_id))
        labelmap, _ = own_labelmap(segmentation_node, segment_id)
        copy.AddRepresentation(LABELMAP, labelmap)
        copy.SetLabelValue(1)
        return cls(segment_id, segmentation.GetSegmentIndex(segment_id), copy)

    def restore(self, segmentation) -> None:
        segmentation.AddSegment(self.segment, self.segment_id)
        segmentation.SetSegmentIndex(self.segment_id, min(self.index, segmentation.GetNumberOfSegments() - 1))


@dataclass
class OverlayChange:
    """An overlay a run wrote: created (undo removes it) or reused (undo puts the earlier image back)."""

    node_id: str
    created: bool
    image: object = None
    name: str = ""


@dataclass
class RunRecord:
    """What one run changed, so ``undo`` takes back exactly that and nothing else.

    Undo removes the segments the run added and puts back the ones it replaced; segments it did not
    touch, and their edits, stay. A segment of the run that was edited afterwards is not removed:
    ``undo_blocker`` says so, and ``undo`` refuses (the edit would be lost).
    """

    scene: object
    segmentation_node_id: str
    created_segmentation_node: bool
    segment_ids: list[str] = field(default_factory=list)
    replaced: list[SavedSegment] = field(default_factory=list)
    overlays: list[OverlayChange] = field(default_factory=list)
    stamps: dict[str, int] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    """Segment ID -> ``segment_digest`` right after the run wrote it."""
    undone: bool = False

    @property
    def created_node_ids(self) -> list[str]:
        """The overlay nodes this run shows (created or reused)."""
        return [change.node_id for change in self.overlays]

    def seal(self) -> None:
        """Remember the state of the run's segments once the run is applied (edits after this block undo)."""
        node = self.scene.GetNodeByID(self.segmentation_node_id)
        if node is not None:
            self.stamps = {sid: labelmap_stamp(node.GetSegmentation(), sid) for sid in self.segment_ids}

    def undo_blocker(self) -> str | None:
        """Why undo would lose work (None: it can run)."""
        if self.undone:
            return "This run was already undone."
        node = self.scene.GetNodeByID(self.segmentation_node_id)
        if node is None:
            return None
        segmentation = node.GetSegmentation()
        for segment_id, stamp in self.stamps.items():
            segment = segmentation.GetSegment(segment_id)
            if segment is None or labelmap_stamp(segmentation, segment_id) == stamp:
                continue  # gone (the user deleted it), or its layer untouched since the run
            if segment_digest(node, segment_id) != self.digests.get(segment_id):
                return (f"Segment '{segment.GetName()}' was edited after the run, so Undo would lose that edit; "
                        "delete the segment in the Segment Editor instead.")
        return None

    def undo(self, force: bool = False) -> None:
        """Take the run back; raises ValueError with ``undo_blocker``'s reason unless ``force``
        (used to roll back a run that failed half-way)."""
        blocker = None if force else self.undo_blocker()
        if blocker:
            raise ValueError(blocker)
        node = self.scene.GetNodeByID(self.segmentation_node_id)
        if node is not None:
            segmentation = node.GetSegmentation()
            for segment_id in self.segment_ids:
                if segmentation.GetSegment(segment_id) is not None:
                    segmentation.RemoveSegment(segment_id)
            for saved in sorted(self.replaced, key=lambda s: s.index):
                saved.restore(segmentation)
            if self.created_segmentation_node and segmentation.GetNumberOfSegments() == 0:
                remove_node(self.scene, node)
        for change in reversed(self.overlays):
            overlay = self.scene.GetNodeByID(change.node_id)
            if overlay is None:
                continue
            if change.created:
                remove_node(self.scene, overlay)
            else:
                overlay.SetAndObserveImageData(change.image)
                overlay.SetName(change.name)
        self.overlays.clear()
        self.undone = True


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


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """The smallest (k, j, i) box holding every non-zero voxel (the mask is not empty)."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _add_segment(scene, logic, segmentation_node, reference, name: str, mask: np.ndarray) -> str:
    """Import one binary mask as a new segment; returns its ID.

    Only the mask's bounding box travels through a labelmap node (placed at its offset on the
    reference grid), so a small structure in a large CT imports in milliseconds."""
    segmentation = segmentation_node.GetSegmentation()
    before = set(segmentation.GetSegmentIDs())
    if mask.any():
        box = _bounding_box(mask)
        offset = tuple(part.start for part in box)
        labelmap = _volume_like(scene, "vtkMRMLLabelMapVolumeNode", mask[box].astype(np.uint8), reference, name,
                                offset)
        try:
            if not logic.ImportLabelmapToSegmentationNode(labelmap, segmentation_node, ""):
                raise RuntimeError(f"Slicer could not import the mask of '{name}' as a segment.")
        finally:
            remove_node(scene, labelmap)
        (segment_id,) = set(segmentation.GetSegmentIDs()) - before
        segmentation.GetSegment(segment_id).SetName(name)
        return segment_id
    return segmentation.AddEmptySegment("", name)


OVERLAY_ATTRIBUTE = "MedCLIPSAM.OverlayOf"
"""On an overlay node: '<input volume ID>/<kind>', so each input volume has one overlay per kind."""
SALIENCY_LEVELS = 255


def overlay_for(scene, reference, kind: str):
    """The overlay of ``kind`` ('saliency', 'uncertainty') this module made for ``reference``, or None."""
    key = f"{reference.GetID()}/{kind}"
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        if node.GetAttribute(OVERLAY_ATTRIBUTE) == key:
            return node
    return None


def default_input_volume(scene):
    """The volume the panel preselects as input: the first scalar volume that is an image to segment, not a
    labelmap (a ``vtkMRMLScalarVolumeNode`` subclass, so ``GetFirstNodeByClass`` returns it too), not one of this
    module's saliency or uncertainty overlays, and not a node hidden from editors (None: no such volume)."""
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        if node.IsA("vtkMRMLLabelMapVolumeNode") or node.GetAttribute(OVERLAY_ATTRIBUTE) or node.GetHideFromEditors():
            continue
        return node
    return None


def saliency_as_uint8(values: np.ndarray) -> np.ndarray:
    """Saliency in [0, 1] (or already 0..255 as uint8) as uint8: a quarter of float32's memory in the scene."""
    if values.dtype == np.uint8:
        return values
    return np.round(np.clip(values, 0.0, 1.0) * SALIENCY_LEVELS).astype(np.uint8)


class ResultApplier:
    """Writes one result into the scene a short step at a time (segmentation node, each segment, the overlay).

    The panel's timer calls ``step()`` once per tick so the window repaints between steps. All or
    nothing: a step that fails, or ``rollback()`` (a cancel, a node removed between ticks), takes
    back what the earlier steps added. ``record`` is complete once ``finished``.
    """

    def __init__(self, scene, reference, masks: dict[str, np.ndarray], segmentation_node=None,
                 overlay: np.ndarray | None = None, replace: bool = False, overlay_kind: str = "saliency",
                 overlay_name: str | None = None):
        for name, mask in masks.items():
            _check_shape(mask, reference, f"Mask '{name}'")
        if overlay is not None:
            _check_shape(overlay, reference, f"{overlay_kind.capitalize()} '{overlay_name or ''}'".replace(" ''", ""))
        self.scene, self.reference, self.masks = scene, reference, masks
        self.segmentation_node, self.overlay, self.replace = segmentation_node, overlay, replace
        self.overlay_kind = overlay_kind
        self.overlay_name = overlay_name or f"{' + '.join(masks)} {overlay_kind}"
        self.record: RunRecord | None = None
        self.finished = False
        self._steps = self._run()

    @property
    def steps(self) -> int:
        """How many ``step()`` calls the whole apply takes (for a progress bar)."""
        return 1 + 2 * len(self.masks) + (self.overlay is not None)

    def step(self) -> bool:
        """Do the next part; True once everything is applied."""
        if self.finished:
            return True
        try:
            next(self._steps)
        except StopIteration:
            self.record.seal()
            self.finished = True
        except BaseException:
            self.rollback()
            raise
        return self.finished

    def rollback(self) -> None:
        if self.record is not None and not self.record.undone:
            self.record.undo(force=True)

    def _run(self):
        slicer = _slicer()
        scene, reference = self.scene, self.reference
        node = self.segmentation_node
        created = node is None
        if created:
            node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{reference.GetName()} MedCLIP-SAM")
            node.CreateDefaultDisplayNodes()
            node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
        self.record = record = RunRecord(scene, node.GetID(), created)
        yield
        logic = slicer.vtkSlicerSegmentationsModuleLogic()
        segmentation = node.GetSegmentation()
        for name, mask in self.masks.items():
            if self.replace:
                old = segmentation.GetSegmentIdBySegmentName(name)
                if old:
                    record.replaced.append(SavedSegment.of(node, old))
                    segmentation.RemoveSegment(old)
            segment_id = _add_segment(scene, logic, node, reference, unique_segment_name(segmentation, name), mask)
            record.segment_ids.append(segment_id)
            yield
            record.digests[segment_id] = segment_digest(node, segment_id)  # its own tick: a lung-sized segment
            style = segment_style(name)
            if style is not None:
                segment = segmentation.GetSegment(segment_id)
                segment.SetColor(*style.color)
                if style.terminology:
                    segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), style.terminology)
            yield
        if self.overlay is not None:
            record.overlays.append(_write_overlay(scene, reference, self.overlay, self.overlay_kind, self.overlay_name))
            yield


def _write_overlay(scene, reference, values: np.ndarray, kind: str, name: str) -> OverlayChange:
    """The input volume's overlay of this kind gets the new values (created the first time, reused after)."""
    node = overlay_for(scene, reference, kind)
    if node is None:
        node = add_saliency_volume(scene, reference, values, name)
        node.SetAttribute(OVERLAY_ATTRIBUTE, f"{reference.GetID()}/{kind}")
        return OverlayChange(node.GetID(), created=True)
    change = OverlayChange(node.GetID(), created=False, image=node.GetImageData(), name=node.GetName())
    matrix = vtk.vtkMatrix4x4()
    reference.GetIJKToRASMatrix(matrix)
    node.SetIJKToRASMatrix(matrix)
    node.SetAndObserveImageData(_image_data(values))
    node.SetName(name)
    _show_levels(node, values)
    return change


def apply_result(scene, reference, masks: dict[str, np.ndarray], segmentation_node=None,
                 saliency: dict[str, np.ndarray] | None = None, replace: bool = False,
                 overlay_suffix: str = "saliency") -> RunRecord:
    """Write one segment per prompt (and the input volume's overlay) in one all-or-nothing call.

    Existing segments are kept; a name clash gets a numbered name unless ``replace`` is set,
    in which case the old segment of that name is replaced (``RunRecord.undo`` restores it).
    Several saliency maps share one overlay (their maximum).
    """
    overlay = combined_overlay(saliency)
    if overlay is not None and overlay_suffix == "saliency":
        overlay = saliency_as_uint8(overlay)
    applier = ResultApplier(scene, reference, masks, segmentation_node, overlay, replace, overlay_suffix,
                            f"{' + '.join(saliency)} {overlay_suffix}" if saliency else None)
    while not applier.step():
        pass
    return applier.record


def combined_overlay(maps: dict[str, np.ndarray] | None) -> np.ndarray | None:
    """One overlay from a run's maps: the map itself, or the voxel-wise maximum of several."""
    if not maps:
        return None
    values = list(maps.values())
    if len(values) == 1:
        return values[0]
    shapes = {np.shape(v) for v in values}
    if len(shapes) > 1:
        raise ValueError(f"The maps have different shapes {sorted(shapes)}; they cannot share one overlay.")
    return np.maximum.reduce([np.asarray(v) for v in values])


def add_saliency_volume(scene, reference, values: np.ndarray, name: str):
    """A scalar volume on the reference grid with a heat colour map: uint8 maps span 0..255, others [0, 1]."""
    top = float(SALIENCY_LEVELS) if values.dtype == np.uint8 else 1.0
    # uint8 and float32 maps go in as they are (_volume_like copies them once into VTK): no second full copy
    node = _volume_like(scene, "vtkMRMLScalarVolumeNode", values if values.dtype in (np.uint8, np.float32)
                        else values.astype(np.float32), reference, name, window=(0.0, top))
    display = node.GetDisplayNode()
    color = next((c for c in SALIENCY_COLOR_NODES if scene.GetNodeByID(c) is not None), None)
    if color is not None:
        display.SetAndObserveColorNodeID(color)
    _show_levels(node, values)
    return node


def _show_levels(node, values: np.ndarray) -> None:
    top = float(SALIENCY_LEVELS) if values.dtype == np.uint8 else 1.0
    display = node.GetDisplayNode()
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, top)
    display.SetLowerThreshold(0.05 * top)
    display.ApplyThresholdOn()


def selected_segment_id(scene, segmentation_node) -> str:
    """The segment selected in the Segment Editor when it edits this segmentation, else the last segment.

    The Segment Editor module keeps its state in the singleton "SegmentEditor" node (SegmentEditor.py,
    Slicer 5.10.0); another editor node (e.g. a module's own embedded editor) or a selection in another
    segmentation with a segment of the same ID does not count."""
    editor = scene.GetSingletonNode("SegmentEditor", "vtkMRMLSegmentEditorNode")
    segmentation = segmentation_node.GetSegmentation()
    if editor is not None and editor.GetSegmentationNode() is segmentation_node:
        selected = editor.GetSelectedSegmentID()
        if selected and segmentation.GetSegment(selected) is not None:
            return selected
    return segmentation.GetNthSegmentID(segmentation.GetNumberOfSegments() - 1)


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
        display = labelmap.GetDisplayNode()
        color = display.GetColorNode() if display is not None else None  # the export made it for this node
        remove_node(scene, labelmap)
        if color is not None and scene.IsNodePresent(color):
            scene.RemoveNode(color)


def lps_geometry(volume_node) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """(spacing, origin, direction) of the node's grid in ITK's LPS convention, as SimpleITK orders them.

    Slicer's IJK-to-RAS becomes ITK's LPS geometry by negating the first two world axes;
    done here once, so exported files overlay the volume in any viewer and files read back are
    checked against the same numbers."""
    directions = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASDirectionMatrix(directions)
    ras = np.array([[directions.GetElement(r, c) for c in range(3)] for r in range(3)])
    flip = np.diag([-1.0, -1.0, 1.0])
    spacing = tuple(float(v) for v in volume_node.GetSpacing())
    origin = tuple(float(v) for v in flip @ np.array(volume_node.GetOrigin()))
    return spacing, origin, tuple(float(v) for v in (flip @ ras).ravel())


def volume_to_sitk(volume_node, array: np.ndarray):
    """A SimpleITK image of ``array`` on the node's grid (``lps_geometry``)."""
    import SimpleITK as sitk

    spacing, origin, direction = lps_geometry(volume_node)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def check_geometry(image, reference, what: str, tolerance_mm: float = 1e-3) -> None:
    """Refuse a SimpleITK image that is not on the reference volume's grid (shape, spacing, origin, direction).

    A same-sized file from another case or another orientation would otherwise be placed on
    this volume's grid without any sign that it belongs elsewhere."""
    from .grid_check import check_on_grid

    check_on_grid(image, tuple(reversed(reference.GetImageData().GetDimensions())), lps_geometry(reference),
                  reference.GetName(), what, tolerance_mm)


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

    mask_image = sitk.ReadImage(str(mask_path))
    check_geometry(mask_image, reference, f"Prediction '{mask_path}'")
    mask = sitk.GetArrayFromImage(mask_image) > 0
    entropy = None
    if entropy_path is not None:
        entropy_image = sitk.ReadImage(str(entropy_path))
        check_geometry(entropy_image, reference, f"Uncertainty map '{entropy_path}'")
        entropy = {name: sitk.GetArrayFromImage(entropy_image).astype(np.float32)}
    return apply_result(scene, reference, {name: mask.astype(np.uint8)}, segmentation_node, entropy,
                        overlay_suffix="uncertainty")
