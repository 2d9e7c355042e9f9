"""Which slice view "Current slice" means: the one the user last pointed at, not always Red (Qt-free).

Slicer's crosshair node says which slice view the mouse is in, and forgets it as soon as the mouse
leaves the view (``vtkMRMLCrosshairNode::SetCursorPositionInvalid``), i.e. by the time the user
clicks Segment in the panel. ``LastSliceView`` remembers the last one.
"""
from __future__ import annotations


class LastSliceView:
    """Follows the crosshair node; ``slice_node()`` is the slice view the mouse was last in (None: none yet)."""

    def __init__(self, scene, crosshair_node):
        self.scene, self.crosshair = scene, crosshair_node
        self._slice_node_id: str | None = None
        self._tag = crosshair_node.AddObserver(crosshair_node.CursorPositionModifiedEvent, self._moved)

    def _moved(self, caller, event) -> None:
        xyz = [0.0, 0.0, 0.0]
        slice_node = self.crosshair.GetCursorPositionXYZ(xyz)
        if slice_node is not None:
            self._slice_node_id = slice_node.GetID()

    def slice_node(self, fallback: str = "vtkMRMLSliceNodeRed"):
        """The last slice view pointed at, else ``fallback`` (Red), else None."""
        for node_id in (self._slice_node_id, fallback):
            node = self.scene.GetNodeByID(node_id) if node_id else None
            if node is not None:
                return node
        return None

    def stop(self) -> None:
        if self._tag is not None:
            self.crosshair.RemoveObserver(self._tag)
            self._tag = None
