"""Volumes that arrive in parts, so a client can send a large volume one short request at a time.

The client declares the payload's size and part size up front (refused with 413 over the upload
limit, before any part); part ``i`` is bytes ``[i * part_size, (i + 1) * part_size)`` of the
uncompressed payload, sent raw or zlib-compressed (``Content-Encoding: deflate``), in any order
and as often as wanted. Parts go to a temporary file, so the server's memory follows the bytes
received, not the size a client declares. Only a complete payload whose sha256 equals the volume id
becomes a stored volume; unfinished uploads expire ``ttl`` seconds after their last part (the
server's sweeper calls ``expire``), and all of them together may declare at most ``max_bytes``, so
a client that walks away costs the server nothing for long.
"""
from __future__ import annotations

import hashlib
import secrets
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO

from ..errors import InputError
from .store import drop_idle

ENCODINGS = ("identity", "deflate")
MAX_PARTS = 100_000
"""Keeps the bookkeeping of one upload small whatever part size a client asks for."""


class UploadError(InputError):
    """A refused upload request; ``status`` is the HTTP answer (400, 404, 413, 415, 503)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class PartialUpload:
    id: str
    volume_id: str
    size: int
    part_size: int
    file: BinaryIO
    """The parts received so far, at their place in the payload (a temporary file: no memory held)."""
    received: bytearray
    touched: float
    hashed_parts: int = 0
    hasher: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self, start: int, length: int) -> bytes:
        self.file.seek(start)
        return self.file.read(length)

    def write(self, start: int, data: bytes) -> None:
        self.file.seek(start)
        self.file.write(data)

    @property
    def parts(self) -> int:
        return len(self.received)

    @property
    def received_parts(self) -> int:
        return sum(self.received)

    def part_length(self, index: int) -> int:
        if not 0 <= index < self.parts:
            raise UploadError(f"Part index {index} is outside this upload's {self.parts} parts (0-{self.parts - 1}).")
        return min(self.part_size, self.size - index * self.part_size)

    def missing(self) -> list[int]:
        return [index for index, seen in enumerate(self.received) if not seen]


def decode_part(body: bytes, encoding: str, length: int) -> bytes:
    """The part's payload bytes; a deflate body may not inflate past ``length`` (no zip bombs)."""
    if encoding == "identity":
        data = body
    else:
        inflater = zlib.decompressobj()
        try:
            data = inflater.decompress(body, length + 1)
        except zlib.error as exc:
            raise UploadError(f"The part is not valid deflate (zlib) data: {exc}.") from None
        if not inflater.eof:
            raise UploadError(f"The deflate part does not inflate to its {length} bytes (cut off or too long).")
        if inflater.unused_data:
            raise UploadError(f"The deflate part has {len(inflater.unused_data)} bytes after its compressed data; "
                              "send one zlib stream per part.")
    if len(data) != length:
        raise UploadError(f"The part holds {len(data)} bytes; this part of the upload has {length}.")
    return data


class PartialUploads:
    def __init__(self, ttl: float = 3600.0, max_bytes: int = 8 << 30):
        self.ttl, self.max_bytes = ttl, max_bytes
        self._items: dict[str, PartialUpload] = {}
        self._lock = threading.Lock()

    def begin(self, volume_id: str, size: int, part_size: int) -> PartialUpload:
        parts = -(-size // part_size)
        if parts > MAX_PARTS:
            raise UploadError(f"{parts} parts is too many for one upload (at most {MAX_PARTS}); use larger parts.")
        with self._lock:
            self._expire()
            held = sum(item.size for item in self._items.values())
            if held + size > self.max_bytes:
                raise UploadError(f"The server is receiving other uploads ({held / 1e6:.0f} MB) and has no room for "
                                  f"{size / 1e6:.0f} MB more now; try again later.", 503)
            upload = PartialUpload(secrets.token_hex(16), volume_id, size, part_size,
                                   tempfile.TemporaryFile(prefix="medclipsam-upload-"), bytearray(parts),
                                   time.monotonic())
            self._items[upload.id] = upload
            return upload

    def get(self, upload_id: str) -> PartialUpload:
        with self._lock:
            self._expire()
            upload = self._items.get(upload_id)
        if upload is None:
            raise UploadError(f"No upload '{upload_id}' on this server (never begun, committed, cancelled or expired "
                              "after the last part); begin it again.", 404)
        upload.touched = time.monotonic()
        return upload

    def put_part(self, upload_id: str, index: int, data: bytes) -> PartialUpload:
        upload = self.get(upload_id)
        start = index * upload.part_size
        with upload.lock:
            if upload.file.closed:  # expired or committed while this part was on its way
                raise UploadError(f"No upload '{upload_id}' on this server any more; begin it again.", 404)
            if index < upload.hashed_parts and upload.read(start, len(data)) != data:
                upload.hasher, upload.hashed_parts = hashlib.sha256(), 0  # a part changed after it was hashed
            upload.write(start, data)
            upload.received[index] = 1
            while upload.hashed_parts < upload.parts and upload.received[upload.hashed_parts]:  # hash as the prefix grows
                hashed = upload.hashed_parts
                upload.hasher.update(data if hashed == index else
                                     upload.read(hashed * upload.part_size, upload.part_length(hashed)))
                upload.hashed_parts += 1
        return upload

    def take(self, upload_id: str) -> BinaryIO:
        """The whole payload (its file, at the start; the caller closes it), once every part is in and its
        sha256 is the volume id; the upload is gone after."""
        upload = self.get(upload_id)
        missing = upload.missing()
        if missing:
            shown = ", ".join(str(index) for index in missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise UploadError(f"{len(missing)} of {upload.parts} parts are missing (index {shown}); send them, "
                              "then commit again.")
        with self._lock:
            self._items.pop(upload_id, None)
        with upload.lock:
            if upload.hasher.hexdigest() != upload.volume_id:
                upload.file.close()
                raise UploadError("The upload's sha256 does not match its id: the transfer was damaged or the id "
                                  "is wrong; upload again.")
            upload.file.seek(0)
            return upload.file

    def discard(self, upload_id: str) -> bool:
        with self._lock:
            upload = self._items.pop(upload_id, None)
        if upload is not None:
            with upload.lock:
                upload.file.close()
        return upload is not None

    def expire(self) -> None:
        """Drop the uploads idle for longer than ``ttl`` (run by the server's sweeper, not only on requests)."""
        with self._lock:
            self._expire()

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._items)

    def _expire(self) -> None:
        for upload in drop_idle(self._items, self.ttl):
            with upload.lock:
                upload.file.close()
