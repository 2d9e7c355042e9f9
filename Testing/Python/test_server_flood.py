"""A client flooding the engine server: no token, huge bodies, idle connections, piles of session calls.

Each test uses a real uvicorn server on 127.0.0.1 (the session's ``engine_server``, or one started here
with shorter timeouts) and checks that the server refuses early and stays responsive for everyone else.
"""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import numpy as np
import pytest
from fastapi import HTTPException

from conftest import ENGINE_MAX_UPLOAD, ENGINE_TOKEN as TOKEN, LiveServer, disk_image
from MedCLIPSAMLib.client import EngineClient, Upload
from MedCLIPSAMLib.server import connections
from MedCLIPSAMLib.server.guards import MAX_LARGE_BODY_ITEMS, session_body_limit
from MedCLIPSAMLib.server.session_calls import MAX_PENDING_PER_SESSION, CallStore


def raw(server, method: str, path: str, body: bytes = b"", token: str | None = TOKEN, declared: int | None = None,
        timeout: float = 30) -> tuple[int, dict]:
    """(status, JSON answer) of one request; ``declared``: a Content-Length larger than what is sent."""
    connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=timeout)
    try:
        connection.putrequest(method, path)
        if token:
            connection.putheader("Authorization", f"Bearer {token}")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(declared if declared is not None else len(body)))
        try:
            connection.endheaders(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = connection.getresponse()
        text = answer.read()
        return answer.status, json.loads(text) if text else {}
    finally:
        connection.close()


def test_the_listening_socket_is_tcp_so_answers_are_not_held_by_nagle():
    from MedCLIPSAMLib.server.serve import bind

    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP  # asyncio sets TCP_NODELAY on accepted connections only then
    finally:
        sock.close()


def test_a_request_without_the_token_is_refused_before_its_body_is_read(engine_server):
    """A 100 MB body declared without the token: 401 after the first megabyte, not after reading it all."""
    status, answer = raw(engine_server, "POST", "/sessions", b"x" * 1_000_000, token=None, declared=100_000_000)
    assert status == 401 and "token" in answer["detail"]
    status, answer = raw(engine_server, "POST", "/sessions", b"{}", token="wrong-token-0123456789")
    assert status == 401


def test_a_session_body_is_bounded_and_may_not_be_many_small_items(engine_server):
    limit = session_body_limit(ENGINE_MAX_UPLOAD, 1_000_000)
    status, answer = raw(engine_server, "POST", "/sessions", b"{}", declared=limit + 1)
    assert status == 413
    many = json.dumps({"volume": "x", "pad": [0] * (MAX_LARGE_BODY_ITEMS + 400_000)}).encode()  # 1.2 MB of zeros
    status, answer = raw(engine_server, "POST", "/sessions", many)
    assert status == 413 and "only carry a session's mask as one string" in answer["detail"]
    one_string = json.dumps({"volume": "f" * 64, "mask": "A" * 1_200_000}).encode()  # a big mask is fine
    status, answer = raw(engine_server, "POST", "/sessions", one_string)
    assert status == 404 and "does not hold that volume" in answer["detail"]


def test_calls_pile_up_to_a_bound_per_session_and_a_withdrawn_one_never_runs():
    store, guard, ran = CallStore(ttl=60), threading.Lock(), []
    guard.acquire()  # a long interaction is running on this session
    try:
        calls = [store.start(lambda i=i: ran.append(i), guard, withdraw=lambda _: None)
                 for i in range(MAX_PENDING_PER_SESSION)]
        with pytest.raises(HTTPException) as refused:
            store.start(lambda: ran.append("one too many"), guard)
        assert refused.value.status_code == 429 and "at most 8 a session" in refused.value.detail
        other = store.start(lambda: "another session", threading.Lock())  # other sessions are not held up
        assert other.future.result(timeout=10) == "another session"
        store.withdraw(calls[3].id)
    finally:
        guard.release()
    for call in calls:
        call.future.exception(timeout=10) if call is calls[3] else call.future.result(timeout=10)
    assert ran == [0, 1, 2, 4, 5, 6, 7]  # in order; the withdrawn one was skipped, not run and undone
    assert isinstance(calls[3].future.exception(), HTTPException)


def test_requests_queued_on_a_busy_session_hold_up_no_other_route(engine_server):
    client = EngineClient(engine_server.url, TOKEN)
    upload = Upload.of(np.stack([disk_image(seed=z) for z in range(3)]), (2.0, 1.0, 1.0))
    client.upload(upload)
    session = client.open_session(upload.id, axis=0)["session"]
    held = _held(engine_server, session)
    answers: list[int] = []
    held.guard.acquire()  # as if a propagation ran for minutes
    try:
        def undo():
            answers.append(raw(engine_server, "POST", f"/sessions/{session}/undo", b"", timeout=60)[0])

        threads = [threading.Thread(target=undo) for _ in range(45)]  # more than the 40 thread-pool workers
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while answers.count(429) < 45 - MAX_PENDING_PER_SESSION and time.monotonic() < deadline:
            time.sleep(0.05)
        assert answers.count(429) == 45 - MAX_PENDING_PER_SESSION
        assert client.info()["version"]  # answered while 8 requests wait on the session
    finally:
        held.guard.release()
    for thread in threads:
        thread.join(60)
    assert sorted(set(answers)) == [400, 429]  # the queued undos ran: nothing to undo (one-line 400)
    client.close_session(session)


def _held(server, session_id: str):
    """The server-side session (the test's server runs in this process)."""
    return server.server.config.app.state.sessions.get(session_id)


def test_connections_that_send_nothing_are_closed(tiny_clip_folder, monkeypatch):
    import uvicorn

    from MedCLIPSAMLib.server.app import create_app
    from MedCLIPSAMLib.server.engine import Engine, EngineConfig

    monkeypatch.setattr(connections, "REQUEST_START_S", 1.5)
    live = LiveServer(create_app(Engine(EngineConfig(clip_model=str(tiny_clip_folder), device="cpu")), TOKEN))
    live.server.config.timeout_keep_alive = 1  # read by each new connection
    assert isinstance(live.server.config, uvicorn.Config)
    try:
        host, port = live.url.removeprefix("http://").split(":")
        idle = socket.create_connection((host, int(port)))
        trickle = socket.create_connection((host, int(port)))
        idle.settimeout(10)
        trickle.settimeout(10)
        started = time.monotonic()
        for byte in b"GET /info HTTP/1.1\r\nHost: x\r\n"[:4]:
            trickle.sendall(bytes([byte]))  # a header a byte at a time: never a whole request
            time.sleep(0.3)
        assert idle.recv(1) == b""  # closed by the server, no request sent
        assert trickle.recv(1) == b"" and time.monotonic() - started < 8
        status, _ = raw(live, "GET", "/info")
        assert status == 200  # the server itself goes on answering
    finally:
        live.stop()


def test_the_soft_file_limit_is_raised_to_the_hard_one():
    resource = pytest.importorskip("resource")
    before, after = connections.raise_file_limit()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert after >= before and soft == after and (hard == resource.RLIM_INFINITY or soft == hard)
