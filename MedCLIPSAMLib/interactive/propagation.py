"""Carry a slice's mask to its neighbours: each next slice is prompted with the box of the previous
slice's mask, grown by a margin, until a stop rule says the target has ended.

On thick slices the stop rule is what decides the result: a box-prompted SAM finds *something* in
every box, so without a rule a 7-slice tumour grows into 20 slices. The defaults are measured on
the dev set's brain1 volume (docs/correction.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
from scipy import ndimage

from ..prompts import box_of, grow_box
from .prompting import Decoded, decode

if TYPE_CHECKING:
    from ..models.sam import SamBackend
    from .embedding_cache import EmbeddingCache

UP, DOWN = 1, -1
DIRECTIONS = {"up": (UP,), "down": (DOWN,), "both": (UP, DOWN)}
"""Up: increasing slice index."""


@dataclass(frozen=True)
class StopRule:
    """When propagation stops, and how the next slice is prompted."""

    margin: float = 0.1
    """The next slice's box: the previous mask's box grown by this fraction of its size per side."""
    min_area_px: int = 10
    """The mask vanished: fewer pixels than this."""
    max_growth: float = 1.5
    """The area jumped: more than this many times the previous slice's (SAM filled the box with something else)."""
    min_shrink: float = 0.0
    """The area collapsed: less than this fraction of the previous slice's (0: never)."""
    min_iou: float = 0.0
    """SAM's own IoU estimate fell below this (0: never)."""
    max_iou_drop: float = 1.0
    """SAM's own IoU estimate fell by more than this from the previous slice's (1: never). On brain1 it stops
    inside the tumour (0.92 -> 0.67 on a slice where the tumour narrows), so it is off by default."""
    min_contrast: float = 0.3
    """The mask no longer stands out: the mean intensity inside it minus that of a ring around it fell under this
    fraction of the same contrast on the start slice (0: never). On brain1 the tumour keeps 0.4-1.2 of the start
    slice's contrast, the slices past it 0.0-0.1 (docs/correction.md)."""
    ring_px: int = 3
    """Width of the ring the contrast compares the mask with."""
    min_start_contrast: float = 5.0
    """The contrast rule applies only when the start slice's own contrast is at least this many grey levels
    (of 255): a target that does not stand out gives no reference."""
    max_slices: int = 0
    """At most this many slices per direction (0: no limit)."""
    max_seed_growth: float = 2.0
    """The area grew past this many times the seed slice's (0: never): a target is largest near where a user boxes
    it, so a mask twice the seed's is something else the box reached, however slowly it grew slice by slice."""
    max_extent: float = 1.5
    """At most this many of the seed mask's equivalent diameters (mm) away from the seed slice, given the slice
    spacing (0: no limit). On thick slices a leak's first slice is already far along: brain1's tumour reaches
    1.2 diameters from its largest slice (5 slices of 6.5 mm), every slice past that is a leak."""
    use_mask_prompt: bool = False
    """Also give the previous slice's low-resolution logits as the mask prompt."""

    def slice_limit(self, seed_area: int, pixel_mm: float, spacing_mm: float) -> int:
        """Slices per direction the extent rule allows for a seed mask of ``seed_area`` px (0: no limit)."""
        if not self.max_extent or spacing_mm <= 0:
            return self.max_slices
        diameter_mm = 2 * np.sqrt(seed_area / np.pi) * pixel_mm
        allowed = max(1, int(self.max_extent * diameter_mm / spacing_mm))
        return min(allowed, self.max_slices) if self.max_slices else allowed

    def reason(self, area: int, previous_area: int, decoded: Decoded, previous_iou: float | None,
               contrast_ratio: float | None = None, seed_area: int | None = None) -> str | None:
        """Why the propagation stops at a slice with this mask, or None to keep it and go on."""
        if area < self.min_area_px:
            return "the mask vanished"
        if area > self.max_growth * previous_area:
            return f"the area jumped {area / previous_area:.1f}x"
        if seed_area and self.max_seed_growth and area > self.max_seed_growth * seed_area:
            return f"the area grew to {area / seed_area:.1f}x the start slice's"
        if area < self.min_shrink * previous_area:
            return f"the area fell to {area / previous_area:.2f}x"
        if decoded.iou < self.min_iou:
            return f"SAM's predicted IoU fell to {decoded.iou:.2f}"
        if previous_iou is not None and decoded.iou < previous_iou - self.max_iou_drop:
            return f"SAM's predicted IoU fell from {previous_iou:.2f} to {decoded.iou:.2f}"
        if contrast_ratio is not None and contrast_ratio < self.min_contrast:
            return f"the mask no longer stands out ({contrast_ratio:.2f} of the start slice's contrast)"
        return None


@dataclass
class Step:
    index: int
    mask: np.ndarray
    iou: float


def propagate(backend: "SamBackend", cache: "EmbeddingCache", start_mask: np.ndarray, start: int, direction: int,
              rule: StopRule, blocked: Callable[[int], bool] = lambda index: False,
              start_logits=None, start_iou: float | None = None,
              spacing: tuple[float, float] | None = None) -> tuple[list[Step], str]:
    """The masks of the slices after ``start`` in ``direction`` and why propagation stopped.

    ``blocked``: slices it must not overwrite (edited by the user); it stops before them. ``spacing``: the slice
    spacing and the in-plane pixel size in mm (for ``rule.max_extent``; None: no extent limit). Each slice costs one
    encoder pass (unless cached) and one decoder pass.
    """
    steps: list[Step] = []
    previous, logits, iou = start_mask, start_logits, start_iou
    reference = contrast(cache.slices[start], start_mask, rule.ring_px) if rule.min_contrast > 0 else 0.0
    use_contrast = abs(reference) >= rule.min_start_contrast
    seed_area = int(start_mask.sum())
    limit = rule.slice_limit(seed_area, spacing[1], spacing[0]) if spacing else rule.max_slices
    for index in _walk(start, direction, len(cache.slices), limit):
        if blocked(index):
            return steps, f"slice {index} was edited by hand"
        box = box_of(previous)
        if box is None:
            return steps, "the mask vanished"
        box = grow_box(box, rule.margin, previous.shape)
        decoded = decode(backend, cache.get(index), box=box,
                         mask_logits=logits if rule.use_mask_prompt else None)
        area = int(decoded.mask.sum())
        ratio = (contrast(cache.slices[index], decoded.mask, rule.ring_px) / reference
                 if use_contrast and area else None)
        why = rule.reason(area, int(previous.sum()), decoded, iou, ratio, seed_area)
        if why is not None:
            return steps, f"{why} on slice {index}"
        steps.append(Step(index, decoded.mask, decoded.iou))
        previous, logits, iou = decoded.mask, decoded.logits, decoded.iou
    if 0 <= start + direction * (len(steps) + 1) < len(cache.slices):
        return steps, "the slice limit" if limit == rule.max_slices else (
            f"the target's likely extent ({rule.max_extent:g} of its diameter from the start slice)")
    return steps, "the end of the volume"


def contrast(image: np.ndarray, mask: np.ndarray, ring_px: int) -> float:
    """Mean intensity inside the mask minus that of a ring ``ring_px`` wide around it (grey levels)."""
    if not mask.any():
        return 0.0
    ring = ndimage.binary_dilation(mask, iterations=ring_px) & ~mask
    if not ring.any():
        return 0.0
    return float(image[mask].mean()) - float(image[ring].mean())


def _walk(start: int, direction: int, count: int, limit: int) -> Iterator[int]:
    index, taken = start + direction, 0
    while 0 <= index < count and (not limit or taken < limit):
        yield index
        index += direction
        taken += 1
