"""The HTTP face of the engine (FastAPI): volumes up, jobs in, progress and results out.

Every request needs ``Authorization: Bearer <token>``. Bad input is a 4xx answer whose
``detail`` is the engine's one-line message; a job's own failure is reported in its status,
so no request can take the server down.

    GET    /info                      version and protocol (server/handshake.py), device, models, queue
    HEAD   /volumes/{id}              200 if the server holds that volume (refreshes it), else 404
    PUT    /volumes/{id}              upload (``wire.encode_volume`` bytes; id = their sha256)
    POST   /uploads                   {"volume", "size", "part_size"} -> 201 {"upload", "parts"}: begin one in parts
    PUT    /uploads/{id}/parts/{i}    part i, raw or ``Content-Encoding: deflate`` (see server/uploads.py)
    POST   /uploads/{id}/commit       check all parts and the sha256, then store the volume
    DELETE /uploads/{id}              drop an unfinished upload (it also expires after ``ttl``)
    POST   /jobs                      {"volume", "prompts", "settings", "presets", "saliency", "labels",
                                       "saliency_bits"} -> 202
    GET    /jobs/{id}                 state, place in the queue, stage, done/total, error
    GET    /jobs/{id}/result          the result (``wire.encode_result`` bytes) once done, whole or by
                                      ``Range: bytes=a-b``; dropped once its last byte is sent
    DELETE /jobs/{id}                 cancel (within one model layer or M2IB step)
    POST   /shutdown                  only on an engine Slicer started for itself
    /sessions/...                     box/click corrections with propagation (see server/interactions.py)
    /calls/{id}                       a session request not done within its ``?wait`` (server/session_calls.py)
    GET    /openapi.json              this API as OpenAPI, with the status codes each route answers

What every route shares (token, body limits, JSON rules, 405/500 answers) is in ``guards.py``.
"""
from __future__ import annotations

import logging
import re
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from ..errors import InputError, MedCLIPSAMError
from ..imageio import as_volume
from ..interactive.shared_embeddings import EmbeddingStore, RunEmbeddings
from .. import wire
from .engine import Engine
from .interactions import SessionStore, interaction_router
from .guards import BodyLimit, check_token, document_responses, install_handlers, json_object
from .handshake import check_client_protocol, protocol_info
from .jobs import Job, JobQueue
from .results import result_response, saliency_bits
from .store import VolumeStore
from .sweeper import Sweeper
from .uploads import ENCODINGS, PartialUploads, UploadError, decode_part

log = logging.getLogger("medclipsam.server")


@dataclass
class Limits:
    """What one server holds at most; ``medclipsam serve`` options set them (docs/server.md)."""

    max_upload_bytes: int = 2_000_000_000
    """One volume's upload (``--max-upload-mb``), also its size once the .npz is unpacked."""
    ttl_seconds: float = 3600.0
    max_stored_bytes: int = 8_000_000_000
    """Volumes kept in memory, with their geometry images (``--max-stored-mb``)."""
    max_unfinished_bytes: int = 4_000_000_000
    """Declared sizes of the uploads in progress, received into temporary files (``--max-unfinished-mb``)."""
    max_json_bytes: int = 1_000_000
    """Body of any request other than volume bytes (``--max-request-kb``)."""


PART_INDEX = re.compile(r"[0-9]{1,9}")
"""ASCII digits only (str.isdigit also takes '²' and Arabic-Indic digits), and never thousands of them."""
SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
SCHEMA_BODIES = {
    "upload": {"type": "object", "additionalProperties": False, "required": ["volume", "size", "part_size"],
               "properties": {"volume": SHA256, "size": {"type": "integer", "minimum": 1},
                              "part_size": {"type": "integer", "minimum": 1}}},
    "job": {"type": "object", "additionalProperties": False, "required": ["volume", "prompts"],
            "properties": {"volume": SHA256, "prompts": {"type": "array", "minItems": 1, "items": {
                "anyOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": {"type": "string"}}]}},
                "settings": {"type": "object", "description": "Settings fields (MedCLIPSAMLib.settings), checked "
                                                              "one by one: a wrong name or value is a 400 naming it"},
                "presets": {"type": "boolean"}, "saliency": {"type": "boolean"}}},
}
"""What the JSON routes take; what a schema cannot say (a known volume, prompts that differ, settings in their
ranges) is checked by the route and answered 400 or 404 with one line."""


