"""Corrections as Slicer applies them: real MRML (slicer-core), a real engine server on 127.0.0.1."""
import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

import vtk  # noqa: E402  (slicer-core brings it)

from test_mrml import scene, segmentation_converters, volume_node  # noqa: E402,F401  (shared fixtures)
from MedCLIPSAMLib.client import EngineClient  # noqa: E402
from MedCLIPSAMLib.errors import MedCLIPSAMError  # noqa: E402
from MedCLIPSAMLib.slicer.correct import (IDLE, SENDING, WAITING_FOR_RUN, Correction, point_prompt,  # noqa: E402
                                          roi_prompt)
from MedCLIPSAMLib.slicer.segment_slices import write_slices  # noqa: E402
from MedCLIPSAMLib.slicer.mrml import apply_result, segment_to_array  # noqa: E402


def kji_to_ras(volume_node, kji) -> list[float]:
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return list(matrix.MultiplyPoint([float(v) for v in kji[::-1]] + [1.0])[:3])


@pytest.fixture
def segmented(scene, volume_node):
    """The segmentation a text run left: 'tumour' with content on slice 1 only, and an 'other' segment."""
    tumour = np.zeros((6, 40, 56), np.uint8)
    tumour[1, 5:10, 5:10] = 1
    other = np.zeros_like(tumour)
    other[3, 30:36, 40:50] = 1
    record = apply_result(scene, volume_node, {"tumour": tumour, "other": other})
    node = scene.GetNodeByID(record.segmentation_node_id)
    return node, record.segment_ids[0], record.segment_ids[1]


def test_markups_become_slice_prompts(volume_node, scene):
    assert point_prompt(volume_node, 0, kji_to_ras(volume_node, (3, 18, 30))) == (3, 30, 18)
    assert point_prompt(volume_node, 2, kji_to_ras(volume_node, (3, 18, 30))) == (30, 18, 3)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.SetCenter(kji_to_ras(volume_node, (3, 18, 30)))
    roi.SetSize(8.0, 8.0, 1.0)
    index, (x0, y0, x1, y1) = roi_prompt(volume_node, 0, roi)
    assert index == 3 and x0 < 30 < x1 and y0 < 18 < y1


def test_an_interaction_changes_one_segment_on_one_slice_and_one_undo_restores_it(scene, volume_node, segmented,
                                                                                  engine_server):
    node, tumour, other = segmented
    before, other_before = (segment_to_array(node, s, volume_node) for s in (tumour, other))
    correction = Correction(EngineClient(engine_server.url, engine_server.token), scene, volume_node, node, tumour,
                            axis=0)
    correction.wait()
    assert correction.state == IDLE and correction.session and not correction.error, correction.error
    correction.box(3, (20, 8, 40, 28))  # around the disk at (x 30, y 18), radius 9
    correction.wait()
    assert not correction.error, correction.error
    after = segment_to_array(node, tumour, volume_node)
    changed = np.flatnonzero((after != before).any(axis=(1, 2)))
    assert changed.tolist() == [3]
    assert after[3].sum() > 150 and after[3, 18, 30] == 1  # the disk (~254 voxels), not the box (441)
    np.testing.assert_array_equal(segment_to_array(node, other, volume_node), other_before)
    correction.undo()
    np.testing.assert_array_equal(segment_to_array(node, tumour, volume_node), before)
    correction.wait()  # the engine's session undoes too
    assert not correction.error
    correction.close()


def test_an_answer_waits_while_a_text_run_is_going(scene, volume_node, segmented, engine_server):
    node, tumour, _ = segmented
    running = [True]
    correction = Correction(EngineClient(engine_server.url, engine_server.token), scene, volume_node, node, tumour,
                            axis=0, text_run_busy=lambda: running[0])
    correction.wait()
    before = segment_to_array(node, tumour, volume_node)
    correction.box(3, (20, 8, 40, 28))
    correction.wait()
    assert correction.state == WAITING_FOR_RUN
    np.testing.assert_array_equal(segment_to_array(node, tumour, volume_node), before)
    with pytest.raises(MedCLIPSAMError, match="still being computed"):
        correction.box(2, (20, 8, 40, 28))
    running[0] = False
    correction.step()
    assert correction.state == IDLE and segment_to_array(node, tumour, volume_node)[3].any()
    correction.close()


def test_a_bad_prompt_is_the_engines_one_line_and_changes_nothing(scene, volume_node, segmented, engine_server):
    node, tumour, _ = segmented
    before = segment_to_array(node, tumour, volume_node)
    correction = Correction(EngineClient(engine_server.url, engine_server.token), scene, volume_node, node, tumour,
                            axis=0)
    correction.wait()
    correction.box(9, (20, 8, 40, 28))
    correction.wait()
    assert "Slice 9 is outside the volume" in correction.error and correction.state == IDLE
    np.testing.assert_array_equal(segment_to_array(node, tumour, volume_node), before)
    correction.close()


