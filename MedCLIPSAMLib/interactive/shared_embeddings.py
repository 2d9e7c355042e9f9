"""SAM slice embeddings shared by text runs and correction sessions on the same uploaded volume.

Encoding is most of SAM's cost (LiteMedSAM ~1.3 s a slice on a 2-core CPU, a decoder pass ~20 ms).
A text run and a session encode the same slices when their embeddings are interchangeable: same
volume content (its sha256), axis and intensity window (the same uint8 slices), and the same SAM:
backend, checkpoint, input size, device, runtime of its image encoder (PyTorch, OpenVINO or ONNX Runtime)
and precision. ``EmbeddingKey`` holds all of these, so a run with another runtime or precision encodes
its own. Zoomed crops ride inside each encoded slice, keyed by their region (``EncodedSlice.crops``).

One ``EmbeddingStore`` per server process keeps one ``EmbeddingCache`` per key within one memory
budget, which counts each cache's uint8 slices (a copy of the volume per axis and window) with its
embeddings (a cache over it trims its least recently used slices, then the least recently used other
caches are dropped), and drops a volume's caches once the server no longer holds the volume. A cache
encodes under its lock: an interaction needing a slice waits while a text run encodes a batch of the
same volume's slices (never while it runs saliency or decodes).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np

from .embedding_cache import DEFAULT_BUDGET_BYTES, EmbeddingCache, encoded_bytes

if TYPE_CHECKING:
    from ..models.sam import EncodedSlice, SamBackend


@dataclass(frozen=True)
class EmbeddingKey:
    volume: str
    axis: int
    window: str | None
    backend: str
    checkpoint: str | None
    image_size: int
    device: str
    runtime: str
    """'torch', or the class and precision of the runtime running the image encoder ('OpenVinoModule-f32')."""
    precision: str
    """'bf16' when the run asked for bfloat16, else 'fp32'."""


def embedding_key(volume_id: str, axis: int, window: str | None, backend: "SamBackend", checkpoint: str | None,
                  bf16: bool) -> EmbeddingKey:
    encoder = backend.runtime_encoder
    runtime = "torch" if encoder is None else f"{type(encoder).__name__}-{getattr(encoder, 'precision', 'f32')}"
    return EmbeddingKey(volume_id, int(axis), window, backend.name, checkpoint if backend.name != "litemedsam" else None,
                        int(backend.image_size), str(backend.device), runtime, "bf16" if bf16 else "fp32")


class SharedCache(EmbeddingCache):
    """An ``EmbeddingCache`` whose growth also keeps the whole store within its budget."""

    def __init__(self, store: "EmbeddingStore", backend: "SamBackend", slices: np.ndarray):
        # A caller's request is one batch: the pipeline sizes its batches for its device (and halves them on OOM).
        super().__init__(backend, slices, max(0, store.budget_bytes - int(slices.nbytes)),  # its slices count too
                         batch_size=max(1, len(slices)))
        self.store = store

    def _trim(self, keep: set[int]) -> None:
        super()._trim(keep)
        self.store.trim(self)


class EmbeddingStore:
    """Key -> shared cache, least recently used first; ``budget_bytes`` for all of them together."""

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES):
        self.budget_bytes = budget_bytes
        self._caches: OrderedDict[EmbeddingKey, SharedCache] = OrderedDict()
        self._lock = threading.Lock()

    def cache(self, key: EmbeddingKey, backend: "SamBackend", slices: Callable[[], np.ndarray]) -> SharedCache:
        """The cache for ``key``, made on first use from ``slices()`` (the uint8 slices, axis first)."""
        with self._lock:
            found = self._caches.get(key)
            made = found is None
            if made:
                found = self._caches[key] = SharedCache(self, backend, np.ascontiguousarray(slices()))
            self._caches.move_to_end(key)
        if made:
            self.trim(found)  # its slices count in the budget: older caches may have to go
        return found

    def trim(self, growing: SharedCache) -> None:
        """Drop the least recently used other caches while all of them hold more than the budget (a cache busy
        encoding is skipped, never waited for: two growing caches must not wait on each other)."""
        with self._lock:
            caches = list(self._caches.items())
        total = sum(_size(cache) for _, cache in caches)
        for key, cache in caches:
            if total <= self.budget_bytes:
                break
            if cache is growing or not cache._lock.acquire(blocking=False):
                continue
            try:
                total -= _size(cache)
                cache._items.clear()
            finally:
                cache._lock.release()
            with self._lock:
                self._caches.pop(key, None)

    def keep_volumes(self, held: Iterable[str]) -> None:
        """Drop the caches of volumes the server no longer holds (its sweeper calls this after expiring them)."""
        held = set(held)
        with self._lock:
            gone = [key for key in self._caches if key.volume not in held]
            dropped = [self._caches.pop(key) for key in gone]
        for cache in dropped:
            cache.clear()

    @property
    def nbytes(self) -> int:
        """Bytes held: every cache's uint8 slices and embeddings (what the budget bounds)."""
        with self._lock:
            caches = list(self._caches.values())
        return sum(_size(cache) for cache in caches)

    @property
    def cached_slices(self) -> int:
        with self._lock:
            caches = list(self._caches.values())
        return sum(len(cache) for cache in caches)

    def __len__(self) -> int:
        with self._lock:
            return len(self._caches)


def _size(cache: EmbeddingCache) -> int:
    """Bytes a cache holds, its uint8 slices (a copy of the volume per axis and window) included; read without its
    lock (another cache's trim must never wait on one that encodes)."""
    return slices_bytes(cache) + sum(encoded_bytes(e) for e in list(cache._items.values()))


def slices_bytes(cache: EmbeddingCache) -> int:
    """Bytes of the cache's slices, counted even where they are a view of a uint8 volume (the store cannot tell
    a view of the volume from a copy only the cache holds; counting both keeps the bound)."""
    return int(cache.slices.nbytes)


class RunEmbeddings:
    """What a text run on an uploaded volume hands its pipeline: the shared cache for the run's slices, and how
    many of the slices SAM needed were encoded by the run or found encoded (shown in the job's status)."""

    def __init__(self, store: EmbeddingStore, volume_id: str, checkpoint: str | None, bf16: bool):
        self.store, self.volume_id, self.checkpoint, self.bf16 = store, volume_id, checkpoint, bf16
        self.encoded = self.reused = 0

    def __call__(self, backend: "SamBackend", axis: int, window: str | None, slices: np.ndarray) -> "RunView":
        key = embedding_key(self.volume_id, axis, window, backend, self.checkpoint, self.bf16)
        return RunView(self, self.store.cache(key, backend, lambda: slices))

    def summary(self) -> dict[str, int]:
        return {"encoded": self.encoded, "reused": self.reused}


class RunView:
    """The pipeline's side of one shared cache: ``get_many`` as the cache's, counted for the run."""

    def __init__(self, run: RunEmbeddings, cache: SharedCache):
        self.run, self.cache = run, cache

    def get_many(self, indices: Sequence[int]) -> list["EncodedSlice"]:
        found = sum(int(i) in self.cache for i in dict.fromkeys(indices))
        encoded = self.cache.get_many([int(i) for i in indices])
        self.run.reused += found
        self.run.encoded += len(dict.fromkeys(indices)) - found
        return encoded
