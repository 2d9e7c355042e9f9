"""What a segmentation run produces, shared by the engine and its torch-free client.

The pipeline builds it; the server sends its fields (``wire``) and the client rebuilds the
same class, so code written against a local run works unchanged against a server.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, inclusive


@dataclass
class SegmentationResult:
    """Everything a run produced, in the input array's (z, y, x) order."""

    labels: np.ndarray
    """0 background, i + 1 for prompt i (where prompts overlap, the earlier prompt wins)."""
    masks: dict[str, np.ndarray]
    saliency: dict[str, np.ndarray]
    """Volume-normalised saliency in [0, 1] per prompt (0 on skipped slices); empty when a server client asked
    for none."""
    boxes: dict[str, dict[int, list[Box]]]
    """Per prompt: slice index along ``axis`` -> boxes (x0, y0, x1, y1) in that slice."""
    scores: dict[str, float]
    """Mean saliency of the kept components: 0 means nothing was found."""
    axis: int
    messages: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    saliency_slices: int = 0
    """Slices whose maps were computed (or read, for given maps); with a stride the rest are interpolated."""
    faithfulness: dict[str, float | None] = field(default_factory=dict)
    """Per prompt: how much more the crop around its result looks like the prompt than like null prompts to the CLIP
    model, a cosine margin (0: the text made no difference; faithfulness.py); None when the check was off or had
    nothing to compare."""
    cpu_timings: dict[str, float] = field(default_factory=dict)
    """Process CPU seconds (user + sys, all threads) per stage, beside ``timings``' wall seconds: less disturbed by
    other processes on a shared machine (the benchmark reports both)."""
    stage_slices: dict[str, int] = field(default_factory=dict)
    """How many slices each stage touched (e.g. ``m2ib`` full schedules, ``m2ib_flat_skipped``, ``sam_encoder``)."""

    @property
    def names(self) -> list[str]:
        return list(self.masks)
