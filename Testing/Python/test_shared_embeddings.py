"""The embedding store shared by text runs and sessions: its key, its one budget, its release with the volume."""
from __future__ import annotations

import numpy as np

from conftest import disk_image
from MedCLIPSAMLib.interactive.embedding_cache import encoded_bytes
from MedCLIPSAMLib.interactive.shared_embeddings import EmbeddingStore, embedding_key


def slices(seed: int) -> np.ndarray:
    return np.stack([disk_image(64, 64, (30, 30), 10, seed=seed + z) for z in range(3)])


def test_the_key_tells_apart_what_changes_the_embeddings(litemedsam):
    key = embedding_key("v" * 64, 0, None, litemedsam, None, bf16=False)
    assert key == embedding_key("v" * 64, 0, None, litemedsam, "ignored.pth", bf16=False)  # LiteMedSAM: its own
    assert key.runtime == "torch" and key.precision == "fp32" and key.image_size == 256
    other_runtime = litemedsam.with_encoder(litemedsam.model.image_encoder)
    for changed in (embedding_key("w" * 64, 0, None, litemedsam, None, False),
                    embedding_key("v" * 64, 1, None, litemedsam, None, False),
                    embedding_key("v" * 64, 0, "brain", litemedsam, None, False),
                    embedding_key("v" * 64, 0, None, litemedsam, None, True),
                    embedding_key("v" * 64, 0, None, other_runtime, None, False)):
        assert changed != key


def test_one_budget_for_all_caches_and_release_with_the_volume(litemedsam):
    one = encoded_bytes(litemedsam.encode(slices(0)[:1])[0])
    store = EmbeddingStore(budget_bytes=int(2.5 * one))
    first = store.cache(embedding_key("a" * 64, 0, None, litemedsam, None, False), litemedsam, lambda: slices(0))
    first.get_many([0, 1])
    second = store.cache(embedding_key("b" * 64, 0, None, litemedsam, None, False), litemedsam, lambda: slices(10))
    second.get_many([0])  # three slices over a budget of 2.5: the least recently used other cache goes
    assert len(store) == 1 and store.cached_slices == 1 and len(first) == 0
    again = store.cache(embedding_key("b" * 64, 0, None, litemedsam, None, False), litemedsam, lambda: slices(99))
    assert again is second and 0 in again  # the same cache, its slices from the first call
    store.keep_volumes({"a" * 64})  # the server let volume b go
    assert len(store) == 0 and store.cached_slices == 0 and len(second) == 0
