"""The review queue in Slicer's scene, without Qt: one case at a time as MRML nodes.

Loading a case removes the previous case's nodes first (memory stays flat over hundreds of cases), then
adds the image, its label as an editable segment (terminology name and colour as for a Segment run) and,
when a predictions folder is given, nnU-Net's entropy map as a heat overlay (``medclipsam label`` keeps
no saliency maps, so there is no saliency overlay), and centres the slice views on the target. Accept
exports the edited segment on the image's grid and hands it to ``review.actions``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import vtk

from ..errors import InputError
from ..review import actions
from ..review.queue import QueueItem, ReviewDataset, open_dataset, upcoming
from .mrml import ResultApplier, _image_data, _slicer, labelmap_stamp, remove_node, segment_digest, segment_to_array

SEGMENT_EDITOR_SINGLETON = "SegmentEditor"
"""The Segment Editor module's own editor node (SegmentEditor.py, Slicer 5.10.0 and main: ``GetSingletonNode``)."""
ACCEPT, DISCARD, CANCEL = "accept", "discard", "cancel"
"""The answers to "this case has edits that are not accepted" (``leave_edited_case``)."""


class UnsavedEditsError(InputError):
    """Leaving a case whose label was edited but not accepted would lose the edit."""

NO_SALIENCY_NOTE = ("No overlay: 'medclipsam label' keeps no saliency maps; open the dataset with the "
                    "'nnunet-predict' folder to see nnU-Net's entropy map.")


def ijk_to_ras_of(image: sitk.Image) -> vtk.vtkMatrix4x4:
    """Slicer's IJK-to-RAS matrix for a 3D SimpleITK image (ITK's LPS world: first two axes negated)."""
    return ijk_to_ras_from((image.GetSpacing(), image.GetOrigin(), image.GetDirection()))


def ijk_to_ras_from(geometry) -> vtk.vtkMatrix4x4:
    """The same from (spacing, origin, direction) as SimpleITK orders them for a 3D image."""
    spacing, origin, direction = geometry
    flip = np.diag([-1.0, -1.0, 1.0])
    direction = flip @ np.array(direction).reshape(3, 3)
    origin = flip @ np.array(origin)
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, direction[r, c] * spacing[c])
        matrix.SetElement(r, 3, origin[r])
    return matrix


def as_3d(image: sitk.Image) -> sitk.Image:
    """A 2D image as a one-slice volume (Slicer's volumes are 3D); 3D images pass."""
    return sitk.JoinSeries(image) if image.GetDimension() == 2 else image


def volume_from_sitk(scene, image: sitk.Image, name: str):
    """A scalar volume node holding ``image`` at the same physical place (the inverse of ``volume_to_sitk``)."""
    image = as_3d(image)
    return volume_from_array(scene, sitk.GetArrayViewFromImage(image), geometry_of(image), name)


def geometry_of(image: sitk.Image) -> tuple:
    """(spacing, origin, direction) of a 3D SimpleITK image, as plain tuples (they travel as JSON too)."""
    return tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection())


def volume_from_array(scene, array: np.ndarray, geometry, name: str):
    """A scalar volume node holding a (k, j, i) array on the grid (spacing, origin, direction) in LPS."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(ijk_to_ras_from(geometry))
    node.SetAndObserveImageData(_image_data(array))
    node.CreateDefaultDisplayNodes()
    return node


def _array_like(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """A label or map file as a (k, j, i) array of ``shape`` (None when its grid differs)."""
    array = sitk.GetArrayFromImage(as_3d(sitk.ReadImage(str(path))))
    return array if array.shape == shape else None


def target_center(volume_node, mask: np.ndarray, overlay: np.ndarray | None) -> tuple[float, float, float]:
    """RAS point to centre the views on: the label's centroid, else the overlay's hottest region, else the
    volume's centre."""
    if mask.any():
        where = mask > 0
    elif overlay is not None and float(overlay.max()) > 0:
        where = overlay >= 0.5 * float(overlay.max())
    else:
        where = np.ones(mask.shape, bool)
    k, j, i = (float(v.mean()) for v in np.nonzero(where))
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return tuple(matrix.MultiplyPoint([i, j, k, 1.0])[:3])


