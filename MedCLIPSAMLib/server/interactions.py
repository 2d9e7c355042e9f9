"""HTTP endpoints for correction sessions on an uploaded volume (box, clicks, propagation, undo, reset).

    POST   /sessions                     {"volume", "axis", "window", "sam_backend", "click_mode", "job", "target",
                                         "mask"} -> 201 {"session", "axis", "slices", "slice_shape", ...}; it starts
                                         from "job"'s mask of "target" (a finished text job on that volume), or
                                         from "mask" (the volume's mask, bit-packed, base64), else empty
    POST   /sessions/{id}/box            {"slice", "box": [x0, y0, x1, y1], "mode": "replace"|"add"}
    POST   /sessions/{id}/clicks         {"slice", "clicks": [[x, y, true|false], ...]}
    POST   /sessions/{id}/propagate      {"slice", "direction": "up"|"down"|"both"}
    POST   /sessions/{id}/undo, /reset
    GET    /sessions/{id}/mask           every non-empty slice (to start a client from the session's state)
    DELETE /sessions/{id}                close it and free its memory (it also expires after ``ttl`` idle)
    GET    /calls/{id}, DELETE /calls/{id}   a request sent with ``?wait=S`` that was not done in S seconds:
                                         poll its answer, or withdraw it (server/session_calls.py)

Every interaction answers ``interactive.answer.encode_answer`` of the slices that changed, plus the
engine-side ``seconds``. Interactions run on the request thread (one decoder pass on an encoded slice
is tens of ms; queueing behind a minutes-long text job would not be an interaction), one at a time per
session. Sessions and text runs on one volume share their slice embeddings when interchangeable (same axis,
window, SAM, runtime and precision: interactive/shared_embeddings.py); they are kept while the server holds the
volume, within one memory budget, so a session closed and opened again, or a text run after it, encodes nothing
twice. With ``?wait=S`` any of these
POSTs answers within S seconds, at once when done, else as a call to poll (Slicer's timer does that).
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request

from ..errors import InputError, ModelError
from ..interactive.answer import Answer, encode_answer
from ..interactive.request_values import MAX_CLICKS, MAX_COORDINATE, shown as _shown
from ..settings import CT_WINDOWS
from .engine import Engine
from ..interactive.shared_embeddings import EmbeddingStore, embedding_key
from .guards import json_object
from .session_calls import CallStore, check_wait
from .store import drop_idle

log = logging.getLogger("medclipsam.server")

MAX_SESSIONS = 16
"""Open sessions per server; the least recently used closes first (each may hold up to a cache budget)."""
SESSION_FIELDS = {"volume", "axis", "window", "sam_backend", "click_mode", "job", "target", "mask"}


NUMBER = {"type": "number", "minimum": -MAX_COORDINATE, "maximum": MAX_COORDINATE}
SLICE = {"type": "integer", "minimum": 0, "description": "Slice index along the session's axis"}
BODIES = {
    "open_session": {"type": "object", "additionalProperties": False, "required": ["volume"], "properties": {
        "volume": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "axis": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 2}, {"type": "null"}]},
        "window": {"anyOf": [{"enum": list(CT_WINDOWS)}, {"type": "null"}]},
        "sam_backend": {"type": ["string", "null"]},
        "click_mode": {"anyOf": [{"enum": ["points", "box_edit"]}, {"type": "null"}]},
        "job": {"type": ["string", "null"]}, "target": {"type": ["string", "null"]},
        "mask": {"type": ["string", "null"], "description": "The volume's mask, bit-packed, base64"}}},
    "box": {"type": "object", "additionalProperties": False, "required": ["slice", "box"], "properties": {
        "slice": SLICE, "box": {"type": "array", "items": NUMBER, "minItems": 4, "maxItems": 4},
        "mode": {"enum": ["replace", "add"]}}},
    "clicks": {"type": "object", "additionalProperties": False, "required": ["slice", "clicks"], "properties": {
        "slice": SLICE, "clicks": {"type": "array", "minItems": 1, "maxItems": MAX_CLICKS, "items": {
            "type": "array", "minItems": 3, "maxItems": 3, "prefixItems": [NUMBER, NUMBER, {"type": "boolean"}]}}}},
    "propagate": {"type": "object", "additionalProperties": False, "required": ["slice"], "properties": {
        "slice": SLICE, "direction": {"enum": ["up", "down", "both"]}}},
}
"""What the session routes take; what a schema cannot say (the slice exists, the box lies on it) is answered 400."""
PENDING = {202: {"description": "Not done within ?wait=S: poll GET /calls/{call} (the answer names it)"}}
NO_SESSION = {404: {"description": "No such session (never opened, closed or expired)"}}


def documented(name: str | None, responses: dict[int, dict] | None = None) -> dict[str, Any]:
    """``openapi_extra`` and ``responses`` of a session route: its JSON body (if any) and the codes it answers (the
    app adds those every route shares: guards.document_responses)."""
    extra = {} if name is None else {"openapi_extra": {"requestBody": {"required": True, "content": {
        "application/json": {"schema": BODIES[name]}}}}}
    return {**extra, "responses": {**PENDING, **(NO_SESSION if responses is None else responses)}}


@dataclass
class Held:
    session: Any
    cache_key: Any
    touched: float = field(default_factory=time.monotonic)
    guard: threading.Lock = field(default_factory=threading.Lock)
    """Its requests run one at a time, in order (a withdrawn call's undo included: session_calls.py)."""


class SessionStore:
    """Open sessions; idle ones expire after ``ttl`` seconds. Their embeddings are the volume's (``embeddings``,
    shared with text runs), freed with the volume or by the store's budget, not when a session closes."""

    def __init__(self, ttl: float, max_sessions: int = MAX_SESSIONS, embeddings: EmbeddingStore | None = None):
        self.ttl, self.max_sessions = ttl, max_sessions
        self.embeddings = embeddings if embeddings is not None else EmbeddingStore()
        self._sessions: dict[str, Held] = {}
        self._lock = threading.Lock()
        self.calls = CallStore(ttl)

    def add(self, held: Held) -> str:
        with self._lock:
            self._expire()
            while len(self._sessions) >= self.max_sessions:
                oldest = min(self._sessions, key=lambda key: self._sessions[key].touched)
                del self._sessions[oldest]
            session_id = secrets.token_hex(12)
            self._sessions[session_id] = held
            return session_id

    def get(self, session_id: str) -> Held:
        with self._lock:
            self._expire()
            held = self._sessions.get(session_id)
            if held is None:
                raise HTTPException(404, f"No session '{session_id:.40}' on this server (never opened, closed, or "
                                         "expired after idle time); open a new one with POST /sessions.")
            held.touched = time.monotonic()
            return held

    def close(self, session_id: str) -> None:
        self.get(session_id)
        with self._lock:
            del self._sessions[session_id]

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._sessions)

    @property
    def cached_slices(self) -> int:
        return self.embeddings.cached_slices

    def expire(self) -> None:
        """Drop idle sessions now (the server's sweeper timer calls this, so memory is freed without requests)."""
        with self._lock:
            self._expire()
        self.calls.expire()

    def _expire(self) -> None:
        drop_idle(self._sessions, self.ttl)


