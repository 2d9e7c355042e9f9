"""One Segment click as Slicer runs it: real MRML (slicer-core), a real engine server on 127.0.0.1."""
import time

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

import vtk  # noqa: E402  (slicer-core brings it)
from vtk.util import numpy_support  # noqa: E402

from test_mrml import scene, segmentation_converters, volume_node  # noqa: E402,F401  (shared fixtures)
from MedCLIPSAMLib.client import EngineClient, EngineError  # noqa: E402
from MedCLIPSAMLib.slicer.mrml import segment_to_array  # noqa: E402
from MedCLIPSAMLib.slicer.run import (APPLIED, CANCELLED, FAILED, PACKING, STARTING, UPLOADING,  # noqa: E402
                                      SegmentRun, read_input)

QUICK = {"m2ib_steps": 2, "m2ib_samples": 2, "refine_rounds": 1}


def drive(run: SegmentRun, timeout: float = 120.0, interval: float = 0.05) -> list:
    """What the panel's QTimer does: step until finished; returns the progress texts seen."""
    seen, deadline = [], time.monotonic() + timeout
    while not run.finished:
        assert time.monotonic() < deadline, run.progress
        run.step()
        seen.append(run.progress.text)
        time.sleep(interval)
    return seen


def test_read_input_keeps_voxels_and_spacing_in_kji_order(volume_node):
    upload = read_input(volume_node)
    from MedCLIPSAMLib.wire import decode_volume

    array, spacing = decode_volume(upload.payload)
    assert array.shape == (6, 40, 56) and spacing == pytest.approx((3.0, 0.9, 0.6))


def test_a_run_applies_the_engine_result_as_one_segment_and_overlay(scene, volume_node, engine_server):
    run = SegmentRun(engine_server, scene, volume_node, ["brain tumor"], QUICK)
    seen = drive(run)
    assert run.state == APPLIED, run.error
    assert any("sam" in text for text in seen) and run.progress.text == "Done..."
    node = scene.GetNodeByID(run.record.segmentation_node_id)
    segment = node.GetSegmentation().GetSegment(run.record.segment_ids[0])
    assert segment.GetName() == "brain tumor"
    np.testing.assert_array_equal(segment_to_array(node, run.record.segment_ids[0], volume_node),
                                  run.result.masks["brain tumor"].astype(np.uint8))
    overlay = scene.GetFirstNodeByName("brain tumor saliency")
    assert overlay is not None and overlay.GetSpacing() == pytest.approx(volume_node.GetSpacing())
    run.record.undo()
    assert scene.GetNodeByID(run.record.segmentation_node_id) is None


