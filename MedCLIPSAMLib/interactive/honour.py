"""A click always does what it says: after a positive click its pixel is in the mask, after a negative one out.

SAM's answer to a click (the local edit, the box edit, a point prompt) is kept when it honours every click of the
slice so far. Where it does not, the click is answered by a local edit that does, tried in this order:

- ``candidates``: SAM's masks (its single answer and its three multimask candidates) for boxes of a few sizes
  around the click; a positive click adds the candidate's piece that holds it, a negative one removes the part of
  the mask's piece around it that a candidate leaves out. A candidate counts only if it honours every click of the
  slice, stays inside its box (one that fills its box found no object's edge) and is no larger than the target's
  scale allows; of those, the one SAM rates highest.
- ``region``: the pixels connected to the click whose (lightly smoothed) intensity is within a tolerance of the
  click's, within a disc whose radius is the click's distance to the mask's border (the size of the error it
  fixes), and never a pixel another click of the slice claims the other way. The click's own pixel is always in it.

On a slice the user boxed or clicked, the paths start from the mask before the click when SAM's answer leaves a
click of the slice wrong (``fallback_start``), so nothing far from the clicks changes.

Numpy/scipy plus the decoder (``prompting.decode_candidates``); the session keeps each slice's clicks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
from scipy import ndimage

from ..prompts import Box
from .prompting import Click, decode_candidates

if TYPE_CHECKING:
    from ..models.sam import EncodedSlice, SamBackend

EIGHT = np.ones((3, 3), dtype=bool)
PATHS = ("sam", "candidates", "region")
"""What answered a click (the session's answer says it): SAM's own answer, a SAM candidate chosen to honour the
clicks, or a region grown from the click."""


@dataclass(frozen=True)
class HonourRule:
    box_scales: tuple[float, ...] = (0.75, 1.5, 3.0)
    """Candidate boxes around a positive click: half-sides of these multiples of the error's estimated radius."""
    max_area_factor: float = 2.0
    """A positive click's added piece is at most this many times the area of a disc of the target's radius."""
    min_radius_px: int = 3
    tolerance: float = 1.5
    """Region growing keeps pixels within this many local standard deviations (7 x 7 px) of the click's
    intensity, and at least ``min_tolerance`` grey levels."""
    min_tolerance: float = 8.0
    smoothing: float = 1.0
    region_reach: float = 0.25
    """The grown region stays within this fraction of the error's radius from the click: SAM saw no object there,
    so the edit is kept small (0.6 added up to 81,000 px on chest X-rays of the tuning half, 4 DSC points lost)."""


def honoured(mask: np.ndarray, click: Click) -> bool:
    x, y, positive = click
    return bool(mask[y, x]) == positive


def all_honoured(mask: np.ndarray, clicks: Sequence[Click]) -> bool:
    return all(honoured(mask, click) for click in clicks)


def remember(kept: Sequence[Click], new: Sequence[Click]) -> list[Click]:
    """A slice's clicks after ``new``: a new click replaces an earlier one on the same pixel (the latest is what
    the user means there)."""
    out = list(kept)
    for click in new:
        out = [c for c in out if (c[0], c[1]) != (click[0], click[1])] + [click]
    return out


def target_radius(mask: np.ndarray, near: np.ndarray | None, shape: tuple[int, int]) -> float:
    """The target's radius in px: of the slice's mask, else of the nearest slice's, else 5 % of the slice."""
    for source in (mask, near):
        if source is not None and source.any():
            return float(np.sqrt(source.sum() / np.pi))
    return 0.05 * max(shape)


def error_radius(mask: np.ndarray, click: Click, target: float, rule: HonourRule) -> float:
    """How big the error a click fixes is likely to be: the click's distance to the mask's border (the simulated
    and the human user click inside the error region, a missed rim or a leak is about that thick), at most the
    target's radius. Measured on a crop around the click, so a large image costs no more than a small one."""
    x, y, positive = click
    reach = int(np.ceil(max(target, rule.min_radius_px))) + 1
    top, left = max(0, y - reach), max(0, x - reach)
    crop = mask[top:y + reach + 1, left:x + reach + 1]
    other = ~crop if positive else crop
    if other.all():  # no border within reach
        return float(max(target, rule.min_radius_px))
    distance = ndimage.distance_transform_edt(other)[y - top, x - left]
    return float(max(rule.min_radius_px, min(distance + 2, max(target, rule.min_radius_px))))


def fallback_start(before: np.ndarray, answer: np.ndarray, clicks: Sequence[Click], approved: bool) -> np.ndarray:
    """What the honour paths start from (the "failed answer" rule): SAM's answer when it honours every click of
    the slice so far, else, on a slice the user approved (boxed or clicked), the slice's mask before the request.

    An answer that leaves a click of the slice wrong (the new one, or an earlier one it undoes) is no answer to
    them, yet its other changes can be large: on the tuning half of the chest X-rays every drop of a case's curve
    was such an answer (a box edit that undid earlier clicks and took 8,000-102,000 px of lung away far from the
    new click; the fallback then only restored the clicked pixels' regions), on 2D brain MRI one added 822 px of
    background. Starting from the mask before, the fallback changes only the clicks' neighbourhoods. A slice only
    propagation wrote holds nothing the user approved, and SAM's answer to the click is as good a guess there as
    the propagated mask (on brain1 it cleaned a propagated slice's rim: +0.5 DSC points); a slice with no mask yet
    has nothing to lose: both keep SAM's answer."""
    if not approved or not before.any() or all_honoured(answer, clicks):
        return answer
    return before.copy()


def honour(backend: "SamBackend", encoded: "EncodedSlice", image: np.ndarray, mask: np.ndarray,
           clicks: Sequence[Click], target: float, rule: HonourRule = HonourRule()) -> tuple[np.ndarray, str]:
    """``mask`` changed so that every click holds (later clicks first where they conflict) and which path did it:
    "sam" when it already did, else "candidates" or "region" (the last path any click needed)."""
    path = "sam"
    mask = mask.copy()
    for _ in range(2):  # a fix for one click may undo another's: a second round settles it
        if all_honoured(mask, clicks):
            return mask, path
        for position in range(len(clicks) - 1, -1, -1):
            click = clicks[position]
            if honoured(mask, click):
                continue
            others = [c for c in clicks if c is not click]
            fixed = _from_candidates(backend, encoded, mask, click, others, target, rule)
            if fixed is not None:
                mask, path = fixed, "candidates" if path == "sam" else path
                continue
            mask, path = _grow(image, mask, click, others, target, rule), "region"
    for click in clicks:  # the latest click on a pixel wins: nothing can leave it wrong
        x, y, positive = click
        if not honoured(mask, click):
            mask[y, x], path = positive, "region"
    return mask, path


def _from_candidates(backend, encoded, mask: np.ndarray, click: Click, others: Sequence[Click], target: float,
                     rule: HonourRule) -> np.ndarray | None:
    x, y, positive = click
    height, width = mask.shape
    radius = error_radius(mask, click, target, rule)
    best, best_score = None, -np.inf
    limit = rule.max_area_factor * np.pi * max(radius, target) ** 2
    for scale in rule.box_scales:
        half = max(rule.min_radius_px, int(round(scale * radius)))
        box: Box = (max(0, x - half), max(0, y - half), min(width - 1, x + half), min(height - 1, y + half))
        x0, y0, x1, y1 = box
        window = (slice(y0, y1 + 1), slice(x0, x1 + 1))  # a candidate changes only its box: work on the crop
        inside = mask[window]
        for decoded in decode_candidates(backend, encoded, box):
            candidate = decoded.mask[window]
            if candidate[y - y0, x - x0] != positive:
                continue
            labels, _ = ndimage.label(candidate & ~inside if positive else inside & ~candidate, structure=EIGHT)
            label = labels[y - y0, x - x0]
            if positive and not label:
                continue
            piece = labels == label if label else np.zeros_like(inside)
            if not piece.any() or piece.sum() > limit or (positive and _fills_box(piece)):
                continue
            new = mask.copy()
            new[window] = inside | piece if positive else inside & ~piece
            if not all_honoured(new, others) or not honoured(new, click):
                continue
            if decoded.iou > best_score:
                best, best_score = new, decoded.iou
    return best


def _fills_box(piece: np.ndarray) -> bool:
    """Whether the piece (cropped to its box) reaches three or four sides of it: SAM found no edge of an object
    inside the box."""
    return sum(bool(side.any()) for side in (piece[0], piece[-1], piece[:, 0], piece[:, -1])) >= 3


def _grow(image: np.ndarray, mask: np.ndarray, click: Click, others: Sequence[Click], target: float,
          rule: HonourRule) -> np.ndarray:
    """The click's region: connected pixels of similar intensity within the error's radius, added or removed."""
    x, y, positive = click
    radius = max(rule.min_radius_px, rule.region_reach * error_radius(mask, click, target, rule))
    reach = int(np.ceil(radius)) + 1
    top, left = max(0, y - reach), max(0, x - reach)
    window = (slice(top, y + reach + 1), slice(left, x + reach + 1))  # the disc's square: nothing outside changes
    cx, cy = x - left, y - top
    smooth = ndimage.gaussian_filter(image[window].astype(np.float32), rule.smoothing)
    near = smooth[max(0, cy - 3):cy + 4, max(0, cx - 3):cx + 4]
    tolerance = max(rule.min_tolerance, rule.tolerance * float(near.std()))
    inside = mask[window]
    rows, cols = np.ogrid[:inside.shape[0], :inside.shape[1]]
    allowed = (np.abs(smooth - smooth[cy, cx]) <= tolerance) & ((cols - cx) ** 2 + (rows - cy) ** 2 <= radius ** 2)
    allowed &= ~inside if positive else inside
    for ox, oy, other_positive in others:  # never a pixel another click claims the other way
        if other_positive != positive and 0 <= oy - top < inside.shape[0] and 0 <= ox - left < inside.shape[1]:
            allowed[oy - top, ox - left] = False
    allowed[cy, cx] = True
    labels, _ = ndimage.label(allowed, structure=EIGHT)
    region = labels == labels[cy, cx]
    new = mask.copy()
    new[window] = inside | region if positive else inside & ~region
    return new