def interaction_router(engine: Engine, store: SessionStore) -> APIRouter:
    """The /sessions endpoints over ``store``; the app's volume store and job queue are read from
    ``request.app.state``."""
    router = APIRouter()
    ttl = store.ttl

    @router.post("/sessions", status_code=201, **documented("open_session", {
        404: {"description": "The server does not hold that volume, or no such job"},
        409: {"description": "The job is not done"},
        410: {"description": "The job's result was already fetched: send the mask"}}))
    async def open_session(request: Request, wait: str | None = None) -> dict[str, Any]:
        seconds = check_wait(wait)
        body = await json_object(request, SESSION_FIELDS, "session")
        volume_id = str(body.get("volume", ""))
        volume = request.app.state.volumes.get(volume_id)
        if volume is None:
            raise HTTPException(404, "The server does not hold that volume (never uploaded, or expired): upload it "
                                     "again, then open the session.")
        start = _start_mask(request, body, volume.array.shape)
        if seconds is not None:
            call = store.calls.start(lambda: _open(volume_id, volume, body, start), threading.Lock(),
                                     withdraw=lambda opened: _close_quietly(opened["session"]))
            return await store.calls.reply(call, seconds)
        from fastapi.concurrency import run_in_threadpool

        return await run_in_threadpool(_open, volume_id, volume, body, start)

    def _session_sam(name: str):
        """The SAM a session asks for, only if the server has it loaded or its weights on disk: a session request never
        starts a download, and a failed load leaves the model text jobs use loaded (models/sam.py)."""
        engine.check_sam_at_hand(name, "a session")
        try:
            return engine.session_sam(name)
        except ModelError as exc:
            log.warning("a session's SAM %s did not load: %s", name, exc)
            detail = getattr(exc, "server_detail", None) or "its weights are missing or do not fit that model"
            raise InputError(f"SAM backend {_shown(name)} cannot be loaded on this server: {detail}") from None

    def _close_quietly(session_id: str) -> None:
        try:
            store.close(session_id)
        except HTTPException:
            pass  # closed or expired already

    def _open(volume_id: str, volume, body: dict[str, Any], start: np.ndarray | None) -> dict[str, Any]:
        from ..imageio import normalize_intensity, resolve_axis
        from ..interactive.session import InteractionSession
        from ..models.sam import resolve_backend

        backend_name = resolve_backend(_text(body, "sam_backend") or "auto", engine.device)
        window = _text(body, "window")
        if window is not None and window not in CT_WINDOWS:
            raise InputError(f"Unknown CT window {_shown(window)}; choose {', '.join(CT_WINDOWS)} or null.")
        axis = body.get("axis")
        if axis is not None and (isinstance(axis, bool) or not isinstance(axis, int) or not 0 <= axis <= 2):
            raise InputError(f"'axis' must be 0, 1, 2 or null, not {_shown(axis)}.")
        axis = resolve_axis(axis, volume)
        sam, settings = _session_sam(backend_name)
        key = embedding_key(volume_id, axis, window, sam, settings.sam_checkpoint, settings.bf16)
        cache = store.embeddings.cache(key, sam, lambda: np.moveaxis(normalize_intensity(volume.array, window), axis, 0))
        cached = len(cache)
        session = InteractionSession(sam, volume, axis=axis, cache=cache, click_mode=_text(body, "click_mode"))
        if start is not None:
            session.set_mask(start)
        session_id = store.add(Held(session, key))
        return {"session": session_id, "axis": session.axis, "slices": session.slice_count,
                "slice_shape": list(session.slice_shape), "sam_backend": sam.name, "click_mode": session.click_mode,
                "expires_s": ttl, "cached_slices": cached}

    def _answered(held: Held, act) -> dict[str, Any]:
        start, encoded = time.perf_counter(), held.session.cache.encoded_count
        result: Answer = act(held.session)
        return {**encode_answer(result), "seconds": round(time.perf_counter() - start, 4),
                "encoded_slices": held.session.cache.encoded_count - encoded}

    async def respond(session_id: str, wait: str | None, act, undoable: bool = True) -> dict[str, Any]:
        """The interaction's answer; with ``wait``, within that many seconds or as a call (session_calls.py)."""
        seconds = check_wait(wait)
        held = store.get(session_id)
        # without ?wait too: a call has its own thread, so a request queued behind a long propagation holds no
        # thread-pool worker (40 of them waiting on a session's lock stalled every route of the server)
        call = store.calls.start(lambda: _answered(held, act), held.guard,
                                 withdraw=(lambda _: held.session.undo()) if undoable and seconds is not None else None)
        return await store.calls.reply(call, seconds)

    @router.get("/calls/{call_id}")
    async def call_answer(call_id: str, wait: str = "0") -> dict[str, Any]:
        seconds = check_wait(wait)
        return await store.calls.reply(store.calls.get(call_id), seconds)

    @router.delete("/calls/{call_id}")
    def withdraw_call(call_id: str) -> dict[str, Any]:
        store.calls.withdraw(call_id)
        return {"call": call_id, "state": "withdrawn"}

    @router.post("/sessions/{session_id}/box", **documented("box"))
    async def box(session_id: str, request: Request, wait: str | None = None) -> dict[str, Any]:
        body = await json_object(request, {"slice", "box", "mode"}, "box")
        return await respond(session_id, wait, lambda s: s.box(body.get("slice"), body.get("box"),
                                                               body.get("mode", "replace")))

    @router.post("/sessions/{session_id}/clicks", **documented("clicks"))
    async def clicks(session_id: str, request: Request, wait: str | None = None) -> dict[str, Any]:
        body = await json_object(request, {"slice", "clicks"}, "clicks")
        given = body.get("clicks")
        if not isinstance(given, list) or not 1 <= len(given) <= MAX_CLICKS:
            raise InputError(f"'clicks' must be a list of 1 to {MAX_CLICKS} clicks [x, y, true|false]"
                             f"{f', not {len(given)}' if isinstance(given, list) else ''}.")
        return await respond(session_id, wait, lambda s: s.clicks(body.get("slice"), given))

    @router.post("/sessions/{session_id}/propagate", **documented("propagate"))
    async def propagate(session_id: str, request: Request, wait: str | None = None) -> dict[str, Any]:
        body = await json_object(request, {"slice", "direction"}, "propagate")
        return await respond(session_id, wait, lambda s: s.propagate(body.get("slice"),
                                                                     body.get("direction", "both")))

    @router.post("/sessions/{session_id}/undo", **documented(None))
    async def undo(session_id: str, wait: str | None = None) -> dict[str, Any]:
        return await respond(session_id, wait, lambda s: s.undo(), undoable=False)

    @router.post("/sessions/{session_id}/reset", **documented(None))
    async def reset(session_id: str, wait: str | None = None) -> dict[str, Any]:
        return await respond(session_id, wait, lambda s: s.reset())

    @router.get("/sessions/{session_id}/mask", responses=NO_SESSION)
    def mask(session_id: str) -> dict[str, Any]:
        session = store.get(session_id).session
        filled = np.flatnonzero(session.mask.any(axis=(1, 2)))
        return encode_answer(Answer(session.axis, {int(z): session.mask[z] for z in filled}, "",
                                    bool(session._history)))

    @router.delete("/sessions/{session_id}", responses=NO_SESSION)
    def close(session_id: str) -> dict[str, Any]:
        store.close(session_id)
        return {"session": session_id, "state": "closed", "open_sessions": len(store),
                "cached_slices": store.cached_slices}

    router.sessions = store  # for /info-style checks and tests
    return router


