"""The Correct section's markups and queue with real MRML (slicer-core) and a real engine server on 127.0.0.1."""
import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

import vtk  # noqa: E402  (slicer-core brings it)

from test_mrml import scene, segmentation_converters, volume_node  # noqa: E402,F401  (shared fixtures)
from test_slicer_correct import kji_to_ras, segmented  # noqa: E402,F401
from MedCLIPSAMLib.client import EngineClient  # noqa: E402
from MedCLIPSAMLib.errors import MedCLIPSAMError  # noqa: E402
from MedCLIPSAMLib.slicer.correct import IDLE, Correction  # noqa: E402
from MedCLIPSAMLib.slicer.segment_slices import write_slices  # noqa: E402
from MedCLIPSAMLib.slicer.correct_markups import (BOX, MINUS, PLUS, PendingInteractions,  # noqa: E402
                                                  control_point_ras, markup_interaction, start_placing, stop_placing)
from MedCLIPSAMLib.slicer.mrml import segment_to_array  # noqa: E402


@pytest.fixture
def placing(scene):
    """The scene's selection and interaction singletons (the application adds them) and the markups logic."""
    selection = slicer.vtkMRMLSelectionNode()
    selection.SetSingletonTag("Singleton")
    scene.AddNode(selection)
    interaction = slicer.vtkMRMLInteractionNode()
    interaction.SetSingletonTag("Singleton")
    scene.AddNode(interaction)
    logic = slicer.vtkSlicerMarkupsLogic()
    logic.SetMRMLScene(scene)
    yield logic, selection, interaction
    logic.SetMRMLScene(None)


def test_placing_a_box_places_the_roi_and_done_returns_to_the_arrow(scene, placing):
    logic, selection, interaction = placing
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    logic.SetActiveList(roi)  # the order the module had: Slicer then resets the class to point lists
    logic.StartPlaceMode(False)
    assert selection.GetActivePlaceNodeClassName() == "vtkMRMLMarkupsFiducialNode"
    start_placing(logic, roi, persistent=False)
    assert selection.GetActivePlaceNodeClassName() == "vtkMRMLMarkupsROINode"
    assert selection.GetActivePlaceNodeID() == roi.GetID()
    assert interaction.GetCurrentInteractionMode() == interaction.Place and not interaction.GetPlaceModePersistence()
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "+")
    start_placing(logic, points, persistent=True)
    assert selection.GetActivePlaceNodeID() == points.GetID() and interaction.GetPlaceModePersistence()
    stop_placing(scene)
    assert interaction.GetCurrentInteractionMode() == interaction.ViewTransform


def test_a_placed_point_becomes_a_click_on_the_sessions_axis(scene, volume_node):
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "+")
    assert markup_interaction(volume_node, 0, PLUS, points) is None
    points.AddControlPointWorld(vtk.vtkVector3d(*kji_to_ras(volume_node, (3, 18, 30))))
    assert isinstance(points.GetNthControlPointPositionWorld(0), vtk.vtkVector3d)  # what Slicer hands back
    assert control_point_ras(points, 0) == pytest.approx(kji_to_ras(volume_node, (3, 18, 30)))
    assert markup_interaction(volume_node, 0, PLUS, points) == ("click", 3, (30, 18, True))
    points.AddControlPointWorld(vtk.vtkVector3d(*kji_to_ras(volume_node, (2, 10, 12))))
    assert markup_interaction(volume_node, 2, MINUS, points) == ("click", 12, (10, 2, False))  # the newest point


def test_a_box_counts_only_from_its_second_corner(scene, volume_node):
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.AddControlPointWorld(vtk.vtkVector3d(*kji_to_ras(volume_node, (3, 10, 20))))  # the first click
    bounds = [0.0] * 6
    roi.GetRASBounds(bounds)
    assert bounds[0] == bounds[1]  # a point, yet Slicer calls it defined
    assert markup_interaction(volume_node, 0, BOX, roi) is None
    roi.AddControlPointWorld(vtk.vtkVector3d(*kji_to_ras(volume_node, (3, 26, 40))))  # the second
    kind, index, (x0, y0, x1, y1) = markup_interaction(volume_node, 0, BOX, roi)
    assert kind == "box" and index == 3 and x0 < 30 < x1 and y0 < 18 < y1


