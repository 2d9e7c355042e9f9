"""The page's scene as the web logic sees it: the loaded volume, the output segmentation trame-slicer's segment
editor edits, the overlay, and what each segment's run said (faithfulness, warning)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..faithfulness import faithfulness_warning, format_score
from ..slicer.mrml import remove_node, segment_digest, segment_to_array
from .state import SegmentRow


def hex_color(rgb) -> str:
    return "#" + "".join(f"{int(round(max(0.0, min(1.0, c)) * 255)):02x}" for c in rgb[:3])


@dataclass
class SegmentNote:
    faithfulness: float | None = None
    warning: str = ""


@dataclass
class Workspace:
    """``slicer_app``: trame-slicer's SlicerApp (scene, display manager, segmentation editor)."""

    slicer_app: object
    volume_node: object = None
    notes: dict[str, SegmentNote] = field(default_factory=dict)
    """Segment ID -> what the run that made it said."""
    source: object = None
    """The ``imageio.Volume`` the loaded volume was read from when it came from DICOM (a SEG refers to its
    files), else None."""
    drafts: dict[str, str] = field(default_factory=dict)
    """Segment ID -> digest of its mask as the run wrote it: a segment whose mask differs was corrected."""

    @property
    def scene(self):
        return self.slicer_app.scene

    @property
    def editor(self):
        return self.slicer_app.segmentation_editor

    @property
    def segmentation_node(self):
        node = self.editor.active_segmentation_node
        if node is not None and not self.scene.IsNodePresent(node):
            return None
        return node

    def segment_ids(self) -> list[str]:
        node = self.segmentation_node
        if node is None:
            return []
        segmentation = node.GetSegmentation()
        return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]

    def note(self, segment_id: str, name: str, score: float | None) -> None:
        self.notes[segment_id] = SegmentNote(score, faithfulness_warning(name, score) or "")

    def rows(self) -> list[SegmentRow]:
        """The segments as the panel lists them (name, colour, faithfulness and its warning)."""
        node = self.segmentation_node
        rows = []
        for segment_id in self.segment_ids():
            segment = node.GetSegmentation().GetSegment(segment_id)
            note = self.notes.get(segment_id)
            rows.append(SegmentRow(segment_id, segment.GetName(), hex_color(segment.GetColor()),
                                   format_score(note.faithfulness) if note else "", note.warning if note else ""))
        return rows

    def segment_mask(self, segment_id: str) -> np.ndarray:
        return segment_to_array(self.segmentation_node, segment_id, self.volume_node).astype(bool)

    def _digest(self, segment_id: str) -> str:
        return segment_digest(self.segmentation_node, segment_id)

    def remember_drafts(self, segment_ids) -> None:
        for segment_id in segment_ids:
            self.drafts[segment_id] = self._digest(segment_id)

    def corrected(self, segment_id: str) -> bool:
        """Changed in the page since a run made it (boxes, clicks, the editor), or made by hand."""
        return self.drafts.get(segment_id) != self._digest(segment_id)

    def clear(self) -> None:
        """Empty the scene's data nodes before another volume is loaded (views and singletons stay)."""
        for node_class in ("vtkMRMLSegmentationNode", "vtkMRMLScalarVolumeNode", "vtkMRMLLabelMapVolumeNode",
                           "vtkMRMLMarkupsNode"):
            for node in list(self.scene.GetNodesByClass(node_class)):
                remove_node(self.scene, node)
        self.volume_node, self.notes, self.source, self.drafts = None, {}, None, {}
