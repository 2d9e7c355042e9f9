"""Corrections on a held volume: box and click interactions with 3D propagation (issue 21).

``session.InteractionSession`` keeps one target's mask over a volume and answers each interaction
with the slices that changed (``answer.Answer``); ``embedding_cache.EmbeddingCache`` keeps SAM
slice embeddings (LRU, memory budget) so later interactions on a slice cost one decoder pass.
Nothing is imported here: ``answer`` is torch-free and the client imports it alone.
"""