def drain(queue, correction, reopen=lambda: None, limit=600):
    """Tick like the panel's timer until the queue is empty and nothing is in flight; returns what was shown."""
    shown = []
    for _tick in range(limit):
        status = queue.tick(correction, reopen)
        if status is not None:
            shown.append(status)
        if not queue.items and not correction.busy:
            return shown
    raise AssertionError(f"still busy after {limit} ticks: {correction.state}")


def test_a_refused_interaction_shows_its_line_and_the_next_one_still_goes(scene, volume_node, segmented,
                                                                         engine_server):
    node, tumour, _other = segmented
    correction = Correction(EngineClient(engine_server.url, engine_server.token), scene, volume_node, node, tumour,
                            axis=0)
    correction.wait()
    queue = PendingInteractions()
    queue.add("box", 9, (20, 8, 40, 28))  # no slice 9: refused
    queue.add("box", 3, (20, 8, 40, 28))
    shown = drain(queue, correction)
    assert any(kind == "error" and "Slice 9 is outside the volume" in text for kind, text in shown)
    assert shown[-1][0] == "message" and not correction.error, shown
    assert segment_to_array(node, tumour, volume_node)[3, 18, 30] == 1  # the second box was applied
    assert queue.tick(correction, lambda: None) is None  # nothing changed: the panel keeps its own text
    correction.close()


def test_an_edit_outside_the_correction_is_never_overwritten(scene, volume_node, segmented, engine_server):
    node, tumour, _other = segmented
    correction = Correction(EngineClient(engine_server.url, engine_server.token), scene, volume_node, node, tumour,
                            axis=0)
    correction.wait()
    correction.box(3, (20, 8, 40, 28))
    correction.wait()
    assert correction.edits and not correction.edited_outside()
    painted = np.zeros((40, 56), bool)
    painted[2:6, 2:6] = True
    write_slices(node, tumour, volume_node, 0, {3: painted})  # a Segment Editor paint on the corrected slice
    assert correction.edited_outside()
    with pytest.raises(MedCLIPSAMError, match="edited outside the correction"):
        correction.undo()
    np.testing.assert_array_equal(segment_to_array(node, tumour, volume_node)[3] > 0, painted)

    reopened = []

    def reopen():
        correction.close()
        fresh = Correction(EngineClient(engine_server.url, engine_server.token), scene, volume_node, node, tumour,
                           axis=0)
        reopened.append(fresh)
        return fresh

    queue = PendingInteractions()
    queue.add("box", 3, (20, 8, 40, 28))
    assert queue.tick(correction, reopen) == ("message", "The segment was edited; the correction starts again from it.")
    assert len(reopened) == 1 and queue.items  # the box waits for the new session
    fresh = reopened[0]
    fresh.wait()
    assert fresh.state == IDLE and not fresh.edited_outside()
    drain(queue, fresh)
    assert fresh.edits and np.array_equal(fresh.edits[-1].slices_before[3], painted)  # it started from the paint
    fresh.close()


def test_an_answer_computed_before_an_outside_edit_is_not_written(scene, volume_node, segmented, engine_server):
    node, tumour, _other = segmented
    correction = Correction(EngineClient(engine_server.url, engine_server.token), scene, volume_node, node, tumour,
                            axis=0, text_run_busy=lambda: True)  # the answer waits while a text run "writes"
    correction.wait()
    correction.box(3, (20, 8, 40, 28))
    correction.wait()
    painted = np.zeros((40, 56), bool)
    painted[30:34, 2:6] = True
    write_slices(node, tumour, volume_node, 0, {4: painted})  # the user paints meanwhile
    correction.text_run_busy = lambda: False
    correction.step()
    assert "edited while the correction was computed" in correction.error and not correction.edits
    after = segment_to_array(node, tumour, volume_node) > 0
    assert not after[3].any() and np.array_equal(after[4], painted)  # the box's answer was not written
    correction.wait()  # the engine undid it
    assert correction.state == IDLE
    correction.close()