def test_the_flow_advances_only_by_step_and_starts_no_thread(scene, volume_node, segmented, engine_server,
                                                              monkeypatch):
    """Inside Slicer a Python worker thread starves behind Qt: the correction must start none (the engine's own
    threads run in the server, here the test process's uvicorn thread, never in the caller's)."""
    import threading
    import time

    caller = threading.current_thread()
    started_here = []
    original = threading.Thread.start

    def recording_start(thread):
        if threading.current_thread() is caller:
            started_here.append(thread.name)
        return original(thread)

    monkeypatch.setattr(threading.Thread, "start", recording_start)
    node, tumour, _ = segmented
    correction = Correction(EngineClient(engine_server.url, engine_server.token), scene, volume_node, node, tumour,
                            axis=0, part_bytes=4096)  # several upload parts: one per step
    time.sleep(0.3)
    assert correction.session is None and correction.busy  # nothing moves without step()
    steps = 0
    while correction.busy:
        correction.step()
        steps += 1
        assert steps < 5000, correction.state
        time.sleep(0.005)
    assert correction.session and not correction.error, correction.error
    assert steps > 3  # packed, uploaded in parts, opened: each its own step
    correction.box(3, (20, 8, 40, 28))
    while correction.busy:
        correction.step()
    assert segment_to_array(node, tumour, volume_node)[3].any() and not correction.error
    correction.close()
    assert started_here == []


def propagating(scene, volume_node, segmented, client):
    """A correction with a box on slice 0, asked to propagate up, after one step: (correction, node, segment id,
    the segment's array before the propagation)."""
    node, tumour, _ = segmented
    correction = Correction(client, scene, volume_node, node, tumour, axis=0)
    correction.wait()
    correction.box(0, (20, 8, 40, 28))
    correction.wait()
    before = segment_to_array(node, tumour, volume_node)
    correction.propagate(0, "up")
    correction.step()
    return correction, node, tumour, before


def test_one_step_returns_while_a_propagation_runs_on_the_engine(scene, volume_node, segmented, engine_server):
    """Propagating from slice 0 encodes slices 1-5 on the engine (an encoder pass each, ~1 s on this CPU); a step
    asks once and returns: the answer is not there yet after it, and arrives on later steps."""
    correction, node, tumour, before = propagating(scene, volume_node, segmented,
                                                   EngineClient(engine_server.url, engine_server.token))
    assert correction.state == SENDING  # the step came back before the propagation's answer
    np.testing.assert_array_equal(segment_to_array(node, tumour, volume_node), before)
    correction.wait()
    assert not correction.error, correction.error
    after = segment_to_array(node, tumour, volume_node)
    assert np.flatnonzero((after != before).any(axis=(1, 2))).tolist() == [1, 2, 3, 4, 5]
    assert correction.longest_step_s < 30  # the bound itself is the socket's (POLL_TIMEOUT_S), not timed here
    correction.close()


def test_cancel_during_a_propagation_leaves_the_segment_and_the_engine_as_they_were(scene, volume_node, segmented,
                                                                                     engine_server):
    client = EngineClient(engine_server.url, engine_server.token)
    correction, node, tumour, before = propagating(scene, volume_node, segmented, client)
    correction.cancel()
    assert correction.state == IDLE and not correction.edits[1:]
    np.testing.assert_array_equal(segment_to_array(node, tumour, volume_node), before)
    correction.box(3, (20, 8, 40, 28))  # runs after the withdrawn propagation and its undo on the engine
    correction.wait()
    held = client.session_mask(correction.session)
    assert sorted(held.slices) == [0, 1, 3]  # the start mask's slice 1, the box slices 0 and 3; nothing propagated
    after = segment_to_array(node, tumour, volume_node)
    assert np.flatnonzero((after != before).any(axis=(1, 2))).tolist() == [3]
    correction.close()


def test_a_segment_on_another_grid_or_under_a_transform_is_refused_before_anything_is_sent(scene, volume_node,
                                                                                          segmented):
    from MedCLIPSAMLib.slicer.segment_slices import grid_problem

    node, tumour, _other = segmented
    assert grid_problem(node, tumour, volume_node) is None
    finer = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "finer")  # same place, half the voxel size
    finer.SetAndObserveImageData(volume_node.GetImageData())
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASDirectionMatrix(matrix)
    finer.SetIJKToRASDirectionMatrix(matrix)
    finer.SetOrigin(volume_node.GetOrigin())
    finer.SetSpacing(*(s / 2 for s in volume_node.GetSpacing()))
    mask = np.zeros((6, 40, 56), np.uint8)
    mask[2, 10:20, 10:20] = 1
    oversampled = scene.GetNodeByID(apply_result(scene, finer, {"fine": mask}).segmentation_node_id)
    fine_id = oversampled.GetSegmentation().GetNthSegmentID(0)
    client = EngineClient("http://127.0.0.1:9", "unused-token-0123456789")  # nothing may be sent
    with pytest.raises(MedCLIPSAMError, match="lies on another voxel grid"):
        Correction(client, scene, volume_node, oversampled, fine_id, axis=0)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    volume_node.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(MedCLIPSAMError, match="'patient' is under a transform; harden"):
        Correction(client, scene, volume_node, node, tumour, axis=0)
    volume_node.SetAndObserveTransformNodeID(None)
    shifted = np.zeros((6, 40, 56), np.uint8)  # a layer cropped to its content is still on the volume's grid
    shifted[4, 30:33, 40:44] = 1
    write_slices(node, tumour, volume_node, 0, {4: shifted[4]})
    assert grid_problem(node, tumour, volume_node) is None
