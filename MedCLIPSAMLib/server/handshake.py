"""The version handshake on the server's side: a request dependency that refuses a client protocol it cannot
answer with one line naming both versions and which side to update (426 Upgrade Required).

A request without the protocol header comes from a client older than the handshake (protocol 1)
or from a script; it is answered as protocol 1 while the server still accepts that.
"""
from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request

from .. import __version__
from .. import protocol as protocol_module  # read at call time: one place to raise the versions
from ..protocol import PRE_HANDSHAKE_PROTOCOL, PROTOCOL_HEADER, VERSION_HEADER, client_mismatch, parse_protocol

MISMATCH_STATUS = 426


async def check_client_protocol(request: Request) -> None:
    """FastAPI dependency: every request's protocol header against what this server answers (async, so it takes
    no thread-pool worker: see guards.check_token)."""
    given = request.headers.get(PROTOCOL_HEADER)
    protocol = parse_protocol(given)
    version = request.headers.get(VERSION_HEADER, "unknown")[:40]
    if protocol is None:
        protocol = PRE_HANDSHAKE_PROTOCOL
    if protocol < 0:
        raise HTTPException(400, f"The {PROTOCOL_HEADER} header must be a whole number (got {given!r:.40}).")
    refusal = client_mismatch(protocol, version, protocol_module.PROTOCOL_VERSION, __version__,
                              protocol_module.MIN_CLIENT_PROTOCOL)
    if refusal:
        raise HTTPException(MISMATCH_STATUS, refusal)


def protocol_info() -> dict[str, Any]:
    """What ``/info`` adds, so a client can check the server before sending anything."""
    return {"version": __version__, "protocol": protocol_module.PROTOCOL_VERSION,
            "min_client_protocol": protocol_module.MIN_CLIENT_PROTOCOL}
