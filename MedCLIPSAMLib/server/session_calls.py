"""Session requests a client need not wait on: the answer comes at once when ready, else as a call to poll.

Slicer's GUI thread may not wait on the network for more than one short poll, and a propagation over
many slices (or the first encoder pass, or opening a session on a large volume) takes seconds. A
session request with ``?wait=S`` (0 to ``MAX_WAIT_S``) runs on a worker thread and the handler waits
at most S seconds for it: an interaction on an encoded slice still answers in one round trip, a longer
one answers ``202 {"call": id, "pending": true}``, and

    GET    /calls/{id}?wait=S    the same body (or the same one-line 4xx) once done, 202 while it runs
    DELETE /calls/{id}           withdraw it: its effect is taken back (the interaction undone, the
                                 opened session closed) whether it has ended yet or not

Calls on one session run one at a time, in order (``guard``), and a withdrawal runs under the same
guard, so it always takes back its own call's effect, never a later one's. A finished call's answer
can be read again for ``READ_GRACE_S`` after it was first read (a poll whose answer was lost on a busy
link is asked again), and an unread one is kept for ``ttl`` like jobs and sessions.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

from fastapi import HTTPException
from fastapi.responses import JSONResponse

from ..errors import InputError

log = logging.getLogger("medclipsam.server")

MAX_WAIT_S = 2.0
"""The longest a request handler waits for its work: a client wanting an answer at once asks 0.1 s."""
READ_GRACE_S = 60.0
MAX_PENDING_PER_SESSION = 8
"""Calls waiting or running on one session; more is a client flooding it (each call is a thread): 429."""
MAX_PENDING = 64
"""Calls waiting or running on the whole server."""


@dataclass
class Call:
    id: str
    guard: threading.Lock
    """Shared by every call on one session: they run, and are withdrawn, one at a time."""
    withdraw: Callable[[Any], None] | None
    future: Future = field(default_factory=Future)
    withdrawn: bool = False
    touched: float = field(default_factory=time.monotonic)
    read: float = 0.0
    """When its answer was first read (0: not yet)."""
    _state: threading.Lock = field(default_factory=threading.Lock)


def check_wait(wait: str | float | None) -> float | None:
    """The ``?wait=`` seconds, or None; read here (not typed in the route) so a bad value gets the one-line 400."""
    if wait is None:
        return None
    try:
        seconds = float(wait)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not 0 <= seconds <= MAX_WAIT_S:  # also NaN
        raise InputError(f"'wait' must be a number of seconds from 0 to {MAX_WAIT_S:g} (how long the request may "
                         f"wait), not '{str(wait)[:40]}'.")
    return seconds


class CallStore:
    """Running and unread calls; finished ones unread for ``ttl`` seconds expire (the sweeper calls ``expire``)."""

    def __init__(self, ttl: float):
        self.ttl = ttl
        self._calls: dict[str, Call] = {}
        self._lock = threading.Lock()

    def start(self, work: Callable[[], Any], guard: threading.Lock,
              withdraw: Callable[[Any], None] | None = None) -> Call:
        """Run ``work`` on a thread of its own, after the calls before it on the same ``guard``; 429 when that
        session or the server already has too many calls waiting or running."""
        call = Call(secrets.token_hex(12), guard, withdraw)
        with self._lock:
            pending = [c for c in self._calls.values() if not c.future.done()]
            if sum(c.guard is guard for c in pending) >= MAX_PENDING_PER_SESSION or len(pending) >= MAX_PENDING:
                where = "server" if len(pending) >= MAX_PENDING else "session"
                raise HTTPException(429, f"Too many requests waiting on this {where} (at most "
                                         f"{MAX_PENDING_PER_SESSION} a session, {MAX_PENDING} in all); wait for their "
                                         "answers before sending more.")
            self._calls[call.id] = call
        threading.Thread(target=self._run, args=(call, work), name="medclipsam-session-call", daemon=True).start()
        return call

    async def reply(self, call: Call, wait: float | None) -> Any:
        """The work's answer if it ends within ``wait`` seconds (its error raised as it was), else a 202;
        ``wait`` None: whenever it ends (a client that asked without ``?wait``), holding no thread meanwhile."""
        if not call.future.done() and (wait is None or wait > 0):
            waited = asyncio.wrap_future(call.future)
            # the error is raised below from the call's own future; reading it here too keeps asyncio from logging
            # "exception was never retrieved" for this wrapper, now or when the call ends after the wait
            waited.add_done_callback(lambda done: done.cancelled() or done.exception())
            await asyncio.wait({waited}, timeout=wait)
        if not call.future.done():
            call.touched = time.monotonic()
            return JSONResponse({"call": call.id, "pending": True}, status_code=202)
        call.read = call.read or time.monotonic()
        return call.future.result()  # raises the work's own error (a 4xx through the app's handlers)

    def get(self, call_id: str) -> Call:
        with self._lock:
            self._expire()
            call = self._calls.get(call_id)
        if call is None:
            raise HTTPException(404, f"No call '{call_id:.40}' on this server (never started, already answered, "
                                     "withdrawn or expired).")
        call.touched = time.monotonic()
        return call

    def withdraw(self, call_id: str) -> None:
        """Take back the call's effect: now if it has ended, else as soon as it ends (never twice)."""
        call = self.get(call_id)
        if call.withdraw is None:
            raise InputError("This request cannot be withdrawn (only box, clicks, propagation and opening a session).")
        if call.read:
            raise HTTPException(409, "This call was answered already: undo it with POST /sessions/{id}/undo instead.")
        with self._lock:
            self._calls.pop(call_id, None)
        with call._state:
            call.withdrawn = True
            ended = call.future.done() and call.future.exception() is None
        if ended:
            with call.guard:
                call.withdraw(call.future.result())

    def expire(self) -> None:
        with self._lock:
            self._expire()

    def __len__(self) -> int:
        with self._lock:
            return len(self._calls)

    def _expire(self) -> None:
        now = time.monotonic()
        for call_id in [i for i, c in self._calls.items() if c.future.done() and (
                now - c.touched > self.ttl or (c.read and now - c.read > min(READ_GRACE_S, self.ttl)))]:
            del self._calls[call_id]

    @staticmethod
    def _run(call: Call, work: Callable[[], Any]) -> None:
        with call.guard:
            with call._state:
                skipped = call.withdrawn  # withdrawn while it waited for the calls before it: nothing to undo
            if skipped:
                call.future.set_exception(HTTPException(409, "This call was withdrawn before it ran."))
                return
            try:
                result = work()
            except BaseException as exc:  # the client reads it as the synchronous request would have answered it
                if not isinstance(exc, (InputError, HTTPException)):
                    log.info("session call %s failed: %s", call.id, exc)
                call.future.set_exception(exc)
                return
            with call._state:
                if call.withdrawn and call.withdraw is not None:
                    try:
                        call.withdraw(result)
                    except Exception:
                        log.exception("withdrawing call %s failed", call.id)
                call.future.set_result(result)
