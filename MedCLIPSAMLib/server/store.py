"""Uploaded volumes, kept by content id so later jobs on the same volume upload nothing.

Volumes expire ``ttl`` seconds after their last use (the server's sweeper calls ``expire``), and
the least recently used go first when the total exceeds ``max_bytes``; a volume counts its array
and the SimpleITK image carrying its geometry, and one larger than ``max_bytes`` alone is refused
(413), so a long-running server's memory stays bounded by what it counts.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from ..imageio import Volume
from ..wire import TooLarge


@dataclass
class Stored:
    volume: Volume
    nbytes: int
    touched: float


class VolumeStore:
    def __init__(self, ttl: float = 3600.0, max_bytes: int = 8 << 30):
        self.ttl, self.max_bytes = ttl, max_bytes
        self._items: OrderedDict[str, Stored] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, volume_id: str) -> Volume | None:
        with self._lock:
            self._expire()
            item = self._items.get(volume_id)
            if item is None:
                return None
            item.touched = time.monotonic()
            self._items.move_to_end(volume_id)
            return item.volume

    def put(self, volume_id: str, volume: Volume) -> None:
        nbytes = held_bytes(volume)
        if nbytes > self.max_bytes:
            raise TooLarge(f"The volume needs {nbytes / 1e6:.0f} MB in the server's memory, over its store of "
                           f"{self.max_bytes / 1e6:.0f} MB; crop the volume or start the server with a larger "
                           "--max-stored-mb.")
        with self._lock:
            self._items[volume_id] = Stored(volume, nbytes, time.monotonic())
            self._items.move_to_end(volume_id)
            self._expire()

    def expire(self) -> None:
        """Drop idle volumes now (run by the server's sweeper, so an idle server frees its memory)."""
        with self._lock:
            self._expire()

    def ids(self) -> set[str]:
        """The volumes held now (after expiry), without refreshing them."""
        with self._lock:
            self._expire()
            return set(self._items)

    def held_bytes(self) -> int:
        with self._lock:
            return sum(item.nbytes for item in self._items.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def _expire(self) -> None:
        drop_idle(self._items, self.ttl)
        total = sum(item.nbytes for item in self._items.values())
        while total > self.max_bytes and len(self._items) > 1:
            _, oldest = self._items.popitem(last=False)
            total -= oldest.nbytes


def held_bytes(volume: Volume) -> int:
    """Memory a stored volume holds: its array and its SimpleITK geometry image (one voxel each)."""
    reference = volume.reference
    pixel = reference.GetSizeOfPixelComponent() * reference.GetNumberOfComponentsPerPixel()
    return int(volume.array.nbytes) + int(reference.GetNumberOfPixels()) * int(pixel)


def drop_idle(items: dict, ttl: float) -> list:
    """Remove the entries (with a ``touched`` monotonic time) left alone for more than ``ttl`` seconds; returns them."""
    now = time.monotonic()
    dropped = []
    for key, item in list(items.items()):
        if now - item.touched > ttl:
            dropped.append(items.pop(key))
    return dropped
