"""SAM slice embeddings kept between interactions, bounded by a memory budget (least recently used go).

Encoding a slice is the expensive part (LiteMedSAM ~1.3 s on a 2-core CPU, the decoder ~20 ms), so
an interaction on a slice seen before costs one decoder pass. One cache serves one stack of slices
(a volume on one axis); sessions on the same volume and axis share it.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from ..models.sam import EncodedSlice, SamBackend

DEFAULT_BUDGET_BYTES = 1 << 30
"""1 GiB: ~250 LiteMedSAM slices (4 MiB each), ~60 SAM ViT slices at 1024 px (16 MiB)."""


def encoded_bytes(encoded: "EncodedSlice") -> int:
    size = encoded.embedding.element_size() * encoded.embedding.nelement()
    size += 0 if encoded.image is None else int(encoded.image.nbytes)
    return size + sum(encoded_bytes(crop) for crop in encoded.crops.values())


class EmbeddingCache:
    """Slice index -> encoded slice, for one (slices, backend) pair."""

    def __init__(self, backend: "SamBackend", slices: np.ndarray, budget_bytes: int = DEFAULT_BUDGET_BYTES,
                 batch_size: int = 4):
        self.backend, self.slices = backend, slices
        self.budget_bytes, self.batch_size = budget_bytes, batch_size
        self._items: OrderedDict[int, "EncodedSlice"] = OrderedDict()
        self._lock = threading.RLock()
        self.encoded_count = 0
        """Slices encoded so far (a cache hit adds nothing): what a test or benchmark checks reuse with."""

    def __contains__(self, index: int) -> bool:
        with self._lock:
            return index in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(encoded_bytes(e) for e in self._items.values())

    def get(self, index: int) -> "EncodedSlice":
        return self.get_many([index])[0]

    def get_many(self, indices: Sequence[int]) -> list["EncodedSlice"]:
        """The slices' embeddings, encoding the missing ones in batches."""
        with self._lock:
            missing = [i for i in dict.fromkeys(indices) if i not in self._items]
            for start in range(0, len(missing), self.batch_size):
                part = missing[start:start + self.batch_size]
                for index, encoded in zip(part, self.backend.encode(self.slices[part])):
                    self._items[index] = encoded
                self.encoded_count += len(part)
            found = []
            for index in indices:
                self._items.move_to_end(index)
                found.append(self._items[index])
            self._trim(keep=set(indices))
            return found

    def put(self, index: int, encoded: "EncodedSlice") -> None:
        """Keep an embedding computed elsewhere (a text run on the same slices)."""
        with self._lock:
            self._items[index] = encoded
            self._items.move_to_end(index)
            self._trim(keep={index})

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def _trim(self, keep: set[int]) -> None:
        total = sum(encoded_bytes(e) for e in self._items.values())
        for index in list(self._items):
            if total <= self.budget_bytes:
                break
            if index not in keep:
                total -= encoded_bytes(self._items.pop(index))
