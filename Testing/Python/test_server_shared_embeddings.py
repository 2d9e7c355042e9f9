"""Text runs and correction sessions on one volume share SAM slice embeddings (interactive/shared_embeddings.py):
the real engine server (uvicorn on 127.0.0.1, tiny CLIP, LiteMedSAM), counted in the job's and session's answers."""
from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ENGINE_TOKEN as TOKEN
from MedCLIPSAMLib.client import EngineClient, Upload

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "Resources" / "Samples" / "brain1_image.nrrd"
QUICK = {"m2ib_steps": 2, "m2ib_samples": 2, "slice_range": [10, 12], "refine_rounds": 1, "axis": 0}
SLICES = (10, 11, 12)
BOX = (90, 90, 170, 170)
_twins = itertools.count(1)


@pytest.fixture(scope="module")
def client(engine_server) -> EngineClient:
    return EngineClient(engine_server.url, TOKEN)


def fresh_volume(client: EngineClient) -> str:
    """The sample under an id no other test used (a spacing changed by 1e-9 mm): no embedding of it is cached."""
    from MedCLIPSAMLib.imageio import read_volume

    volume = read_volume(SAMPLE)
    spacing = tuple(volume.spacing_zyx[:2]) + (volume.spacing_zyx[2] + 1e-9 * next(_twins),)
    upload = Upload.of(volume.array, spacing)
    client.upload(upload)
    return upload.id


def text_run(client: EngineClient, volume_id: str, settings: dict | None = None):
    job = client.submit(volume_id, ["tumour"], QUICK | (settings or {}), presets=False)
    deadline = time.monotonic() + 600
    while (status := client.status(job["id"]))["state"] not in ("done", "failed", "cancelled"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert status["state"] == "done", status["error"]
    return status, client.result(job["id"])


def test_a_second_text_run_encodes_nothing_and_gives_the_same_masks(client):
    volume_id = fresh_volume(client)
    first, first_result = text_run(client, volume_id)
    needed = first["sam_slices"]["encoded"]
    assert needed >= 1 and first["sam_slices"]["reused"] == 0
    second, second_result = text_run(client, volume_id)
    assert second["sam_slices"] == {"encoded": 0, "reused": needed}
    np.testing.assert_array_equal(second_result.labels, first_result.labels)


def test_a_text_run_reuses_a_sessions_embeddings_and_a_session_the_text_runs(client):
    corrected, reference = fresh_volume(client), fresh_volume(client)  # the same voxels under two ids
    session = client.open_session(corrected, axis=0)["session"]
    boxed = {z: client.session_box(session, z, BOX) for z in SLICES}
    assert all(answer.seconds is not None for answer in boxed.values())
    status, result = text_run(client, corrected)  # its SAM slices were all encoded by the session
    assert status["sam_slices"]["encoded"] == 0 and status["sam_slices"]["reused"] >= 1
    alone_status, alone = text_run(client, reference)  # the same run, encoding everything itself
    assert alone_status["sam_slices"] == {"encoded": status["sam_slices"]["reused"], "reused": 0}
    np.testing.assert_array_equal(result.labels, alone.labels)

    opened = client.open_session(reference, axis=0)  # after a text run: its slices are encoded already
    assert opened["cached_slices"] == alone_status["sam_slices"]["encoded"]
    encoded_by_run = sorted(alone.boxes["tumour"])
    z = encoded_by_run[0]
    reply = client._json("POST", f"/sessions/{opened['session']}/box", {"slice": z, "box": list(BOX)})
    assert reply["encoded_slices"] == 0  # one decoder pass, no encoder pass
    same = client.session_box(opened["session"], z, BOX)  # replaces it with the same box: equal mask
    assert not same.slices  # nothing changed
    held = client.session_mask(opened["session"]).slices[z]
    np.testing.assert_array_equal(held, boxed[z].slices[z])  # equal to the session's own encoding's mask
    client.close_session(session)
    client.close_session(opened["session"])


def test_another_runtime_encodes_its_own(client):
    from MedCLIPSAMLib.models.onnx_runtime import runtime_available

    if not runtime_available():
        pytest.skip("without ONNX Runtime both runs use PyTorch: nothing to tell apart")
    volume_id = fresh_volume(client)
    onnx, _ = text_run(client, volume_id)  # runtime auto on a CPU: ONNX Runtime's encoder
    torch_run, _ = text_run(client, volume_id, {"runtime": "torch"})
    assert torch_run["sam_slices"] == {"encoded": onnx["sam_slices"]["encoded"], "reused": 0}
