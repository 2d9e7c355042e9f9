"""What every request of the engine server goes through, whichever endpoint it is for.

The token check, a body size limit (the upload routes get the upload limit, every other route,
including ones added later, the small JSON limit), JSON read without surprises (size, depth, NaN,
huge numbers: one-line 400s), a 405 that names all the methods a path takes, a one-line 500 for
a bug, and the status codes the OpenAPI schema documents for every route.
"""
from __future__ import annotations

import hmac
import json
import logging
import re
from typing import Any, Sequence

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from ..errors import InputError

log = logging.getLogger("medclipsam.server")

MAX_JSON_DEPTH = 32
"""Deeper JSON is refused: no request needs more than a few levels, and recursion must not fail later."""
UPLOAD_ROUTES = re.compile(r"/volumes/[^/]+|/uploads/[^/]+/parts/[^/]+")
"""PUT routes whose bodies are volume bytes, read in chunks against the upload limit by their endpoints."""
TOKEN_HINT = ("Missing or wrong token: send 'Authorization: Bearer <token>' with the token the server printed "
              "(or its --token-file).")
ERROR = {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}
COMMON_ERRORS = {400: "Bad request: the detail is one line saying what is wrong",
                 401: "Missing or wrong token", 413: "The request body is over the server's limit",
                 426: "The client speaks another wire protocol; the detail names both versions and what to update",
                 500: "A bug in the engine (never expected); the detail names it"}


def token_matches(header: str, token: str) -> bool:
    """``Authorization: Bearer <token>`` (scheme in any case), compared in constant time."""
    scheme, _, given = header.strip().partition(" ")
    return hmac.compare_digest(scheme.lower().encode() + b" " + given.strip().encode(), b"bearer " + token.encode())


async def check_token(request: Request, token: str) -> None:
    """Async: a plain function would take a thread-pool worker for every request (FastAPI runs sync
    dependencies there), so requests stuck in the pool would hold up the token check of all others."""
    if not token_matches(request.headers.get("authorization", ""), token):
        raise HTTPException(401, TOKEN_HINT, headers={"WWW-Authenticate": "Bearer"})


def session_body_limit(upload_bytes: int, json_bytes: int) -> int:
    """The largest body opening a session may send: the JSON fields and the start mask, base64 of one bit per
    voxel of the largest volume the server takes (at least one byte a voxel: upload_bytes / 8 * 4 / 3)."""
    return upload_bytes // 6 + json_bytes


MAX_LARGE_BODY_ITEMS = 10_000
"""A body over the JSON limit (a session's start mask) may hold this many commas, colons or brackets: its bulk
must be the mask's one string; millions of tiny items would cost gigabytes once parsed."""


