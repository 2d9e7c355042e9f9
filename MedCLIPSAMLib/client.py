"""A client of the engine server, for Slicer and ``medclipsam segment --server`` (no torch needed).

Only numpy and the standard library are imported here (SimpleITK too when a file path is given),
so Slicer's own Python stays free of torch. ``segment`` blocks until the result is in; the
Slicer module uses the same steps one at a time from a timer (``upload``, ``submit``,
``status``, ``result``, ``cancel``) so the GUI never waits.
"""
from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, NoReturn, Sequence

import numpy as np

from .errors import Cancelled, InputError, MedCLIPSAMError, ModelError
from .server import wire
from .result import SegmentationResult

FINISHED = ("done", "failed", "cancelled")
ERROR_KINDS = {"InputError": InputError, "SettingError": InputError, "ModelError": ModelError, "Cancelled": Cancelled}


class EngineError(MedCLIPSAMError):
    """The server refused a request; ``status`` is the HTTP status (0: no answer at all)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


@dataclass
class Upload:
    """A volume ready to send: its bytes and their id (sha256)."""

    payload: bytes
    id: str

    @classmethod
    def of(cls, array: np.ndarray, spacing: Sequence[float] | None = None) -> "Upload":
        payload = wire.encode_volume(array, None if spacing is None else tuple(spacing))
        return cls(payload, wire.volume_id(payload))


class EngineClient:
    """Talks to ``medclipsam serve`` at ``url`` with a bearer ``token``."""

    def __init__(self, url: str, token: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.bytes_sent = 0
        """All request bodies and paths sent."""
        self.volume_bytes_sent = 0
        """Volume uploads alone (a second prompt on the same volume adds nothing)."""
        self.bytes_received = 0

    # --- one request each ------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return self._json("GET", "/info")

    def has_volume(self, volume_id: str) -> bool:
        try:
            self._request("HEAD", f"/volumes/{volume_id}")
            return True
        except EngineError as exc:
            if exc.status == 404:
                return False
            raise

    def upload(self, upload: Upload) -> bool:
        """Send the volume unless the server already holds it; True if bytes were sent."""
        if self.has_volume(upload.id):
            return False
        limit = self.info().get("max_upload_bytes")
        if limit is not None and len(upload.payload) > limit:
            raise EngineError(f"The volume ({len(upload.payload) / 1e6:.0f} MB) is over the server's upload limit of "
                              f"{limit / 1e6:.0f} MB; crop it or start the server with a larger --max-upload-mb.", 413)
        self._request("PUT", f"/volumes/{upload.id}", upload.payload, "application/octet-stream",
                      timeout=max(self.timeout, len(upload.payload) / 5e6))
        self.volume_bytes_sent += len(upload.payload)
        return True

    def submit(self, volume_id: str, prompts: Sequence[Any], settings: dict[str, Any] | None = None,
               presets: bool = True, saliency: bool = True) -> dict[str, Any]:
        body = {"volume": volume_id, "prompts": list(prompts), "settings": settings or {}, "presets": presets,
                "saliency": saliency}
        return self._json("POST", "/jobs", body)

    def status(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/jobs/{job_id}")

    def result(self, job_id: str) -> SegmentationResult:
        return wire.decode_result(self._request("GET", f"/jobs/{job_id}/result", timeout=max(self.timeout, 120)))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json("DELETE", f"/jobs/{job_id}")

    # --- the whole run -----------------------------------------------------------------------------

    def segment(self, volume: Any, prompts: Any, settings: dict[str, Any] | None = None,
                progress: Callable[[str, int, int], None] | None = None,
                cancel: threading.Event | Callable[[], bool] | None = None, *, spacing: Sequence[float] | None = None,
                presets: bool = True, saliency: bool = True, poll_interval: float = 0.2) -> SegmentationResult:
        """Upload (if needed), run and collect one segmentation, as the same ``SegmentationResult`` a local run gives.

        ``volume``: a file path (read with SimpleITK), a ``Volume``, or a (z, y, x) / (y, x) array
        with ``spacing`` in the same order. ``prompts``: a prompt or a list of them.
        """
        upload = self.prepare(volume, spacing)
        self.upload(upload)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        job = self.submit(upload.id, prompts, settings, presets, saliency)
        last = None
        try:
            while True:
                if _is_set(cancel):
                    self._cancel_and_wait(job["id"])
                job = self.status(job["id"])
                if job["state"] in FINISHED:
                    break
                seen = (job["stage"], job["done"], job["total"])
                if progress is not None and job["stage"] and seen != last:
                    progress(*seen)
                    last = seen
                time.sleep(poll_interval)
        except KeyboardInterrupt:  # Ctrl-C on the command line: do not leave the job running on the server
            try:
                self.cancel(job["id"])
            except EngineError:
                pass
            raise
        if job["state"] == "done":
            return self.result(job["id"])
        raise job_error(job)

    @staticmethod
    def prepare(volume: Any, spacing: Sequence[float] | None = None) -> Upload:
        if isinstance(volume, (str, os.PathLike)):
            from .imageio import read_volume  # SimpleITK, only for a file path

            volume = read_volume(volume)
        if hasattr(volume, "array") and hasattr(volume, "spacing_zyx"):
            return Upload.of(volume.array, volume.spacing_zyx)
        if isinstance(volume, np.ndarray):
            return Upload.of(volume, spacing)
        raise InputError(f"Give a file path, a Volume or a numpy array to segment, not {type(volume).__name__}.")

    def _cancel_and_wait(self, job_id: str, wait: float = 60.0) -> NoReturn:
        self.cancel(job_id)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and self.status(job_id)["state"] not in FINISHED:
            time.sleep(0.1)
        raise Cancelled("Cancelled; nothing was changed.")

    # --- HTTP --------------------------------------------------------------------------------------

    def _json(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        answer = self._request(method, path, data, "application/json" if data is not None else None)
        return json.loads(answer.decode())

    def _request(self, method: str, path: str, data: bytes | None = None, content_type: str | None = None,
                 timeout: float | None = None) -> bytes:
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as answer:
                payload = answer.read()
        except urllib.error.HTTPError as exc:
            raise EngineError(_detail(exc), exc.code) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise EngineError(f"Cannot reach the MedCLIP-SAM engine at {self.url} ({reason}). Start it with "
                              "'medclipsam serve', or check the address and the SSH tunnel.") from None
        self.bytes_sent += len(data or b"") + len(path)
        self.bytes_received += len(payload)
        return payload


def job_error(job: dict[str, Any]) -> MedCLIPSAMError:
    """The error a failed or cancelled job stands for, as the class the engine raised."""
    kind = ERROR_KINDS.get(job.get("error_kind", ""), MedCLIPSAMError)
    return kind(job.get("error") or f"The job ended as {job['state']}.")


def _detail(error: urllib.error.HTTPError) -> str:
    try:
        detail = json.loads(error.read().decode()).get("detail")
    except (ValueError, AttributeError, OSError):
        detail = None
    if isinstance(detail, str) and detail:
        return detail
    if error.code == 401:
        return "The engine refused the token: use the token the server printed (or its --token-file)."
    return f"The engine answered {error.code} {error.reason}."


def _is_set(cancel: threading.Event | Callable[[], bool] | None) -> bool:
    if cancel is None:
        return False
    return cancel.is_set() if isinstance(cancel, threading.Event) else bool(cancel())
