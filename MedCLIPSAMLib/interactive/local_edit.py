"""A click answered as a local edit of the current mask: the click's level set of SAM's logits.

LiteMedSAM does not answer point prompts (it was trained with boxes), and re-prompting it with an edited
box replaces the whole slice's mask, so a click could make a good mask worse. Instead the slice's box
prompt is decoded once more and its logits read as SAM's ranking of how much each pixel belongs: a
positive click adds the pixels connected to it that SAM ranks at least as high as the click (less
``delta``), a negative click removes those it ranks as low (plus ``delta``), both only within
``reach`` times the click's distance to the mask's border (plus ``pad`` px). Nothing outside that disc
changes. Measured on the dev set (docs/correction.md).

The *other clicks rule*: an edit takes no pixel nearer to an earlier click of the slice that says the
opposite than to its own click, so it never undoes that click and stays on its own click's side (on breast US
a negative edit took an earlier positive click's pixel out with the false positive, and the failed-answer rule
then dropped the whole edit for a much smaller fallback). A bound on the edit's area (the disc of the click's
distance to the border) was measured and not kept: it cost the tuning halves up to 0.8 DSC points
(docs/correction-quality.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch.nn.functional as F
from scipy import ndimage

if TYPE_CHECKING:
    from ..models.sam import EncodedSlice, SamBackend
    from .prompting import Click, Decoded

EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class LocalEditRule:
    delta: float = 1.0
    """Logit slack: a positive click takes pixels SAM ranks down to the click's logit minus this."""
    reach: float = 2.0
    """The edit stays within this many times the click's distance to the mask's border, around the click."""
    pad_px: float = 2.0
    floor: float = -8.0
    """Below this logit SAM is sure the click is background for the slice's box: the level set would flood the
    disc, so the click is answered as a box edit instead (a missed piece far from the mask)."""


def slice_logits(backend: "SamBackend", encoded: "EncodedSlice", decoded: "Decoded") -> np.ndarray:
    """The decoder's low-resolution logits at the slice's own size (what ``decode`` thresholds at 0)."""
    logits = F.interpolate(decoded.logits, size=(backend.image_size,) * 2, mode="bilinear", align_corners=False)
    logits = logits[..., :encoded.input_hw[0], :encoded.input_hw[1]]
    return F.interpolate(logits, size=encoded.original_hw, mode="bilinear", align_corners=False)[0, 0].cpu().numpy()


def level_set_edit(logits: np.ndarray, mask: np.ndarray, x: int, y: int, positive: bool,
                   rule: LocalEditRule = LocalEditRule(), others: Sequence["Click"] = ()) -> np.ndarray | None:
    """The slice's new mask after one click, changed only near the click; None when SAM is sure the click is
    background (``rule.floor``): the caller answers it another way. ``others`` are the slice's earlier clicks:
    the edit takes no pixel nearer to one that says the opposite than to this click."""
    if logits[y, x] < rule.floor:
        return None
    if positive == bool(mask[y, x]):
        return mask.copy()
    if positive:
        distance = ndimage.distance_transform_edt(~mask)[y, x]
        candidates = (logits >= logits[y, x] - rule.delta) & ~mask
    else:
        distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1][y, x]
        candidates = (logits <= logits[y, x] + rule.delta) & mask
    rows, cols = np.ogrid[:mask.shape[0], :mask.shape[1]]
    near = (cols - x) ** 2 + (rows - y) ** 2
    radius = rule.reach * distance + rule.pad_px
    candidates &= near <= radius * radius
    for ox, oy, other_positive in others:  # the other clicks rule: only pixels on this click's side
        if other_positive != positive and (ox, oy) != (x, y):
            candidates &= near < (cols - ox) ** 2 + (rows - oy) ** 2
    labels, _ = ndimage.label(candidates, structure=EIGHT)
    piece = labels == labels[y, x]
    return mask | piece if positive else mask & ~piece
