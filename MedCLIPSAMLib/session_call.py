"""One correction request driven from a timer: sent once, then polled, never waiting on compute (torch-free).

The server answers a session request sent with ``?wait=S`` within S seconds: with the answer when it
is ready by then (an interaction on an encoded slice), else with a call id that ``poll()`` asks about,
one short request per timer tick (server/session_calls.py). So the caller's thread waits at most
``WAIT_S`` plus one round trip per request, however long the propagation takes on the engine.
"""
from __future__ import annotations

import json
import time
from typing import Any

from .client import EngineClient, EngineError
from .interactive.answer import Answer, decode_answer

WAIT_S = 0.1
"""How long the server may hold a request for its answer: an interaction on an encoded slice (~90 ms through the
server) comes back in the first round trip, and a tick never waits longer than this plus the round trip."""
POLL_TIMEOUT_S = WAIT_S + 0.15
"""A poll not answered by then is a missed poll (a busy engine answers late), asked again on the next tick."""
SEND_TIMEOUT_S = 5.0
"""How long sending a request may take before it fails (plus a second per MB of body, for a slow link): the server
answers within WAIT_S, so only an engine that is gone or hangs makes a tick wait this long, not the client's 30 s."""
CLOSE_TIMEOUT_S = 2.0
"""Withdrawing a call or closing a session (Done, scene close): a gone engine holds nothing, so give up soon."""


class SessionCall:
    """``SessionCall(client, "POST", "/sessions/ID/box", body)``, then ``poll()`` until it returns True."""

    def __init__(self, client: EngineClient, method: str, path: str, body: Any = None):
        self.client = client
        self.reply: dict[str, Any] | None = None
        self.call: str | None = None
        self.withdrawn = False
        self._silent_since = 0.0
        data = json.dumps(body if body is not None else {}).encode()
        # The server answers within WAIT_S by design; the timeout only bounds a server that is gone or hangs.
        self._take(json.loads(client._request(method, f"{path}?wait={WAIT_S}", data, "application/json",
                                              timeout=SEND_TIMEOUT_S + len(data) / 1e6).decode()))

    @property
    def finished(self) -> bool:
        return self.reply is not None

    def poll(self) -> bool:
        """Ask once (at most POLL_TIMEOUT_S) whether the engine has answered; True once ``reply`` holds it.

        An error the engine answered (a 4xx naming a bad slice, a closed session) is raised as the
        ``EngineError`` a blocking request raises; silence longer than the client's patience too."""
        if self.finished or self.withdrawn:
            return self.finished
        try:
            body = self.client._request("GET", f"/calls/{self.call}?wait={WAIT_S}", timeout=POLL_TIMEOUT_S)
        except EngineError as exc:
            if exc.status:
                raise
            self._silent_since = self._silent_since or time.monotonic()
            if time.monotonic() - self._silent_since > getattr(self.client, "patience", self.client.timeout):
                raise
            return False
        self._silent_since = 0.0
        self._take(json.loads(body.decode()))
        return self.finished

    def answer(self) -> Answer:
        """The reply as an interaction's answer (what changed), with the engine's own seconds."""
        return decode_answer(self.reply)

    def withdraw(self) -> None:
        """Stop waiting for it; the engine takes its effect back (undoes it, or closes the session it opened).

        Only for a call not yet answered here: an answer already read is undone with an undo request."""
        if self.withdrawn or self.finished:
            return
        self.withdrawn = True
        if self.call is None:
            return
        try:
            self.client._request("DELETE", f"/calls/{self.call}", timeout=CLOSE_TIMEOUT_S)
        except EngineError:
            pass  # the server is gone, or forgot the call after its ttl: nothing of it is kept either way

    def _take(self, body: dict[str, Any]) -> None:
        if body.get("pending") and "call" in body:
            self.call = str(body["call"])
        else:
            self.reply = body
