"""A client of the engine server, for Slicer and ``medclipsam segment --server`` (no torch needed).

Only numpy and the standard library are imported here (SimpleITK too when a file path is given),
so Slicer's own Python stays free of torch. ``segment`` blocks until the result is in; the
Slicer module uses the same steps one at a time from a timer (``start_upload`` and one
``PartUpload.send_next`` per tick, ``submit``, ``status``, ``result``, ``cancel``) so the GUI
never waits for more than one short request.
"""
from __future__ import annotations

import json
import math
import os
import re
import threading
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from typing import Any, Callable, NoReturn, Sequence

import numpy as np

from . import __version__
from .errors import Cancelled, InputError, MedCLIPSAMError, ModelError
from .interactive.answer import Answer, decode_answer, encode_mask
from .protocol import MIN_SERVER_PROTOCOL, PROTOCOL_HEADER, PROTOCOL_VERSION, VERSION_HEADER, server_mismatch
from . import wire
from .result import SegmentationResult

FINISHED = ("done", "failed", "cancelled")
PART_BYTES = 2_000_000
"""Default part of a stepwise upload: about 20 ms on gigabit Ethernet, 0.1 s at 20 MB/s (docs/server.md: measured)."""
DEFLATE_LEVEL = 1
"""zlib's fastest level: 1.6-2.3x smaller int16 volumes at ~50 MB/s; higher levels gain <3 % at 2-5x the time."""
USEFUL_RATIO = 1.25
"""Compress only parts that shrink at least this much (noise-like data does not)."""
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


SERVER_URL = re.compile(r"https?://[^\s/]+(/\S*)?")
"""What an engine address looks like: http(s)://host[:port][/path]."""


def is_server_url(url: str) -> bool:
    return bool(SERVER_URL.fullmatch(url.strip()))