class BodyLimit:
    """ASGI middleware: a request without the token is answered 401 before any of its body is read, and a body
    larger than its route's limit is answered 413 before the app sees it.

    Non-upload bodies (JSON, at most ``json_bytes``; opening a session, ``session_body_limit``) are read here
    and handed on whole; upload bodies pass through, refused here only on a declared Content-Length over
    ``upload_bytes``.
    """

    def __init__(self, app, json_bytes: int, upload_bytes: int, token: str):
        self.app, self.json_bytes, self.upload_bytes, self.token = app, json_bytes, upload_bytes, token

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if not token_matches(headers.get(b"authorization", b"").decode("latin-1"), self.token):
            return await _answer(scope, send, 401, TOKEN_HINT, {"WWW-Authenticate": "Bearer"})
        upload = scope["method"] == "PUT" and UPLOAD_ROUTES.fullmatch(scope["path"]) is not None
        opens_session = scope["method"] == "POST" and scope["path"] == "/sessions"  # may carry a whole mask
        limit = (self.upload_bytes if upload else session_body_limit(self.upload_bytes, self.json_bytes)
                 if opens_session else self.json_bytes)
        declared = headers.get(b"content-length", b"")
        if declared and (not declared.isdigit() or len(declared) > 18):
            return await _answer(scope, send, 400, "The Content-Length header is not a whole number of bytes.")
        if declared and int(declared) > limit:
            return await _answer(scope, send, 413, too_large(int(declared), limit, upload))
        if upload:
            return await self.app(scope, receive, send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                return await _answer(scope, send, 413, too_large(len(body), limit, upload))
        if len(body) > self.json_bytes and sum(body.count(c) for c in b",:[{") > MAX_LARGE_BODY_ITEMS:
            return await _answer(scope, send, 413, f"A request body over {self.json_bytes} bytes may only carry a "
                                                   "session's mask as one string, not many JSON items.")
        whole = bytes(body)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def too_large(size: int, limit: int, upload: bool) -> str:
    if upload:
        return (f"The upload ({size / 1e6:.0f} MB) is over this server's limit of {limit / 1e6:.0f} MB; crop the "
                "volume or start the server with a larger --max-upload-mb.")
    return f"The request body ({size} bytes) is over this server's limit of {limit} bytes for requests."


async def _answer(scope, send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    response = JSONResponse({"detail": detail}, status_code=status, headers={"Connection": "close", **(headers or {})})
    await response(scope, _no_body, send)


async def _no_body():
    return {"type": "http.disconnect"}


async def json_object(request: Request, allowed: set[str], what: str) -> dict[str, Any]:
    """The request's JSON object with only ``allowed`` fields; anything else is a one-line InputError (400)."""
    fields = ", ".join(repr(name) for name in sorted(allowed))
    raw = await request.body()  # within its limit already (BodyLimit)
    if len(raw) > PARSE_ON_LOOP_BYTES:  # a session's start mask: parsing it must not hold up every other request
        from fastapi.concurrency import run_in_threadpool

        body = await run_in_threadpool(parse_json, raw, what, fields)
    else:
        body = parse_json(raw, what, fields)
    if not isinstance(body, dict):
        raise InputError(f"The {what} request must be a JSON object with {fields}.")
    unknown = set(body) - allowed
    if unknown:
        raise InputError(f"Unknown {what} field(s): {', '.join(sorted(unknown))}; use {fields}.")
    return body


PARSE_ON_LOOP_BYTES = 64_000
"""JSON bodies up to this size are parsed on the event loop (well under a millisecond); larger ones in a thread."""


def parse_json(body: bytes, what: str, fields: str) -> Any:
    """JSON of a request body; anything a JSON decoder could choke on is an InputError (400), one line."""
    def refuse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a number")

    try:
        value = json.loads(body, parse_constant=refuse_constant)
    except RecursionError:
        raise InputError(f"The {what} request is nested deeper than {MAX_JSON_DEPTH} levels; send an object with "
                         f"{fields}.") from None  # the decoder's own limit, far above ours
    except (ValueError, UnicodeDecodeError) as exc:  # includes numbers of thousands of digits
        reason = str(exc).split(":")[0][:80]
        raise InputError(f"The {what} request is not JSON ({reason}): send an object with {fields}.") from None
    if depth(value) > MAX_JSON_DEPTH:
        raise InputError(f"The {what} request is nested deeper than {MAX_JSON_DEPTH} levels; send an object with "
                         f"{fields}.")
    return value


def depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, dict):
            stack.extend((child, level + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, level + 1) for child in item)
    return deepest


def install_handlers(app: FastAPI) -> None:
    """405 with every method of the path in ``Allow``, and a one-line 500 for anything unexpected."""
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request.app, request.scope))
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request %s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"Internal engine error ({type(exc).__name__}); see the server log."},
                            status_code=500)


def allowed_methods(app: FastAPI, scope: dict) -> list[str]:
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def document_responses(app: FastAPI, extra: dict[str, dict[int, str]] | None = None,
                       routers: Sequence[APIRouter] = ()) -> None:
    """Add the answers every route can give (400, 401, 413, 426, 500) and ``extra`` (route name -> codes) to the
    OpenAPI schema, so it documents the status codes the server really sends; call after adding routes.

    ``routers``: the APIRouters included in the app (FastAPI 0.16x keeps their routes out of ``app.router``)."""
    routes = [*app.router.routes, *(route for router in routers for route in router.routes)]
    for route in routes:
        if not isinstance(route, APIRoute):
            continue
        codes = {**COMMON_ERRORS, **(extra or {}).get(route.name, {})}
        for code, description in codes.items():
            route.responses.setdefault(code, {"description": description,
                                              "content": {"application/json": {"schema": ERROR}}})
    app.openapi_schema = None
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's schema without its 422 (no route here has typed parameters that could fail validation)."""
        if app.openapi_schema is None:
            schema = generate()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
        return app.openapi_schema

    app.openapi = openapi
