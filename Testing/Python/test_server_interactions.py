"""Correction sessions through the real engine server (uvicorn on 127.0.0.1, LiteMedSAM), via EngineClient."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from conftest import ENGINE_TOKEN as TOKEN, LiveServer, disk_image, disk_mask
from MedCLIPSAMLib.client import EngineClient, EngineError, Upload
from MedCLIPSAMLib.metrics import dice
from MedCLIPSAMLib.prompts import box_of


def disk_stack() -> np.ndarray:
    """Three slices: blank, the disk, blank (uint8, z first)."""
    blank = np.full((96, 128), 40, np.uint8)
    return np.stack([blank, disk_image(), blank])


@pytest.fixture(scope="module")
def client(engine_server) -> EngineClient:
    return EngineClient(engine_server.url, TOKEN)


@pytest.fixture(scope="module")
def volume_id(client) -> str:
    upload = Upload.of(disk_stack(), (5.0, 1.0, 1.0))
    client.upload(upload)
    return upload.id


def test_box_clicks_propagate_undo_and_close(client, volume_id):
    opened = client.open_session(volume_id, axis=0)
    session = opened["session"]
    assert opened["slices"] == 3 and opened["slice_shape"] == [96, 128] and opened["sam_backend"] == "litemedsam"
    truth = disk_mask()
    answer = client.session_box(session, 1, box_of(truth))
    assert list(answer.slices) == [1] and answer.axis == 0 and answer.can_undo and answer.seconds is not None
    assert dice(answer.slices[1], truth) > 0.95
    before = answer.slices[1]
    clicked = client.session_clicks(session, 1, [(82, 40, False)])
    assert list(clicked.slices) == [1] and clicked.slices[1].sum() < before.sum()
    undone = client.session_undo(session)
    assert np.array_equal(undone.slices[1], before)
    propagated = client.session_propagate(session, 1, "both")
    assert propagated.slices == {} and "stands out" in propagated.message
    held = client.session_mask(session)
    assert list(held.slices) == [1] and np.array_equal(held.slices[1], before)
    closed = client.close_session(session)
    assert closed["state"] == "closed" and closed["cached_slices"] >= 1  # kept with the volume (shared_embeddings)
    with pytest.raises(EngineError, match="No session") as caught:
        client.session_undo(session)
    assert caught.value.status == 404


@pytest.mark.parametrize("call, status, message", [
    (lambda c, s: c.session_box(s, 3, (10, 10, 40, 40)), 400, "Slice 3 is outside the volume: axis 0 has slices 0-2"),
    (lambda c, s: c.session_box(s, 1, (300, 300, 400, 400)), 400, "lies outside the slice"),
    (lambda c, s: c.session_box(s, 1, (40, 40, 10, 10)), 400, "is empty"),
    (lambda c, s: c.session_clicks(s, 1, [(500, 5, True)]), 400, "off the slice"),
    (lambda c, s: c.session_box("0" * 24, 1, (10, 10, 40, 40)), 404, "No session"),
    (lambda c, s: c._answer(f"/sessions/{s}/box", {"slice": 1, "box": [1, 1, 9, 9], "colour": 1}), 400, "colour"),
])
def test_bad_interactions_are_one_line_4xx_and_change_nothing(client, volume_id, call, status, message):
    session = client.open_session(volume_id, axis=0)["session"]
    try:
        client.session_box(session, 1, box_of(disk_mask()))
        before = client.session_mask(session).slices
        with pytest.raises(EngineError, match=message) as caught:
            call(client, session)
        assert caught.value.status == status and "\n" not in str(caught.value)
        after = client.session_mask(session).slices
        assert list(after) == list(before) and all(np.array_equal(after[z], before[z]) for z in before)
    finally:
        client.close_session(session)


def test_a_session_on_an_unknown_volume_is_a_clear_404(client):
    with pytest.raises(EngineError, match="does not hold that volume") as caught:
        client.open_session("f" * 64)
    assert caught.value.status == 404


def test_expired_volume_and_session_get_a_clear_4xx(engine_server):
    from MedCLIPSAMLib.server.app import Limits, create_app
    from MedCLIPSAMLib.server.engine import Engine, EngineConfig

    short = LiveServer(create_app(Engine(EngineConfig(clip_model="unused", device="cpu")), TOKEN,
                                  Limits(ttl_seconds=1.0)))
    try:
        client = EngineClient(short.url, TOKEN)
        upload = Upload.of(disk_stack())
        client.upload(upload)
        session = client.open_session(upload.id, axis=0)["session"]
        time.sleep(1.3)
        with pytest.raises(EngineError, match="No session .* expired") as caught:
            client.session_box(session, 1, (50, 20, 90, 60))
        assert caught.value.status == 404
        with pytest.raises(EngineError, match="does not hold that volume .*expired") as caught:
            client.open_session(upload.id)
        assert caught.value.status == 404
    finally:
        short.stop()


def test_malformed_session_request_is_a_4xx(engine_server):
    request = urllib.request.Request(engine_server.url + "/sessions", data=b"[1, 2]", method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 400 and "JSON object" in json.loads(caught.value.read())["detail"]
