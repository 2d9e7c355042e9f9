"""Uploaded volumes, kept by content id so later jobs on the same volume upload nothing.

Volumes expire ``ttl`` seconds after their last use, and the oldest go first when the total
exceeds ``max_bytes``, so a long-running server's memory stays bounded.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from ..imageio import Volume


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
        with self._lock:
            self._items[volume_id] = Stored(volume, int(volume.array.nbytes), time.monotonic())
            self._items.move_to_end(volume_id)
            self._expire()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def _expire(self) -> None:
        drop_idle(self._items, self.ttl)
        total = sum(item.nbytes for item in self._items.values())
        while total > self.max_bytes and len(self._items) > 1:
            _, oldest = self._items.popitem(last=False)
            total -= oldest.nbytes


def drop_idle(items: dict, ttl: float) -> None:
    """Remove the entries (with a ``touched`` monotonic time) left alone for more than ``ttl`` seconds."""
    now = time.monotonic()
    for key, item in list(items.items()):
        if now - item.touched > ttl:
            del items[key]
