"""The types both SAM modules speak: an encoded slice, a crop region, and the part of a backend the box
rules call. Kept apart so ``sam.py`` (the backends) and ``box_prompting.py`` (the rules) each take them
from below instead of from each other."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..prompts import Box, Point

if TYPE_CHECKING:
    import torch

Region = tuple[int, int, int, int]
"""x0, y0, x1, y1 of a crop, inclusive, in slice pixels."""


@dataclass
class EncodedSlice:
    """One slice's image embedding and the sizes needed to map masks back."""

    embedding: torch.Tensor  # (1, C, h, w)
    input_hw: tuple[int, int]  # size after resizing, before padding
    original_hw: tuple[int, int]
    image: np.ndarray | None = field(default=None, repr=False)
    """The uint8 slice itself, for zoomed crops."""
    crops: dict[Region, "EncodedSlice"] = field(default_factory=dict, repr=False)
    """Crops encoded so far, so refinement rounds and other boxes reuse them."""


class SamBackend(Protocol):
    """What the box rules need of a SAM backend (``sam.SamBackend`` is the one implementation)."""

    def decode(self, encoded: EncodedSlice, boxes: list[Box] | None = None,
               points: list[list[Point]] | None = None, with_scores: bool = False): ...

    def encode_region(self, encoded: EncodedSlice, region: Region) -> EncodedSlice: ...