@dataclass
class CaseArrays:
    """A case as read from its files, before any node exists (``read_case``; a child process can read it)."""

    case: str
    image: np.ndarray
    """(k, j, i) voxels of the image (a 2D image as one slice)."""
    geometry: tuple
    """(spacing, origin, direction) of the 3D image in LPS, as SimpleITK orders them."""
    mask: np.ndarray
    overlay: np.ndarray | None
    note: str


def entropy_overlay(dataset: ReviewDataset, case: str, shape: tuple[int, ...]) -> tuple[np.ndarray | None, str]:
    """nnU-Net's entropy map of the case on its grid (None and why not, when there is none to show)."""
    if dataset.predictions is None:
        return None, NO_SALIENCY_NOTE
    path = dataset.entropy_path(case)
    if path is None:
        return None, f"No entropy map of '{case}' in {dataset.predictions}."
    values = _array_like(path, shape)
    if values is None:
        return None, f"The entropy map {path.name} is not on this image's grid; not shown."
    return values.astype(np.float32), ""


def read_case(dataset: ReviewDataset, case: str) -> CaseArrays:
    """Read a case's image, label and entropy map and check they share one grid (no MRML: any process)."""
    reference = as_3d(actions.read_case_image(dataset.image_path(case)))
    image = sitk.GetArrayFromImage(reference)
    label_path = dataset.label_path(case)
    mask = np.zeros(image.shape, np.uint8)
    if label_path is not None:
        label = _array_like(label_path, image.shape)
        if label is None:
            raise InputError(f"Case '{case}': the label {label_path} is not on its image's grid; fix or "
                             "exclude the case.")
        mask = (label > 0).astype(np.uint8)
    overlay, note = entropy_overlay(dataset, case, image.shape)
    return CaseArrays(case, image, geometry_of(reference), mask, overlay, note)


@dataclass
class LoadedCase:
    """The nodes of the case on screen."""

    case: str
    volume_node_id: str
    segmentation_node_id: str
    segment_id: str
    overlay_node_id: str | None
    center_ras: tuple[float, float, float]
    note: str = ""
    node_ids: list[str] = field(default_factory=list)
    saved: tuple[int, str] = (0, "")
    """(labelmap stamp, segment digest) of the label as last loaded or accepted: what ``has_unsaved_edits``
    compares with."""


