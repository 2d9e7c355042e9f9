"""The wire protocol's version, shared by the server and its torch-free client (stdlib only).

The package version says which release runs; the protocol version says which requests and
result bytes it understands. It rises only when a change would break the other side; a server
keeps answering every client protocol from ``MIN_CLIENT_PROTOCOL`` up, so an older Slicer keeps
working against a newer server until that floor is raised.
"""
from __future__ import annotations

import re

from . import __version__

PROTOCOL_VERSION = 1
"""What this package speaks (1: the volume/job/result API of 0.1)."""
MIN_CLIENT_PROTOCOL = 1
"""The oldest client protocol this server still answers."""
MIN_SERVER_PROTOCOL = 1
"""The oldest server protocol this client can use."""
PROTOCOL_HEADER = "X-MedCLIPSAM-Protocol"
VERSION_HEADER = "X-MedCLIPSAM-Version"
PROTOCOL_NUMBER = re.compile(r"[0-9]{1,9}")
PRE_HANDSHAKE_PROTOCOL = 1
"""A client or server that names no protocol predates the handshake: it speaks protocol 1."""

UPDATE_SERVER = ("update the engine server (pip install -U medclipsam where it runs, then restart "
                 "'medclipsam serve')")
UPDATE_CLIENT = ("update this client (the MedCLIP-SAM Slicer extension in the Extensions Manager, or "
                 "pip install -U medclipsam where the medclipsam command runs)")


def parse_protocol(text: str | None) -> int | None:
    """A protocol header's value as a whole number; None when it is absent, -1 when it is not a number.

    Only ASCII digits, at most 9 of them (str.isdigit also takes '\u00b2' and other scripts' digits, which int()
    refuses or reads, and int() refuses thousands of digits)."""
    if text is None or not text.strip():
        return None
    return int(text.strip()) if PROTOCOL_NUMBER.fullmatch(text.strip()) else -1


def client_mismatch(client_protocol: int, client_version: str, server_protocol: int = PROTOCOL_VERSION,
                    server_version: str = __version__, min_client: int = MIN_CLIENT_PROTOCOL) -> str | None:
    """The server's one-line refusal of a client protocol it cannot answer, or None when it can."""
    if min_client <= client_protocol <= server_protocol:
        return None
    side = UPDATE_SERVER if client_protocol > server_protocol else UPDATE_CLIENT
    return (f"Version mismatch: this client (MedCLIP-SAM {client_version}, protocol {client_protocol}) and the engine "
            f"server (MedCLIP-SAM {server_version}, protocol {server_protocol}, answers clients of protocol "
            f"{min_client}-{server_protocol}) cannot talk; {side}.")


def server_mismatch(info: dict, client_protocol: int = PROTOCOL_VERSION, client_version: str = __version__,
                    min_server: int = MIN_SERVER_PROTOCOL) -> str | None:
    """The client's one-line refusal of a server (its ``/info``) too old for it, or None when it can use it.

    A server that predates the handshake names no protocol and speaks protocol 1."""
    protocol = info.get("protocol", PRE_HANDSHAKE_PROTOCOL)
    if not isinstance(protocol, int) or isinstance(protocol, bool):
        protocol = PRE_HANDSHAKE_PROTOCOL
    if protocol >= min_server:
        return None
    version = info.get("version", "unknown")
    return (f"Version mismatch: this client (MedCLIP-SAM {client_version}, protocol {client_protocol}) needs an engine "
            f"server of protocol {min_server} or later, and the server runs MedCLIP-SAM {version} (protocol "
            f"{protocol}); {UPDATE_SERVER}.")
