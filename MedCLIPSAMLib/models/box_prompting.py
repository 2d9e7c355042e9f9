"""From one box to one mask with SAM: zoom for small targets, refinement that keeps good masks,
and splitting a box that holds two separate targets.

Kept apart from the backends (``sam.py``) because these are method choices, each measured on oracle
boxes (docs/results.md) and the same for LiteMedSAM and the SAM ViT models.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..box_rules import BoxRules
from ..prompts import Box, box_of, grow_box
from .sam_types import EncodedSlice, Region, SamBackend

MAX_MAGNIFICATION = 8.0
"""A crop is never smaller than 1/8 of the slice's longer side: beyond that, upsampling adds blur, not detail."""


def paste(mask: np.ndarray, region: Region, shape: tuple[int, int]) -> np.ndarray:
    """A crop's mask placed back into an empty slice-sized mask."""
    full = np.zeros(shape, dtype=bool)
    x0, y0, x1, y1 = region
    full[y0:y1 + 1, x0:x1 + 1] = mask
    return full


def zoom_region(box: Box, shape: tuple[int, int], rules: BoxRules) -> Region | None:
    """The square crop around a small box (None when the box is large enough for the whole-slice embedding)."""
    height, width = shape
    x0, y0, x1, y1 = box
    side = max(x1 - x0 + 1, y1 - y0 + 1)
    longest = max(height, width)
    if rules.zoom_below <= 0 or side >= rules.zoom_below * longest:
        return None
    crop = int(round(max(side * (1 + 2 * rules.zoom_context), longest / MAX_MAGNIFICATION)))
    if crop >= min(height, width):
        return None
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = int(min(max(round(cx - crop / 2), 0), width - crop))
    top = int(min(max(round(cy - crop / 2), 0), height - crop))
    return left, top, left + crop - 1, top + crop - 1


def shift(box: Box, dx: int, dy: int) -> Box:
    x0, y0, x1, y1 = box
    return x0 - dx, y0 - dy, x1 - dx, y1 - dy


def inward(box: Box, inner: Box) -> float:
    """How far the furthest side of ``inner`` lies inside ``box``, as a fraction of the box's size."""
    x0, y0, x1, y1 = box
    width, height = x1 - x0 + 1, y1 - y0 + 1
    return max((inner[0] - x0) / width, (x1 - inner[2]) / width, (inner[1] - y0) / height, (y1 - inner[3]) / height)


def box_area(box: Box) -> int:
    x0, y0, x1, y1 = box
    return (x1 - x0 + 1) * (y1 - y0 + 1)


def step_towards(box: Box, target: Box, step: float) -> Box:
    return tuple(int(round(a + step * (b - a))) for a, b in zip(box, target))


def first_mask(backend: "SamBackend", encoded: "EncodedSlice", box: Box) -> tuple[np.ndarray, float]:
    masks, scores = backend.decode(encoded, boxes=[box], with_scores=True)
    return masks[0], float(scores[0])


def refine(backend: "SamBackend", encoded: "EncodedSlice", box: Box, rules: BoxRules,
           first: tuple[np.ndarray, float] | None = None) -> np.ndarray:
    """SAM's mask for one box on one view (whole slice or crop), re-prompted by the rules; ``first`` is the
    box's own mask and SAM's IoU estimate when already decoded."""
    mask, score = first or first_mask(backend, encoded, box)
    if rules.refine_below_fill < 1 and mask.sum() >= rules.refine_below_fill * box_area(box):
        return mask
    for _ in range(rules.refine_rounds):
        tight = box_of(mask)
        if tight is None:
            break
        following = grow_box(tight, rules.refine_margin, encoded.original_hw) if rules.refine_margin else tight
        if rules.refine_min_shrink > 0 and inward(box, following) <= rules.refine_min_shrink:
            break
        if rules.refine_step < 1:
            following = step_towards(box, following, rules.refine_step)
        if following == box:
            break
        masks, scores = backend.decode(encoded, boxes=[following], with_scores=True)
        if rules.refine_keep_better and float(scores[0]) < score:
            break
        box, mask, score = following, masks[0], float(scores[0])
    return mask


def box_mask(backend: "SamBackend", encoded: "EncodedSlice", box: Box, rules: BoxRules) -> np.ndarray:
    """One box's mask at the slice's size: zoomed in for a small box, refined, pasted back."""
    region = zoom_region(box, encoded.original_hw, rules)
    if region is None:
        return refine(backend, encoded, box, rules)
    crop = backend.encode_region(encoded, region)
    local = refine(backend, crop, shift(box, region[0], region[1]), rules)
    return paste(local, region, encoded.original_hw)


def pieces(mask: np.ndarray, fraction: float) -> list[Box]:
    """Boxes of a mask's 8-connected pieces that are at least ``fraction`` of the largest (two or more, or none)."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count < 2:
        return []
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, np.arange(1, count + 1))
    kept = [i + 1 for i in np.flatnonzero(sizes >= fraction * sizes.max())]
    return [box_of(labels == lab) for lab in kept] if len(kept) > 1 else []


def segment_box(backend: "SamBackend", encoded: "EncodedSlice", box: Box, rules: BoxRules) -> np.ndarray:
    """One box prompt's mask, split into one box per separate target when the rules say so."""
    if rules.split_fraction <= 0 or zoom_region(box, encoded.original_hw, rules) is not None:
        return box_mask(backend, encoded, box, rules)
    first = first_mask(backend, encoded, box)
    parts = pieces(first[0], rules.split_fraction)
    if parts:
        return np.logical_or.reduce([box_mask(backend, encoded, part, rules) for part in parts])
    return refine(backend, encoded, box, rules, first)