def test_cancel_changes_nothing_even_when_the_result_comes_later(scene, volume_node, engine_server):
    nodes_before = scene.GetNumberOfNodes()
    run = SegmentRun(engine_server, scene, volume_node, ["mass"], {"m2ib_steps": 3})
    while run.job_id is None:  # upload (begin, part, commit) and submit
        run.step()
    run.cancel()
    assert run.state == CANCELLED and run.finished
    client = EngineClient(engine_server.url, engine_server.token)
    deadline = time.monotonic() + 60
    while client.status(run.job_id)["state"] not in ("done", "cancelled", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    run.step()  # a late timer tick must not apply anything
    assert scene.GetNumberOfNodes() == nodes_before and run.record is None


def test_a_result_for_a_removed_volume_is_not_applied(scene, volume_node, engine_server):
    run = SegmentRun(engine_server, scene, volume_node, ["mass"], QUICK)
    run.step()
    scene.RemoveNode(volume_node)
    drive(run)
    assert run.state == FAILED and "input volume was removed" in run.error
    assert scene.GetFirstNodeByClass("vtkMRMLSegmentationNode") is None


def test_engine_errors_end_the_run_with_the_engine_message(scene, volume_node, engine_server):
    run = SegmentRun(engine_server, scene, volume_node, ["mass"], QUICK | {"slice_range": [40, 50]})
    drive(run)
    assert run.state == FAILED and run.error.startswith("Slice range 40-50 is outside")
    bad = SegmentRun(engine_server, scene, volume_node, ["mass"], {"beta": -1.0})
    while bad.state in (STARTING, PACKING):  # engine ready, volume packed over a few steps; the server holds
        bad.step()                            # it already, so it is submitted at once, and refused
    assert bad.state == FAILED and "'beta' must be a finite number >= 0" in bad.error


class DeadEngine:
    """A local engine whose process exited before it was ready (e.g. torch missing)."""

    url = token = None

    def ready(self):
        return False

    def failure(self):
        return "No module named 'torch': install PyTorch first."


class SlowEngine(DeadEngine):
    def failure(self):
        return None


def test_an_engine_that_failed_to_start_fails_the_run_and_a_starting_one_waits(scene, volume_node):
    run = SegmentRun(DeadEngine(), scene, volume_node, ["mass"])
    run.step()
    assert run.state == FAILED and "No module named 'torch'" in run.error
    waiting = SegmentRun(SlowEngine(), scene, volume_node, ["mass"])
    waiting.step()
    assert not waiting.finished and "Starting the engine" in waiting.progress.text
    waiting.cancel()
    assert waiting.state == CANCELLED


def ct_node(scene, shape=(20, 256, 400)):
    """A 4 MB int16 volume (the test server takes up to 5 MB), so the upload has several 0.5 MB parts."""
    rng = np.random.default_rng(0)
    array = np.clip(40 + 15 * rng.standard_normal(shape), -1024, 3000).astype(np.int16)
    array[:, 100:140, 150:200] += 300
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    image = vtk.vtkImageData()
    image.SetDimensions(shape[2], shape[1], shape[0])
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = array.ravel()
    node.SetAndObserveImageData(image)
    return node


def test_the_upload_goes_one_part_per_step_with_progress_in_mb(scene, engine_server):
    node = ct_node(scene)
    run = SegmentRun(engine_server, scene, node, ["mass"], QUICK | {"slice_range": [10, 10]}, part_bytes=500_000)
    while run.state in (STARTING, PACKING):  # the engine is ready; the volume is packed in 16 MB steps
        run.step()
    assert run.state == UPLOADING and run.uploading and run.progress.text == "Uploading 0 of 4 MB"
    sent, texts = [], []
    while run.state == UPLOADING:
        run.step()
        sent.append(run.sending.done)
        texts.append(run.progress.text)
    assert len(sent) == run.sending.parts + 1 == 10, "nine parts, then the commit (with the submit)"
    assert sent == sorted(sent) and sent[0] == 500_000 and sent[-1] == run.sending.total
    assert texts[1] == "Uploading 1 of 4 MB" and "Uploading 4 of 4 MB" in texts and run.progress.text == "Queued..."
    assert run.progress.bar_format == "Queued" and run.sending.committed
    drive(run)
    assert run.state == APPLIED, run.error
    assert run.result.masks["mass"].shape == (20, 256, 400)
    assert run.result.labels.size == 0, "Slicer asks for no label map"


def test_cancel_during_the_upload_stops_it_and_the_next_run_works(scene, engine_server):
    node = ct_node(scene, (20, 256, 390))
    nodes_before = scene.GetNumberOfNodes()
    run = SegmentRun(engine_server, scene, node, ["mass"], QUICK | {"slice_range": [10, 10]}, part_bytes=500_000)
    while run.state in (STARTING, PACKING):
        run.step()
    for _ in range(2):  # part 0, part 1
        run.step()
    assert run.state == UPLOADING and run.sending.done == 1_000_000
    run.cancel()
    assert run.state == CANCELLED and run.progress.text == "Cancelled..." and run.job_id is None
    run.step()  # a late tick sends nothing
    assert run.sending.done == 1_000_000
    client = EngineClient(engine_server.url, engine_server.token)
    with pytest.raises(EngineError) as dropped:
        client._request("PUT", f"/uploads/{run.sending.id}/parts/2", b"x")
    assert dropped.value.status == 404, "the server dropped the partial upload"
    assert not client.has_volume(run.volume_id) and scene.GetNumberOfNodes() == nodes_before

    again = SegmentRun(engine_server, scene, node, ["mass"], QUICK | {"slice_range": [10, 10]})
    drive(again)
    assert again.state == APPLIED, again.error


def test_a_protocol_mismatch_fails_the_run_with_one_line_and_sends_nothing(scene, volume_node, engine_server,
                                                                          monkeypatch):
    from MedCLIPSAMLib import protocol

    monkeypatch.setattr(EngineClient, "protocol", protocol.PROTOCOL_VERSION + 1)
    nodes_before = scene.GetNumberOfNodes()
    run = SegmentRun(engine_server, scene, volume_node, ["mass"], QUICK)
    drive(run)
    assert run.state == FAILED and "\n" not in run.error and run.error.startswith("Version mismatch")
    assert f"protocol {protocol.PROTOCOL_VERSION + 1}" in run.error and "update the engine server" in run.error
    assert run.sending is None and scene.GetNumberOfNodes() == nodes_before


def test_a_result_whose_saliency_ignores_the_prompt_is_applied_with_a_warning(scene, volume_node,
                                                                               text_ignoring_server):
    """The engine serves a text tower that ignores the text: the run is applied, and the panel's warning names
    the prompt and the measured threshold."""
    from MedCLIPSAMLib.faithfulness import UNFAITHFUL_BELOW, WARNING

    run = SegmentRun(text_ignoring_server, scene, volume_node, ["brain tumor"], QUICK)
    drive(run)
    assert run.state == APPLIED, run.error
    assert run.result.faithfulness["brain tumor"] == pytest.approx(0.0, abs=1e-6)
    assert len(run.warnings) == 1 and run.warnings[0].startswith(f"'brain tumor': {WARNING}")
    assert f"under {UNFAITHFUL_BELOW:g}" in run.warnings[0]
