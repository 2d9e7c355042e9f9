"""The Segment Editor's Undo and this module's writes (Qt-free; tested with Slicer's own ``vtkSegmentationHistory``).

The Segment Editor keeps its undo states in a ``vtkSegmentationHistory`` of its widget
(``qMRMLSegmentEditorWidget``): a state is saved before each effect's stroke, and Ctrl+Z restores the
last saved state. Runs and corrections write through the segmentations logic, not through an effect, so
without a saved state the next Ctrl+Z would take back the module's write *and* the user's previous
stroke together. ``save_editor_undo_state`` saves one state right before each write, so Ctrl+Z takes
back exactly that write.

Only the editor that edits this very segmentation matters: a history belongs to the segmentation its
widget shows, and ``vtkSegmentationHistory::SetSegmentation`` drops every state when it changes
(Libs/vtkSegmentationCore/vtkSegmentationHistory.cxx, 5.10.0 and main).
"""
from __future__ import annotations

from typing import Any, Callable


def save_editor_undo_state(editor: Any, segmentation_node) -> bool:
    """Save an undo state in ``editor`` (a ``qMRMLSegmentEditorWidget``: ``segmentationNode()`` and
    ``saveStateForUndo()``, both in Slicer 5.10.0 and main) when it edits ``segmentation_node``; True when saved."""
    if editor is None or segmentation_node is None:
        return False
    shown = editor.segmentationNode()
    if shown is None or shown is not segmentation_node and shown.GetID() != segmentation_node.GetID():
        return False
    editor.saveStateForUndo()
    return True


def before_write_hook(editors: Callable[[], list[Any]], segmentation_node) -> Callable[[], None]:
    """What a run or correction calls right before it writes ``segmentation_node``: a saved state in every editor
    ``editors()`` returns then (looked up at write time: the user may open the Segment Editor meanwhile)."""
    def save() -> None:
        for editor in editors():
            save_editor_undo_state(editor, segmentation_node)
    return save
