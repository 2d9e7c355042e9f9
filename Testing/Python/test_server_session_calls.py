"""Session requests answered as calls to poll (server/session_calls.py, session_call.py): real uvicorn server."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from conftest import ENGINE_TOKEN as TOKEN, disk_image, disk_mask
from MedCLIPSAMLib.client import EngineClient, EngineError, Upload
from MedCLIPSAMLib.prompts import box_of
from MedCLIPSAMLib.session_call import SessionCall


@pytest.fixture(scope="module")
def client(engine_server) -> EngineClient:
    return EngineClient(engine_server.url, TOKEN)


@pytest.fixture(scope="module")
def volume_id(client) -> str:
    """Eight slices of the same disk: a propagation from slice 0 runs through all of them (an encoder pass each)."""
    upload = Upload.of(np.stack([disk_image(seed=z) for z in range(8)]), (2.0, 1.0, 1.0))
    client.upload(upload)
    return upload.id


def poll(call: SessionCall, limit: float = 300.0) -> dict:
    deadline = time.monotonic() + limit
    while not call.poll():
        assert time.monotonic() < deadline
    return call.reply


def test_a_long_propagation_answers_as_a_call_with_the_same_answer(client, volume_id):
    opened = poll(SessionCall(client, "POST", "/sessions", {"volume": volume_id, "axis": 0}))
    session = opened["session"]
    box = SessionCall(client, "POST", f"/sessions/{session}/box", {"slice": 0, "box": list(box_of(disk_mask()))})
    poll(box)
    assert list(box.answer().slices) == [0]
    propagation = SessionCall(client, "POST", f"/sessions/{session}/propagate", {"slice": 0, "direction": "up"})
    assert not propagation.finished and propagation.call  # 7 encoder passes do not fit in 0.1 s
    assert not propagation.poll()  # asked once, still running
    answer = propagation.answer() if poll(propagation) else None
    assert sorted(answer.slices) == list(range(1, 8)) and answer.can_undo
    again = json.loads(client._request("GET", f"/calls/{propagation.call}"))  # a lost answer can be asked again
    assert sorted(again["slices"]) == sorted(propagation.reply["slices"])
    with pytest.raises(EngineError, match="answered already") as caught:  # applied by the client: undo it instead
        client._request("DELETE", f"/calls/{propagation.call}")
    assert caught.value.status == 409
    with pytest.raises(EngineError, match="No call") as caught:
        client._request("GET", "/calls/" + "0" * 24)
    assert caught.value.status == 404 and "\n" not in str(caught.value)
    client.close_session(session)


def test_a_withdrawn_propagation_is_undone_and_the_next_request_runs_after_it(client, volume_id):
    session = client.open_session(volume_id, axis=0)["session"]
    client.session_box(session, 0, box_of(disk_mask()))
    before = client.session_mask(session).slices
    propagation = SessionCall(client, "POST", f"/sessions/{session}/propagate", {"slice": 0, "direction": "up"})
    assert propagation.call
    propagation.withdraw()
    with pytest.raises(EngineError, match="No call"):
        client._request("GET", f"/calls/{propagation.call}")
    after_box = client.session_box(session, 4, box_of(disk_mask()))  # waits for the propagation and its undo
    assert list(after_box.slices) == [4]
    held = client.session_mask(session).slices
    assert sorted(held) == [0, 4] and np.array_equal(held[0], before[0])
    client.close_session(session)


def test_a_bad_request_with_wait_is_the_same_one_line_4xx(client, volume_id):
    session = client.open_session(volume_id, axis=0)["session"]
    with pytest.raises(EngineError, match="Slice 9 is outside the volume") as caught:
        SessionCall(client, "POST", f"/sessions/{session}/box", {"slice": 9, "box": [1, 1, 20, 20]})
    assert caught.value.status == 400 and "\n" not in str(caught.value)
    for bad in ("30", "AAA", "nan", "-1"):
        with pytest.raises(EngineError, match="'wait' must be a number of seconds from 0 to 2") as caught:
            client._request("POST", f"/sessions/{session}/undo?wait={bad}", b"{}", "application/json")
        assert caught.value.status == 400 and "\n" not in str(caught.value), bad
    with pytest.raises(EngineError, match="'wait' must be") as caught:
        client._request("GET", "/calls/0?wait=x", None, None)
    assert caught.value.status == 400
    with pytest.raises(EngineError, match="No session") as caught:
        SessionCall(client, "POST", "/sessions/" + "0" * 24 + "/box", {"slice": 1, "box": [1, 1, 20, 20]})
    assert caught.value.status == 404
    assert client.session_mask(session).slices == {}
    client.close_session(session)


def test_calls_need_the_token(client):
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(urllib.request.Request(client.url + "/calls/" + "0" * 24))
    assert caught.value.code == 401


def test_an_unread_call_expires_after_the_ttl_and_a_withdrawn_one_is_undone_once():
    import threading

    from fastapi import HTTPException

    from MedCLIPSAMLib.server.session_calls import CallStore

    store, guard, undone = CallStore(ttl=0.05), threading.Lock(), []
    call = store.start(lambda: "answer", guard, withdraw=undone.append)
    call.future.result(timeout=10)
    store.withdraw(call.id)  # ended, never read: taken back now
    assert undone == ["answer"]
    with pytest.raises(HTTPException):
        store.withdraw(call.id)  # once only
    release = threading.Event()
    running = store.start(lambda: release.wait(10) and "later", guard, withdraw=undone.append)
    store.withdraw(running.id)  # still running: taken back when it ends
    release.set()
    running.future.result(timeout=10)
    assert undone == ["answer", "later"]
    kept = store.start(lambda: "kept", guard)
    kept.future.result(timeout=10)
    time.sleep(0.1)
    store.expire()
    with pytest.raises(HTTPException) as caught:
        store.get(kept.id)
    assert caught.value.status_code == 404 and len(store) == 0
