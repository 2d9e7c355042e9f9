"""Connections that hold a file descriptor without asking anything are closed.

uvicorn (0.55, h11) starts its idle timer only after a first response, so a client can open
connections and send nothing, or trickle a request's header a byte at a time, until the server runs
out of file descriptors and nobody gets an answer (measured: 1,100 idle connections under
``ulimit -n 1024``). Here a connection without a byte for ``timeout_keep_alive`` seconds is closed
like an idle keep-alive one, and one whose first request has not begun within ``REQUEST_START_S`` is
closed too. ``serve`` also raises the soft descriptor limit to the hard one.
"""
from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("medclipsam.server")

REQUEST_START_S = 30.0
"""A connection's first request line and headers must have arrived by then (a slow link sends a header in ms)."""


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the idle timer armed from the start and a deadline for the first request."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
        self._first_request_deadline = self.loop.call_later(REQUEST_START_S, self._close_without_request)

    def _close_without_request(self) -> None:
        if self.cycle is None and not self.transport.is_closing():
            log.info("closing a connection that sent no request within %.0f s", REQUEST_START_S)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._first_request_deadline.cancel()
        super().connection_lost(exc)


def raise_file_limit() -> tuple[int, int] | None:
    """Soft RLIMIT_NOFILE up to the hard one (many clients, each a descriptor); (before, after), None off POSIX."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            return soft, soft
    return soft, wanted
