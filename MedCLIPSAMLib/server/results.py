"""A finished job's result as the client asked for it, sent whole or in byte ranges, then dropped.

A client reads a large result in parts (``Range: bytes=a-b``), one short request per timer tick,
so a slow link never blocks its GUI for long. Once the last byte has been sent the server drops
the result: a fetched result holds no memory while the engine waits for the next run.
"""
from __future__ import annotations

import re
from typing import Any

from fastapi import HTTPException, Response

from ..errors import InputError
from .jobs import DONE, Job, JobQueue
from ..wire import SALIENCY_BITS

RANGE = re.compile(r"bytes=([0-9]{1,18})-([0-9]{0,18})")
"""ASCII digits, never more than fit in 63 bits (int() refuses thousands of digits)."""


def saliency_bits(body: dict[str, Any]) -> int:
    """The job request's saliency precision (16 unless the client asks for 8)."""
    bits = body.get("saliency_bits", 16)
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in SALIENCY_BITS:
        raise InputError(f"'saliency_bits' must be 8 or 16 (got {bits!r:.40}).")
    return bits


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end exclusive) of a single ``bytes=a-b`` range, None for the whole body; 416 when it lies outside."""
    if header is None:
        return None
    match = RANGE.fullmatch(header.strip())
    if match is None:
        raise HTTPException(416, f"Range '{header:.60}' is not understood: ask for one range, 'bytes=START-END'.",
                            headers={"Content-Range": f"bytes */{size}"})
    start = int(match.group(1))
    end = min(int(match.group(2)) + 1, size) if match.group(2) else size
    if start >= size or end <= start:
        raise HTTPException(416, f"Range '{header:.60}' lies outside the result's {size} bytes.",
                            headers={"Content-Range": f"bytes */{size}"})
    return start, end


def result_response(jobs: JobQueue, job: Job, range_header: str | None) -> Response:
    """The result bytes (or the asked range); the job forgets them once the last byte has gone out."""
    if job.state != DONE:
        detail = job.error or f"The job is {job.state}; ask again when it is done."
        raise HTTPException(409, detail)
    payload = job.result
    if payload is None:
        raise HTTPException(410, f"The result of job {job.id} was already fetched (a server keeps a result only until "
                                 "it is collected); run the segmentation again.")
    size = len(payload)
    span = byte_range(range_header, size)
    start, end = span or (0, size)
    body = bytes(memoryview(payload)[start:end])
    if end == size:
        jobs.drop_result(job)
    if span is None:
        return Response(body, media_type="application/octet-stream", headers={"Accept-Ranges": "bytes"})
    return Response(body, status_code=206, media_type="application/octet-stream",
                    headers={"Content-Range": f"bytes {start}-{end - 1}/{size}", "Accept-Ranges": "bytes"})
