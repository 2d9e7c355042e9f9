"""Short requests on Slicer's main thread, retried from the timer while the engine is silent (Qt-free).

A stalled SSH tunnel accepts a request and never answers: with a 10 or 30 s socket timeout that froze
Slicer that long per request. Requests the panel's timer makes now wait at most ``REQUEST_TIMEOUT_S``
for an answer; a request that is safe to send twice (a GET, a PUT of one upload part, a HEAD, starting
an upload whose unused id the server forgets) and got no answer in time is sent again on the next tick,
and the run or correction fails only when the engine has answered nothing for its whole patience
(``Patience``). An answer with an HTTP status (a refusal) is never retried.
"""
from __future__ import annotations

import time

from ..client import EngineError

REQUEST_TIMEOUT_S = 0.5
"""Longest one request waits for the engine's answer on the main thread (the socket timeout of each read)."""
SUBMIT_TIMEOUT_S = 2.0
"""Submitting a job is the one request not sent twice (a second one would start the job twice): it may wait this
long, and no answer in that time fails the run with a message."""


class Patience:
    """How long an engine may stay silent over successive ticks before the work fails."""

    def __init__(self, limit_s: float):
        self.limit_s = limit_s
        self._since = 0.0

    @property
    def waiting(self) -> bool:
        """The last request went unanswered (the panel says "waiting for the engine to answer")."""
        return bool(self._since)

    def answered(self) -> None:
        self._since = 0.0

    def retry_or_raise(self, error: EngineError) -> None:
        """``error`` came from a retry-safe request: return to retry it next tick, or raise it when it was a
        refusal (an HTTP status) or the engine has been silent for longer than the limit."""
        if error.status:
            raise error
        now = time.monotonic()
        self._since = self._since or now
        if now - self._since > self.limit_s:
            raise error