class ReviewSession:
    """A dataset's review queue and the one case loaded in ``scene``."""

    def __init__(self, scene, dataset: ReviewDataset):
        self.scene, self.dataset = scene, dataset
        self.current: LoadedCase | None = None
        self.order: list[str] = []
        """The queue's order when the current case was opened: Next goes on from there."""

    @classmethod
    def open(cls, scene, folder: str | Path, predictions: str | Path | None = None) -> ReviewSession:
        return cls(scene, open_dataset(folder, predictions))

    def queue(self) -> list[QueueItem]:
        return self.dataset.queue()

    def next_case(self, discard_edits: bool = False) -> LoadedCase | None:
        """Load the next case still to review after the current one (None: all are reviewed).

        A case that cannot be loaded (its image is gone) is passed over and named in the loaded case's note,
        so one broken case never blocks the queue; it stays listed, to exclude or fix. Raises
        ``UnsavedEditsError`` (nothing changes) while the current case has edits that are not accepted, unless
        ``discard_edits``."""
        self.check_leaving(discard_edits)
        problems = []
        for item in upcoming(self.queue(), self.current.case if self.current else None, self.order):
            try:
                loaded = self.load(item.case, discard_edits=True)
            except InputError as exc:
                problems.append(str(exc).splitlines()[0])
                continue
            loaded.note = " ".join([f"Passed over: {p}" for p in problems] + ([loaded.note] if loaded.note else []))
            return loaded
        if problems:
            raise InputError(problems[0])
        return None

    def upcoming_cases(self) -> list[str]:
        """The cases ``next_case`` tries, in order (still to review, after the current one)."""
        return [item.case for item in upcoming(self.queue(), self.current.case if self.current else None, self.order)]

    def load(self, case: str, discard_edits: bool = False) -> LoadedCase:
        """Replace the case on screen by ``case``; the scene gains nodes only for this one case.

        Raises ``UnsavedEditsError`` (nothing changes) while the current case has edits that are not accepted,
        unless ``discard_edits``."""
        self.check_leaving(discard_edits)
        for _ in self.place_steps(read_case(self.dataset, case)):
            pass
        return self.current

    def place_steps(self, arrays: CaseArrays, created: list[str] | None = None):
        """Put a read case on screen, one short part per ``next`` (the previous case's nodes go first, then the
        image, the segmentation, its segment and the overlay); ``current`` is the case once it is exhausted. All
        or nothing: a failing part removes the nodes made so far (their IDs are also kept in ``created``)."""
        created = [] if created is None else created
        self.unload()
        self.order = [item.case for item in self.queue()]
        yield
        try:
            volume = volume_from_array(self.scene, arrays.image, arrays.geometry, arrays.case)
            created.append(volume.GetID())
            yield
            name = self.dataset.label_name
            applier = ResultApplier(self.scene, volume, {name: arrays.mask}, None, arrays.overlay, False,
                                    "uncertainty", f"{name} uncertainty" if arrays.overlay is not None else None)
            while not applier.step():
                if applier.record is not None and applier.record.segmentation_node_id not in created:
                    created.append(applier.record.segmentation_node_id)
                yield
            record = applier.record
            created += [node_id for node_id in [record.segmentation_node_id, *record.created_node_ids]
                        if node_id not in created]
        except Exception:
            for node_id in created:
                _remove_id(self.scene, node_id)
            raise
        overlay_id = record.created_node_ids[0] if record.created_node_ids else None
        self.current = LoadedCase(arrays.case, volume.GetID(), record.segmentation_node_id, record.segment_ids[0],
                                  overlay_id, target_center(volume, arrays.mask, arrays.overlay), arrays.note,
                                  created)
        self.current.saved = self._label_state() or (0, "")

    def _label_state(self) -> tuple[int, str] | None:
        """(stamp, digest) of the current case's segment as it is now (None: its node or segment is gone)."""
        loaded = self.current
        node = self.scene.GetNodeByID(loaded.segmentation_node_id) if loaded is not None else None
        if node is None or node.GetSegmentation().GetSegment(loaded.segment_id) is None:
            return None
        return labelmap_stamp(node.GetSegmentation(), loaded.segment_id), segment_digest(node, loaded.segment_id)

    def has_unsaved_edits(self) -> bool:
        """Whether the current case's label was edited (Segment Editor, a correction) since it was loaded or
        accepted. The cheap labelmap stamp is read first; only when it moved is the segment's digest compared (an
        edit of another segment of the same layer moves the stamp but leaves this segment as it was)."""
        loaded = self.current
        if loaded is None:
            return False
        node = self.scene.GetNodeByID(loaded.segmentation_node_id)
        if node is None or node.GetSegmentation().GetSegment(loaded.segment_id) is None:
            return False  # removed by the user: nothing left to keep (Accept would refuse it)
        stamp = labelmap_stamp(node.GetSegmentation(), loaded.segment_id)
        if stamp == loaded.saved[0]:
            return False
        digest = segment_digest(node, loaded.segment_id)
        if digest != loaded.saved[1]:
            return True
        loaded.saved = (stamp, digest)
        return False

    def check_leaving(self, discard_edits: bool = False) -> None:
        """Refuse to leave a case with edits that are not accepted (``UnsavedEditsError``), unless discarding."""
        if not discard_edits and self.has_unsaved_edits():
            raise UnsavedEditsError(f"Case '{self.current.case}' has edits that were not accepted: Accept them, or "
                                    "discard them, before opening another case.")

    def forget_nodes(self) -> None:
        """The scene was closed: its nodes are gone (and their IDs will be reused), so never remove by ID."""
        self.current = None

    def summary(self) -> str:
        """One line for the panel: what is left, what is done, and what orders the queue."""
        queue = self.queue()
        counts = {state: sum(item.state == state for item in queue) for state in ("accepted", "excluded")}
        left = sum(not item.reviewed for item in queue)
        return (f"{self.dataset.folder.name}: {left} of {len(queue)} cases to review ({counts['accepted']} accepted, "
                f"{counts['excluded']} excluded); ordered by {self.dataset.source}.")

    def unload(self) -> None:
        """Remove the current case's nodes (with their display and storage nodes)."""
        if self.current is not None:
            for node_id in self.current.node_ids:
                _remove_id(self.scene, node_id)
            self.current = None

    def edited_label(self) -> np.ndarray:
        """The current case's segment, as edited, on its image's grid (k, j, i)."""
        loaded = self._loaded()
        segmentation_node = self.scene.GetNodeByID(loaded.segmentation_node_id)
        volume = self.scene.GetNodeByID(loaded.volume_node_id)
        if segmentation_node is None or volume is None:
            raise InputError(f"The nodes of case '{loaded.case}' were removed from the scene; load the case again.")
        if segmentation_node.GetSegmentation().GetSegment(loaded.segment_id) is None:
            raise InputError(f"The segment of case '{loaded.case}' was deleted; load the case again (erase the "
                             "segment's content instead to accept an empty label).")
        return segment_to_array(segmentation_node, loaded.segment_id, volume)

    def accept(self) -> dict:
        loaded = self._loaded()
        state = self._label_state()
        entry = actions.accept_case(self.dataset, loaded.case, self.edited_label())
        if state is not None:
            loaded.saved = state  # what is on screen is what the dataset holds now
        return entry

    def exclude(self, case: str | None = None) -> dict:
        return actions.exclude_case(self.dataset, case or self._loaded().case)

    def undo_exclude(self, case: str | None = None) -> dict | None:
        return actions.undo_exclude(self.dataset, case or self._loaded().case)

    def _loaded(self) -> LoadedCase:
        if self.current is None:
            raise InputError("No case is loaded; click Next case first.")
        return self.current