def json_body(name: str) -> dict[str, Any]:
    """OpenAPI ``requestBody`` of a JSON route (the route reads the body itself, with the limits of guards.py)."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": SCHEMA_BODIES[name]}}}}


BYTES_BODY = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


def create_app(engine: Engine, token: str, limits: Limits | None = None, allow_shutdown: bool = False,
               jobs: JobQueue | None = None) -> FastAPI:
    """The app; ``allow_shutdown`` adds POST /shutdown for the engine a Slicer session started (not shared ones).

    ``jobs``: a queue whose jobs the caller runs (``serve`` runs them on the main thread); default: its own thread.
    """
    limits = limits or Limits()
    if not token:
        raise ValueError("The engine server needs a token.")
    jobs = jobs or JobQueue(ttl=limits.ttl_seconds)
    volumes = VolumeStore(ttl=limits.ttl_seconds, max_bytes=limits.max_stored_bytes)
    partial = PartialUploads(ttl=limits.ttl_seconds, max_bytes=limits.max_unfinished_bytes)
    decoded_limit = min(limits.max_upload_bytes, limits.max_stored_bytes)  # checked on the archive, before decoding

    embeddings = EmbeddingStore()  # SAM slice embeddings shared by text runs and sessions on a volume
    sessions = SessionStore(limits.ttl_seconds, embeddings=embeddings)

    async def authorised(request: Request) -> None:  # async: see check_token
        await check_token(request, token)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        sweeper = Sweeper((partial.expire, volumes.expire, jobs.expire, sessions.expire,
                           lambda: embeddings.keep_volumes(volumes.ids())),
                          Sweeper.interval_for(limits.ttl_seconds))
        sweeper.start()
        yield
        sweeper.stop()
        jobs.stop("server shutting down")

    app = FastAPI(title="MedCLIP-SAM engine", dependencies=[Depends(authorised), Depends(check_client_protocol)],
                  docs_url=None, redoc_url=None,
                  openapi_url=None, lifespan=lifespan)
    app.state.jobs, app.state.volumes, app.state.uploads, app.state.sessions = jobs, volumes, partial, sessions
    app.add_middleware(BodyLimit, json_bytes=limits.max_json_bytes, upload_bytes=limits.max_upload_bytes, token=token)
    install_handlers(app)

    @app.exception_handler(MedCLIPSAMError)
    async def user_error(request: Request, exc: MedCLIPSAMError) -> JSONResponse:
        """A problem the client can fix: 400, or the status its class carries (413, 404, 503 ...)."""
        return JSONResponse({"detail": str(exc)}, status_code=getattr(exc, "status", 400))

    @app.get("/openapi.json", include_in_schema=False)
    def openapi() -> dict[str, Any]:
        return app.openapi()

    if allow_shutdown:
        @app.post("/shutdown", status_code=202)
        def shutdown(request: Request) -> dict[str, str]:
            jobs.stop()
            stop = getattr(request.app.state, "request_shutdown", None)
            if stop is not None:
                stop()
            return {"state": "stopping"}

    @app.get("/info")
    def info() -> dict[str, Any]:
        return {**engine.info(), **protocol_info(), "queue": jobs.counts(), "volumes": len(volumes),
                "max_upload_bytes": limits.max_upload_bytes, "max_stored_bytes": limits.max_stored_bytes}

    @app.head("/volumes/{volume_id}", response_class=Response,
              responses={200: {"description": "The server holds that volume"},
                         404: {"description": "The server does not hold that volume"}})
    def has_volume(volume_id: str) -> Response:
        return Response(status_code=200 if volumes.get(volume_id) is not None else 404)

    @app.put("/volumes/{volume_id}", status_code=201, openapi_extra=BYTES_BODY)
    async def upload(volume_id: str, request: Request) -> dict[str, Any]:
        body = await read_body(request, limits.max_upload_bytes, too_big)
        volume = await run_in_threadpool(read_upload, volume_id, body, decoded_limit)
        volumes.put(volume_id, volume)
        return stored(volume_id, volume)

    def too_big(size: int) -> str:
        return (f"The upload ({size / 1e6:.0f} MB) is over this server's limit of "
                f"{limits.max_upload_bytes / 1e6:.0f} MB; crop the volume or start the server with a larger "
                "--max-upload-mb.")

    def stored(volume_id: str, volume) -> dict[str, Any]:
        return {"volume": volume_id, "shape": list(volume.array.shape), "dtype": str(volume.array.dtype)}

    @app.post("/uploads", status_code=201, openapi_extra=json_body("upload"))
    async def begin_upload(request: Request) -> dict[str, Any]:
        fields = await json_object(request, {"volume", "size", "part_size"}, "upload")
        volume_id, size, part_size = fields.get("volume"), fields.get("size"), fields.get("part_size")
        if not (isinstance(volume_id, str) and len(volume_id) == 64 and all(c in "0123456789abcdef" for c in volume_id)):
            raise InputError("'volume' must be the payload's sha256 (64 lowercase hex digits).")
        for name, value in (("size", size), ("part_size", part_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"'{name}' must be a whole number of bytes, at least 1.")
        if size > limits.max_upload_bytes:
            raise UploadError(too_big(size), 413)
        if size > limits.max_stored_bytes:  # it could never be kept: say so before any part is sent
            raise UploadError(f"The volume ({size / 1e6:.0f} MB) is larger than this server keeps in memory "
                              f"({limits.max_stored_bytes / 1e6:.0f} MB); crop it or start the server with a larger "
                              "--max-stored-mb.", 413)
        upload = partial.begin(volume_id, size, part_size)
        return {"upload": upload.id, "parts": upload.parts, "part_size": part_size, "expires_s": limits.ttl_seconds}

    @app.put("/uploads/{upload_id}/parts/{index}", openapi_extra=BYTES_BODY)
    async def upload_part(upload_id: str, index: str, request: Request) -> dict[str, Any]:
        upload = partial.get(upload_id)
        if not PART_INDEX.fullmatch(index):
            raise UploadError(f"Part index '{index:.20}' is not a whole number (0-{upload.parts - 1}).")
        length = upload.part_length(int(index))
        encoding = request.headers.get("content-encoding", "identity").strip().lower() or "identity"
        if encoding not in ENCODINGS:
            raise UploadError(f"Content-Encoding '{encoding}' is not accepted; send parts raw or as deflate.", 415)
        body = await read_body(request, length, lambda size: (
            f"Part {index} is {size} bytes; this part of the upload has only {length}."))
        data = await run_in_threadpool(decode_part, body, encoding, length)
        upload = await run_in_threadpool(partial.put_part, upload_id, int(index), data)  # may hash the whole file
        return {"upload": upload.id, "received": upload.received_parts, "parts": upload.parts}

    @app.post("/uploads/{upload_id}/commit", status_code=201)
    async def commit_upload(upload_id: str) -> dict[str, Any]:
        volume_id = partial.get(upload_id).volume_id
        payload = partial.take(upload_id)
        try:
            volume = await run_in_threadpool(volume_from, payload, decoded_limit)
        finally:
            payload.close()
        volumes.put(volume_id, volume)
        return stored(volume_id, volume)

    @app.delete("/uploads/{upload_id}")
    def discard_upload(upload_id: str) -> dict[str, Any]:
        partial.get(upload_id)  # 404 when unknown
        partial.discard(upload_id)
        return {"upload": upload_id, "state": "discarded"}

    @app.post("/jobs", status_code=202, openapi_extra=json_body("job"))
    async def submit(request: Request) -> dict[str, Any]:
        body = await json_object(request, {"volume", "prompts", "settings", "presets", "saliency", "labels",
                                           "saliency_bits"}, "job")
        volume_id = str(body.get("volume", ""))
        volume = volumes.get(volume_id)
        if volume is None:
            raise HTTPException(404, "The server does not hold that volume (never uploaded, or expired): upload it "
                                     "again with PUT /volumes/{id}.")
        prompts = body.get("prompts")
        switches = {name: body.get(name, True) for name in ("presets", "saliency", "labels")}
        wrong = [name for name, value in switches.items() if not isinstance(value, bool)]
        if wrong:
            raise HTTPException(400, f"'{wrong[0]}' must be true or false (got {switches[wrong[0]]!r:.40}).")
        settings = engine.settings_for(prompts, body.get("settings"), switches["presets"])
        include_saliency, labels, bits = switches["saliency"], switches["labels"], saliency_bits(body)

        summary: dict[str, Any] = {}
        shared = RunEmbeddings(embeddings, volume_id, settings.sam_checkpoint, settings.bf16)

        def work(progress, cancel) -> bytes:
            result = engine.run(volume, prompts, settings, progress, cancel, shared)
            summary["faithfulness"] = wire.faithfulness_record(result)
            summary["sam_slices"] = shared.summary()
            return wire.encode_result(result, include_saliency, labels, bits)

        job = jobs.submit(work)
        job.summary = summary
        return status(job)

    def status(job: Job) -> dict[str, Any]:
        return {"id": job.id, "state": job.state, "position": jobs.position(job), "stage": job.stage,
                "done": job.done, "total": job.total,
                "finished_stages": [[stage, total] for stage, total in job.finished_stages],
                "error": job.error, "error_kind": job.error_kind,
                "seconds": round(job.seconds, 3), "cpu_seconds": round(job.cpu_seconds, 3),
                "faithfulness": job.summary.get("faithfulness"), "sam_slices": job.summary.get("sam_slices")}

    def find(job_id: str) -> Job:
        job = jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"No job '{job_id}' on this server (unknown, or its result expired).")
        return job

    @app.get("/jobs/{job_id}")
    def job_status(job_id: str) -> dict[str, Any]:
        return status(find(job_id))

    @app.get("/jobs/{job_id}/result")
    def job_result(job_id: str, request: Request) -> Response:
        return result_response(jobs, find(job_id), request.headers.get("range"))

    @app.delete("/jobs/{job_id}")
    def cancel(job_id: str) -> dict[str, Any]:
        job = find(job_id)
        jobs.cancel(job)
        return status(job)

    corrections = interaction_router(engine, sessions)  # /sessions: box/click corrections (interactions.py)
    no_session = {404: "No such session (never opened, closed or expired)"}
    document_responses(app, {
        "upload": {413: "The volume is over --max-upload-mb, or over --max-stored-mb in memory"},
        "begin_upload": {413: "The declared size is over --max-upload-mb",
                         503: "The unfinished uploads hold --max-unfinished-mb already"},
        "upload_part": {404: "No such upload (never begun, finished, cancelled or expired)",
                        413: "The part is longer than its share of the upload", 415: "Unknown Content-Encoding"},
        "commit_upload": {404: "No such upload", 413: "The volume is over the upload or store limit"},
        "discard_upload": {404: "No such upload"},
        "submit": {404: "The server does not hold that volume", 503: "The server is shutting down"},
        "job_status": {404: "No such job"}, "cancel": {404: "No such job"},
        "job_result": {206: "The part of the result the Range header asked for", 404: "No such job",
                       409: "The job is not done (the detail says why)",
                       410: "The result was already fetched (the server frees it then)",
                       416: "The Range header is not one range within the result"},
        "open_session": {404: "The server does not hold that volume, or no such job",
                         409: "The job is not done", 410: "The job's result was already fetched: send the mask"},
        **{name: no_session for name in ("box", "clicks", "propagate", "undo", "reset", "mask", "close")},
        "call_answer": {202: "Still running: ask again", 404: "No such call (withdrawn or expired)"},
        "withdraw_call": {404: "No such call (withdrawn or expired)", 409: "Answered already: undo it instead"},
    }, routers=[corrections])
    app.include_router(corrections)  # after: older FastAPI copies the routes, documented, when including
    return app


async def read_body(request: Request, limit: int, too_big: Callable[[int], str]) -> bytearray:
    """The request body, refused with 413 on its declared size before any of it is read, or once it passes ``limit``."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and len(declared) < 19 and int(declared) > limit:
        raise HTTPException(413, too_big(int(declared)))
    body = bytearray()  # grows with the bytes received, never to a size only declared
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, too_big(len(body)))
    return body


def read_upload(volume_id: str, payload: bytearray, limit: int):
    if wire.volume_id(payload) != volume_id:
        raise InputError("The upload's sha256 does not match its id: the transfer was damaged or the id is wrong; "
                         "upload again.")
    return volume_from(payload, limit)


def volume_from(payload: bytearray | BinaryIO, limit: int):
    """The stored volume of upload bytes (or their file), refused (413) before decoding past ``limit`` bytes."""
    array, spacing = wire.decode_volume(payload, limit)
    try:
        return as_volume(array, spacing)
    except MedCLIPSAMError:
        raise
    except (ValueError, TypeError, RuntimeError, OverflowError) as exc:  # SimpleITK or numpy on a degenerate array
        raise InputError(f"The uploaded volume cannot be used ({type(exc).__name__}); send a 2D or 3D numeric array "
                         "with its spacing in mm.") from None