class EngineClient:
    """Talks to ``medclipsam serve`` at ``url`` with a bearer ``token``.

    Every request names this client's package and protocol version (``protocol.py``); ``handshake``
    checks the server's before a run, so a mismatch is one line naming both and the side to update."""

    protocol = PROTOCOL_VERSION
    version = __version__
    min_server_protocol = MIN_SERVER_PROTOCOL

    def __init__(self, url: str, token: str, timeout: float = 30.0, patience: float | None = None):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.patience = timeout if patience is None else patience
        """How long the engine may stay silent over repeated polls (``SessionCall``) before that is an error; a
        caller with short request timeouts (Slicer's main thread) sets it longer than ``timeout``."""
        self.server_info: dict[str, Any] | None = None
        """The server's ``/info`` once ``handshake`` accepted it."""
        self.bytes_sent = 0
        """All request bodies and paths sent."""
        self.volume_bytes_sent = 0
        """Volume uploads alone (a second prompt on the same volume adds nothing)."""
        self.bytes_received = 0

    # --- one request each ------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return self._json("GET", "/info")

    def handshake(self) -> dict[str, Any]:
        """The server's ``/info``, refused with one line when the server is too old for this client (once per
        client; a client too old for the server is refused by the server on any request)."""
        if self.server_info is None:
            info = self.info()
            refusal = server_mismatch(info, self.protocol, self.version, self.min_server_protocol)
            if refusal:
                raise EngineError(refusal, 426)
            self.server_info = info
        return self.server_info

    def has_volume(self, volume_id: str) -> bool:
        try:
            self._request("HEAD", f"/volumes/{volume_id}")
            return True
        except EngineError as exc:
            if exc.status == 404:
                return False
            raise

    def upload(self, upload: Upload) -> bool:
        """Send the volume in one request unless the server already holds it; True if bytes were sent."""
        if self.has_volume(upload.id):
            return False
        self._check_limit(upload)
        self._request("PUT", f"/volumes/{upload.id}", upload.payload, "application/octet-stream",
                      timeout=max(self.timeout, len(upload.payload) / 5e6))
        self.volume_bytes_sent += len(upload.payload)
        return True

    def start_upload(self, upload: Upload, part_bytes: int = PART_BYTES,
                     compress: bool | None = None) -> "PartUpload | None":
        """Begin sending the volume in parts (None: the server already holds it); see ``PartUpload``.

        ``compress``: True deflates every part, False none, None (default) decides per part from what
        compression saves against what it costs on this link (see ``PartUpload.should_compress``)."""
        if self.has_volume(upload.id):
            return None
        self._check_limit(upload)
        begun = self._json("POST", "/uploads", {"volume": upload.id, "size": len(upload.payload),
                                                "part_size": int(part_bytes)})
        return PartUpload(self, upload, begun["upload"], int(part_bytes), compress)

    def _check_limit(self, upload: Upload) -> None:
        info = self.info()
        size = len(upload.payload)
        for key, what, option in (("max_upload_bytes", "upload limit", "--max-upload-mb"),
                                  ("max_stored_bytes", "memory for volumes", "--max-stored-mb")):
            limit = info.get(key)  # absent from servers that predate it
            if limit is not None and size > limit:
                raise EngineError(f"The volume ({size / 1e6:.0f} MB) is over the server's {what} of "
                                  f"{limit / 1e6:.0f} MB; crop it or start the server with a larger {option}.", 413)

    def submit(self, volume_id: str, prompts: Sequence[Any], settings: dict[str, Any] | None = None,
               presets: bool = True, saliency: bool = True, labels: bool = True,
               saliency_bits: int = 16) -> dict[str, Any]:
        """``labels=False``: the result comes without the label map; ``saliency_bits=8``: saliency as uint8."""
        body = {"volume": volume_id, "prompts": list(prompts), "settings": settings or {}, "presets": bool(presets),
                "saliency": bool(saliency)}
        if not labels:
            body["labels"] = False
        if saliency_bits != 16:
            body["saliency_bits"] = int(saliency_bits)
        return self._json("POST", "/jobs", body)

    def status(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The job's state; ``timeout``: give up on this answer sooner than the client's default."""
        answer = self._request("GET", f"/jobs/{job_id}", timeout=timeout)
        return json.loads(answer.decode())

    def result(self, job_id: str) -> SegmentationResult:
        return wire.decode_result(self._request("GET", f"/jobs/{job_id}/result", timeout=max(self.timeout, 120)))

    def start_result(self, job_id: str, target_seconds: float = 0.15) -> "ResultDownload":
        """Begin reading a finished job's result in parts; see ``ResultDownload``."""
        return ResultDownload(self, job_id, target_seconds)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json("DELETE", f"/jobs/{job_id}")

    # --- corrections (server/interactions.py) -----------------------------------------------------

    def open_session(self, volume_id: str, axis: int | None = None, window: str | None = None,
                     sam_backend: str | None = None, click_mode: str | None = None, job: str | None = None,
                     target: str | None = None, mask: np.ndarray | None = None) -> dict[str, Any]:
        """A correction session on an uploaded volume, starting from an empty mask, a finished ``job``'s ``target``,
        or ``mask`` (the volume's shape); the answer's ``session`` is the id the other ``session_*`` methods take."""
        body = {name: value for name, value in (("volume", volume_id), ("axis", axis), ("window", window),
                                                ("sam_backend", sam_backend), ("click_mode", click_mode),
                                                ("job", job), ("target", target)) if value is not None}
        if mask is not None:
            body["mask"] = encode_mask(mask)
        return self._json("POST", "/sessions", body)

    def session_box(self, session: str, index: int, box: Sequence[int], mode: str = "replace") -> Answer:
        return self._answer(f"/sessions/{session}/box", {"slice": index, "box": list(box), "mode": mode})

    def session_clicks(self, session: str, index: int, clicks: Sequence[Sequence]) -> Answer:
        """Clicks (x, y, True to add / False to remove) on one slice."""
        return self._answer(f"/sessions/{session}/clicks",
                            {"slice": index, "clicks": [[c[0], c[1], bool(c[2])] for c in clicks]})

    def session_propagate(self, session: str, index: int, direction: str = "both") -> Answer:
        return self._answer(f"/sessions/{session}/propagate", {"slice": index, "direction": direction},
                            timeout=max(self.timeout, 600))

    def session_undo(self, session: str) -> Answer:
        return self._answer(f"/sessions/{session}/undo")

    def session_reset(self, session: str) -> Answer:
        return self._answer(f"/sessions/{session}/reset")

    def session_mask(self, session: str) -> Answer:
        """Every non-empty slice of the session's current mask."""
        return decode_answer(self._json("GET", f"/sessions/{session}/mask"))

    def close_session(self, session: str, timeout: float | None = None) -> dict[str, Any]:
        return self._json("DELETE", f"/sessions/{session}", timeout=timeout)

    def _answer(self, path: str, body: Any = None, timeout: float | None = None) -> Answer:
        data = json.dumps(body if body is not None else {}).encode()
        reply = self._request("POST", path, data, "application/json", timeout=timeout)
        return decode_answer(json.loads(reply.decode()))

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
        self.handshake()
        sending = self.start_upload(upload)
        while sending is not None and not sending.finished:
            if _is_set(cancel):
                sending.cancel()
                raise Cancelled("Cancelled during the upload; nothing was changed.")
            sending.send_next()
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        job = self.submit(upload.id, prompts, settings, presets, saliency)
        last, stages_reported = None, 0
        try:
            while True:
                if _is_set(cancel):
                    self._cancel_and_wait(job["id"])
                job = self.status(job["id"])
                finished_stages = job.get("finished_stages") or []
                if progress is not None:  # a stage shorter than a poll still shows, and ends full
                    for stage, total in finished_stages[stages_reported:]:
                        if (stage, total, total) != last:
                            progress(stage, total, total)
                            last = (stage, total, total)
                stages_reported = len(finished_stages)
                if job["state"] in FINISHED:
                    final = (job["stage"], job["total"], job["total"])
                    if progress is not None and job["state"] == "done" and job["stage"] and final != last:
                        progress(*final)  # the last stage's bar ends full, as a local run's does
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

    def _json(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        answer = self._request(method, path, data, "application/json" if data is not None else None, timeout=timeout)
        return json.loads(answer.decode())

    def _request(self, method: str, path: str, data: bytes | None = None, content_type: str | None = None,
                 timeout: float | None = None, headers: dict[str, str] | None = None,
                 answer_headers: dict[str, str] | None = None) -> bytes:
        """The answer's body; ``answer_headers``, when given, receives the answer's headers (lower-case names)."""
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header(PROTOCOL_HEADER, str(self.protocol))
        request.add_header(VERSION_HEADER, self.version)
        if content_type:
            request.add_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as answer:
                payload = answer.read()
                if answer_headers is not None:
                    answer_headers.update({name.lower(): value for name, value in answer.headers.items()})
        except urllib.error.HTTPError as exc:
            raise EngineError(_detail(exc), exc.code) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise EngineError(f"Cannot reach the MedCLIP-SAM engine at {self.url} ({reason}). Start it with "
                              "'medclipsam serve', or check the address and the SSH tunnel.") from None
        self.bytes_sent += len(data or b"") + len(path)
        self.bytes_received += len(payload)
        return payload


class PartUpload:
    """A volume upload in parts: each ``send_next()`` is one request (a part, or the final commit).

    The Slicer module calls it once per timer tick, so the GUI waits for one part at a time and a
    Cancel between parts stops the transfer (``cancel()`` tells the server to drop what it has).
    """

    def __init__(self, client: EngineClient, upload: Upload, upload_id: str, part_bytes: int,
                 compress: bool | None = None):
        self.client, self.upload, self.id, self.part_bytes, self.compress = client, upload, upload_id, part_bytes, compress
        self.total = len(upload.payload)
        self.parts = math.ceil(self.total / part_bytes)
        self.next_part = 0
        self.committed = False
        self.cancelled = False
        self.wire_bytes = 0
        """Bytes of parts as sent (compressed or not)."""
        self.longest_step_s = 0.0
        self.commit_wait: float | None = None
        """Seconds the commit request may wait for the server's answer (None: the client's timeout)."""
        self.upload_id = upload.id
        self._commit_sent = 0.0
        self._ratio = 0.0  # payload / deflated bytes of the last compressed part (0: none yet)
        self._deflate_speed = 0.0  # payload bytes compressed per second
        self._link_speed = 0.0  # bytes on the wire per second, request overhead included

    @property
    def done(self) -> int:
        """Payload bytes the server has received."""
        return min(self.next_part * self.part_bytes, self.total)

    @property
    def finished(self) -> bool:
        return self.committed

    def send_next(self) -> tuple[int, int]:
        """Send the next part, or commit after the last one; returns (payload bytes done, total)."""
        if self.cancelled or self.committed:
            return self.done, self.total
        start = time.perf_counter()
        if self.next_part < self.parts:
            self._send_part(self.next_part)
            self.next_part += 1
        elif self._commit_sent:
            self._check_stored()
        else:
            self._commit()
        self.longest_step_s = max(self.longest_step_s, time.perf_counter() - start)
        return self.done, self.total

    def _commit(self) -> None:
        """Ask the server to check and store the volume; with ``commit_wait`` set, a server still hashing a large
        volume when that time is up is asked on the next calls whether it holds the volume (HEAD), instead of
        holding the caller (Slicer's timer tick) until it answers."""
        self._commit_sent = time.monotonic()
        try:
            self.client._request("POST", f"/uploads/{self.id}/commit", timeout=self.commit_wait or None)
        except EngineError as exc:
            if exc.status or not self.commit_wait:
                raise
            return  # no answer yet: the server goes on storing it
        self._stored()

    def _check_stored(self) -> None:
        try:
            self.client._request("HEAD", f"/volumes/{self.upload_id}", timeout=self.commit_wait or None)
        except EngineError as exc:
            if exc.status not in (0, 404):
                raise
            if time.monotonic() - self._commit_sent > max(self.client.timeout, 60.0):
                raise EngineError("The server did not store the uploaded volume (it may have found it damaged); "
                                  "run again.", exc.status) from None
            return
        self._stored()

    def _stored(self) -> None:
        self.committed = True
        self.client.volume_bytes_sent += self.wire_bytes

    def cancel(self) -> None:
        """Stop sending and ask the server to drop the parts (it would forget them after its ttl anyway)."""
        if self.committed or self.cancelled:
            return
        self.cancelled = True
        try:
            self.client._request("DELETE", f"/uploads/{self.id}")
        except EngineError:
            pass

    def should_compress(self) -> bool:
        """Deflate when it saves time: compressing costs n/deflate_speed, sending saves n(1 - 1/ratio)/link_speed.

        The first part is compressed to learn the ratio and speed; data that shrinks less than
        ``USEFUL_RATIO`` is never compressed again, and on a link faster than the saving (a LAN)
        parts go raw."""
        if self.compress is not None:
            return self.compress
        if not self._ratio:
            return True
        if self._ratio < USEFUL_RATIO or not self._link_speed:
            return False
        return 1 / self._deflate_speed < (1 - 1 / self._ratio) / self._link_speed

    def _send_part(self, index: int) -> None:
        raw = memoryview(self.upload.payload)[index * self.part_bytes:(index + 1) * self.part_bytes]
        body, headers = raw, {}
        if self.should_compress():
            start = time.perf_counter()
            deflated = zlib.compress(raw, DEFLATE_LEVEL)
            self._deflate_speed = len(raw) / max(time.perf_counter() - start, 1e-6)
            self._ratio = len(raw) / max(len(deflated), 1)
            if self._ratio >= USEFUL_RATIO or (self.compress and len(deflated) < len(raw)):
                body, headers = deflated, {"Content-Encoding": "deflate"}
        start = time.perf_counter()
        self.client._request("PUT", f"/uploads/{self.id}/parts/{index}", bytes(body), "application/octet-stream",
                             timeout=max(self.client.timeout, len(body) / 1e6), headers=headers)
        self._link_speed = len(body) / max(time.perf_counter() - start, 1e-6)
        self.wire_bytes += len(body)


class ResultDownload:
    """A finished job's result in parts: each ``receive_next()`` is one ``Range`` request.

    Parts are sized from the link speed measured on the previous part so that each takes about
    ``target_seconds`` (from 256 kB up to 16 MB): the Slicer module reads one part per timer tick,
    so a slow link never freezes the window for longer than that, and a fast one needs few requests.
    The server drops the result once its last byte is sent.
    """

    FIRST_PART, SMALLEST_PART, LARGEST_PART = 256_000, 64_000, 16_000_000

    def __init__(self, client: EngineClient, job_id: str, target_seconds: float = 0.15):
        self.client, self.job_id, self.target_seconds = client, job_id, target_seconds
        self.received = bytearray()
        """The result's bytes: allocated whole at the first answer, then each part copied into its place."""
        self.done = 0
        self.total: int | None = None
        self.part_bytes = self.FIRST_PART
        self.longest_step_s = 0.0

    @property
    def finished(self) -> bool:
        return self.total is not None and self.done >= self.total

    def receive_next(self) -> tuple[int, int]:
        """Read the next part; returns (bytes received, total; 0 until the first answer)."""
        if self.finished:
            return self.done, self.total
        start = time.perf_counter()
        first = self.done
        headers: dict[str, str] = {}
        part = self.client._request("GET", f"/jobs/{self.job_id}/result", headers={
            "Range": f"bytes={first}-{first + self.part_bytes - 1}"}, answer_headers=headers)
        total = _range_total(headers.get("content-range"))
        if total is None:  # a server that ignores Range sent the whole result
            self.received, self.total = bytearray(part), len(part)
            self.done = len(part)
        else:
            if self.total is None:  # one allocation, not a buffer regrown (and copied) part after part
                self.received = bytearray(total)
            self.total = total
            memoryview(self.received)[first:first + len(part)] = part  # a part longer than announced: ValueError
            self.done = first + len(part)
        seconds = time.perf_counter() - start
        self.longest_step_s = max(self.longest_step_s, seconds)
        speed = len(part) / max(seconds, 1e-4)
        self.part_bytes = int(min(max(speed * self.target_seconds, self.SMALLEST_PART), self.LARGEST_PART))
        return self.done, self.total

    def result(self, raw_saliency: bool = False, rebuild_labels: bool = True) -> SegmentationResult:
        """The decoded result, once ``finished`` (the received bytes are released)."""
        payload, self.received = self.received, bytearray()
        return wire.decode_result(payload, raw_saliency, rebuild_labels)


def _range_total(content_range: str | None) -> int | None:
    """The total size in 'bytes a-b/total', or None when the answer was not a range."""
    if not content_range or "/" not in content_range:
        return None
    total = content_range.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def job_error(job: dict[str, Any], remote: bool = True) -> MedCLIPSAMError:
    """The error a failed or cancelled job stands for, as the class the engine raised; ``remote``: the engine is
    someone else's server, so a model problem is fixed where it starts."""
    kind = ERROR_KINDS.get(job.get("error_kind", ""), MedCLIPSAMError)
    message = job.get("error") or f"The job ended as {job['state']}."
    if kind is ModelError and remote:  # model files are the server's: its own options, not the client's, fix this
        message += (" (This happened on the server: its model files are chosen where it starts, "
                    "'medclipsam serve --sam-checkpoint FILE --clip-model FOLDER'; ask its operator, or choose a SAM "
                    "model the server has.)")
    return kind(message)


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