def _remove_id(scene, node_id: str) -> None:
    node = scene.GetNodeByID(node_id)
    if node is not None:
        remove_node(scene, node)


def leave_edited_case(session: ReviewSession, answer: str) -> bool:
    """Apply the user's answer to "this case has edits that are not accepted": ``ACCEPT`` writes them (raises
    as ``accept`` does, and then the case stays), ``DISCARD`` lets them go, ``CANCEL`` stays. True: go on."""
    if answer == ACCEPT:
        session.accept()
        return True
    return answer == DISCARD


def segment_editor_node(scene):
    """The Segment Editor module's node, made with its singleton tag when the module has not made it yet (the
    module then takes it up: SegmentEditor.py looks it up with ``GetSingletonNode`` first)."""
    editor = scene.GetSingletonNode(SEGMENT_EDITOR_SINGLETON, "vtkMRMLSegmentEditorNode")
    if editor is None:
        node_class = getattr(_slicer(), "vtkMRMLSegmentEditorNode", None)
        if node_class is None:  # the Segmentations module is not loaded: nothing to set up
            return None
        editor = node_class()
        editor.SetSingletonTag(SEGMENT_EDITOR_SINGLETON)
        editor = scene.AddNode(editor)
    return editor


def show_case(scene, loaded: LoadedCase, overlay_opacity: float = 0.4) -> None:
    """Image in the background, the overlay (or none) in the foreground, every slice view centred on the target,
    and the Segment Editor module set to edit the case's segment (its own node only: other modules' embedded
    editors keep what they edit)."""
    editor = segment_editor_node(scene)
    if editor is not None:
        editor.SetAndObserveSegmentationNode(scene.GetNodeByID(loaded.segmentation_node_id))
        editor.SetAndObserveSourceVolumeNode(scene.GetNodeByID(loaded.volume_node_id))
        editor.SetSelectedSegmentID(loaded.segment_id)
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        composite.SetBackgroundVolumeID(loaded.volume_node_id)
        composite.SetForegroundVolumeID(loaded.overlay_node_id)
        composite.SetForegroundOpacity(overlay_opacity)
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        scene.GetNthNodeByClass(index, "vtkMRMLSliceNode").JumpSliceByCentering(*loaded.center_ras)