def _start_mask(request: Request, body: dict[str, Any], shape: tuple[int, ...]) -> np.ndarray | None:
    """The mask a session starts from: a finished text job's on the same volume, or one the client sent."""
    job_id, given = _text(body, "job"), _text(body, "mask")
    if job_id is not None and given is not None:
        raise InputError("Give 'job' or 'mask' to start from, not both.")
    if given is not None:
        from ..interactive.answer import decode_mask

        return decode_mask(given, shape)
    if job_id is None:
        return None
    from .. import wire
    from .jobs import DONE

    job = request.app.state.jobs.get(job_id)
    if job is None or job.state != DONE:
        raise HTTPException(404 if job is None else 409,
                            f"Job '{job_id:.40}' has no result to start from (unknown, expired or not done).")
    if job.result is None:
        raise HTTPException(410, f"Job '{job_id:.40}' result was already fetched (the server frees it then); "
                                 "send the mask instead.")
    result = wire.decode_result(job.result)
    target = _text(body, "target") or result.names[0]
    if target not in result.masks:
        raise InputError(f"Job '{job_id:.40}' has no target '{target:.60}'; it has {', '.join(result.names)}.")
    if result.masks[target].shape != tuple(shape):
        raise InputError("That job ran on another volume; start the session on the job's volume.")
    return result.masks[target]


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise InputError(f"'{name}' must be text, not {_shown(value, 40)}.")
    return value
