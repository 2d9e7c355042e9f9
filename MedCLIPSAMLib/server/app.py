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
    POST   /jobs                      {"volume", "prompts", "settings", "presets", "saliency"} -> 202
    GET    /jobs/{id}                 state, place in the queue, stage, done/total, error
    GET    /jobs/{id}/result          the result (``wire.encode_result`` bytes) once done
    DELETE /jobs/{id}                 cancel (between batches)
    POST   /shutdown                  only on an engine Slicer started for itself
"""
from __future__ import annotations

import hmac
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Callable

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from ..errors import InputError, MedCLIPSAMError
from ..imageio import as_volume
from . import wire
from .engine import Engine
from .handshake import check_client_protocol, protocol_info
from .jobs import DONE, Job, JobQueue
from .store import VolumeStore
from .uploads import ENCODINGS, PartialUploads, UploadError, decode_part

log = logging.getLogger("medclipsam.server")


@dataclass
class Limits:
    max_upload_bytes: int = 2 << 30
    ttl_seconds: float = 3600.0
    max_stored_bytes: int = 8 << 30


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
    partial = PartialUploads(ttl=limits.ttl_seconds, max_bytes=limits.max_stored_bytes)
    expected = f"Bearer {token}".encode()

    def authorised(request: Request) -> None:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise HTTPException(401, "Missing or wrong token: send 'Authorization: Bearer <token>' with the token "
                                     "the server printed (or its --token-file).")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        jobs.stop()

    app = FastAPI(title="MedCLIP-SAM engine", dependencies=[Depends(authorised), Depends(check_client_protocol)], docs_url=None, redoc_url=None,
                  openapi_url=None, lifespan=lifespan)
    app.state.jobs, app.state.volumes, app.state.uploads = jobs, volumes, partial

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, exc: UploadError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(MedCLIPSAMError)
    async def user_error(request: Request, exc: MedCLIPSAMError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

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
                "max_upload_bytes": limits.max_upload_bytes}

    @app.head("/volumes/{volume_id}")
    def has_volume(volume_id: str) -> Response:
        return Response(status_code=200 if volumes.get(volume_id) is not None else 404)

    @app.put("/volumes/{volume_id}", status_code=201)
    async def upload(volume_id: str, request: Request) -> dict[str, Any]:
        body = await read_body(request, limits.max_upload_bytes, too_big)
        volume = await run_in_threadpool(read_upload, volume_id, body)
        volumes.put(volume_id, volume)
        return stored(volume_id, volume)

    def too_big(size: int) -> str:
        return (f"The upload ({size / 1e6:.0f} MB) is over this server's limit of "
                f"{limits.max_upload_bytes / 1e6:.0f} MB; crop the volume or start the server with a larger "
                "--max-upload-mb.")

    def stored(volume_id: str, volume) -> dict[str, Any]:
        return {"volume": volume_id, "shape": list(volume.array.shape), "dtype": str(volume.array.dtype)}

    @app.post("/uploads", status_code=201)
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
        upload = partial.begin(volume_id, size, part_size)
        return {"upload": upload.id, "parts": upload.parts, "part_size": part_size, "expires_s": limits.ttl_seconds}

    @app.put("/uploads/{upload_id}/parts/{index}")
    async def upload_part(upload_id: str, index: str, request: Request) -> dict[str, Any]:
        upload = partial.get(upload_id)
        if not index.isdigit():
            raise UploadError(f"Part index '{index}' is not a whole number (0-{upload.parts - 1}).")
        length = upload.part_length(int(index))
        encoding = request.headers.get("content-encoding", "identity").strip().lower() or "identity"
        if encoding not in ENCODINGS:
            raise UploadError(f"Content-Encoding '{encoding}' is not accepted; send parts raw or as deflate.", 415)
        body = await read_body(request, length, lambda size: (
            f"Part {index} is {size} bytes; this part of the upload has only {length}."))
        data = await run_in_threadpool(decode_part, body, encoding, length)
        upload = partial.put_part(upload_id, int(index), data)
        return {"upload": upload.id, "received": upload.received_parts, "parts": upload.parts}

    @app.post("/uploads/{upload_id}/commit", status_code=201)
    async def commit_upload(upload_id: str) -> dict[str, Any]:
        volume_id = partial.get(upload_id).volume_id
        payload = partial.take(upload_id)
        volume = await run_in_threadpool(volume_from, payload)
        volumes.put(volume_id, volume)
        return stored(volume_id, volume)

    @app.delete("/uploads/{upload_id}")
    def discard_upload(upload_id: str) -> dict[str, Any]:
        partial.get(upload_id)  # 404 when unknown
        partial.discard(upload_id)
        return {"upload": upload_id, "state": "discarded"}

    @app.post("/jobs", status_code=202)
    async def submit(request: Request) -> dict[str, Any]:
        body = await json_object(request, {"volume", "prompts", "settings", "presets", "saliency"}, "job")
        volume = volumes.get(str(body.get("volume", "")))
        if volume is None:
            raise HTTPException(404, "The server does not hold that volume (never uploaded, or expired): upload it "
                                     "again with PUT /volumes/{id}.")
        prompts = body.get("prompts")
        switches = {name: body.get(name, True) for name in ("presets", "saliency")}
        wrong = [name for name, value in switches.items() if not isinstance(value, bool)]
        if wrong:
            raise HTTPException(400, f"'{wrong[0]}' must be true or false (got {switches[wrong[0]]!r:.40}).")
        settings = engine.settings_for(prompts, body.get("settings"), switches["presets"])
        include_saliency = switches["saliency"]

        summary: dict[str, Any] = {}

        def work(progress, cancel) -> bytes:
            result = engine.run(volume, prompts, settings, progress, cancel)
            summary["faithfulness"] = wire.faithfulness_record(result)
            return wire.encode_result(result, include_saliency)

        job = jobs.submit(work)
        job.summary = summary
        return status(job)

    def status(job: Job) -> dict[str, Any]:
        return {"id": job.id, "state": job.state, "position": jobs.position(job), "stage": job.stage,
                "done": job.done, "total": job.total, "error": job.error, "error_kind": job.error_kind,
                "seconds": round(job.seconds, 3), "cpu_seconds": round(job.cpu_seconds, 3),
                "faithfulness": job.summary.get("faithfulness")}

    def find(job_id: str) -> Job:
        job = jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"No job '{job_id}' on this server (unknown, or its result expired).")
        return job

    @app.get("/jobs/{job_id}")
    def job_status(job_id: str) -> dict[str, Any]:
        return status(find(job_id))

    @app.get("/jobs/{job_id}/result")
    def job_result(job_id: str) -> Response:
        job = find(job_id)
        if job.state != DONE:
            detail = job.error or f"The job is {job.state}; ask again when it is done."
            raise HTTPException(409, detail)
        return Response(job.result, media_type="application/octet-stream")

    @app.delete("/jobs/{job_id}")
    def cancel(job_id: str) -> dict[str, Any]:
        job = find(job_id)
        jobs.cancel(job)
        return status(job)

    return app


async def read_body(request: Request, limit: int, too_big: Callable[[int], str]) -> bytes:
    """The request body, refused with 413 on its declared size before any of it is read, or once it passes ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, too_big(int(declared)))
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, too_big(len(body)))
    return bytes(body)


async def json_object(request: Request, allowed: set[str], what: str) -> dict[str, Any]:
    fields = ", ".join(repr(name) for name in sorted(allowed))
    try:
        body = await request.json()
    except ValueError:
        raise InputError(f"The {what} request is not JSON: send an object with {fields}.") from None
    if not isinstance(body, dict):
        raise InputError(f"The {what} request must be a JSON object with {fields}.")
    unknown = set(body) - allowed
    if unknown:
        raise InputError(f"Unknown {what} field(s): {', '.join(sorted(unknown))}.")
    return body


def read_upload(volume_id: str, payload: bytes):
    if wire.volume_id(payload) != volume_id:
        raise InputError("The upload's sha256 does not match its id: the transfer was damaged or the id is wrong; "
                         "upload again.")
    return volume_from(payload)


def volume_from(payload: bytes | bytearray):
    array, spacing = wire.decode_volume(payload)
    return as_volume(array, spacing)
