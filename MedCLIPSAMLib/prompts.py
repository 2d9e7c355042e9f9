"""From saliency to SAM prompts: Otsu, connected components, boxes and points.

Everything works on (slices, rows, cols) arrays; a 2D image is one slice. With one
slice, 26-connectivity reduces to 8-connectivity in the plane, so 2D and 3D share one
code path (SPEC 2.4 and 3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from .result import Box
Point = tuple[int, int]  # x, y

FULL_CONNECTIVITY_3D = np.ones((3, 3, 3), dtype=bool)


@dataclass
class Component:
    """One salient 3D region kept as a target."""

    label: int
    size: int
    confidence: float
    """Mean normalised saliency inside the component."""
    mask: np.ndarray = field(repr=False)


@dataclass
class SlicePrompts:
    """SAM prompts for one slice: boxes, or positive points (grouped per component)."""

    boxes: list[Box] = field(default_factory=list)
    points: list[list[Point]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.boxes or self.points)


def normalize_saliency(saliency: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Min-max normalise over the whole array (volume-wide, not per slice)."""
    values = saliency[valid] if valid is not None else saliency
    out = np.zeros(saliency.shape, dtype=np.float32)
    if values.size == 0:
        return out
    low, high = float(values.min()), float(values.max())
    if high - low <= 1e-12:
        return out
    out[...] = (saliency - low) / (high - low)
    if valid is not None:
        out[~valid] = 0.0
    return out


def otsu_mask(saliency: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Coarse mask by one Otsu threshold over all (valid) values; empty if the map is flat."""
    values = saliency[valid] if valid is not None else saliency.ravel()
    if values.size == 0 or float(values.max()) - float(values.min()) <= 1e-12:
        return np.zeros(saliency.shape, dtype=bool)
    threshold = threshold_otsu(values)
    mask = saliency > threshold
    if valid is not None:
        mask &= valid
    return mask


class Selection(NamedTuple):
    kept: list[Component]
    too_small: int
    """Components that were confident enough to be kept but dropped for size (the result's messages say so)."""


@dataclass(frozen=True)
class ComponentRule:
    """Which salient components become targets: the most confident, those close to it, none too small."""

    max_components: int = 1
    ratio: float = 0.0
    """Keep a component only if its confidence is at least this fraction of the best one's (0: top K)."""
    min_fraction: float = 0.0
    """A component needs this fraction of the processed voxels ..."""
    floor_voxels: float = math.inf
    """... or this many voxels (a physical size), whichever is less."""

    def min_size(self, voxels: int) -> int:
        return max(1, int(min(self.min_fraction * voxels, self.floor_voxels)))


def physical_floor(diameter_mm: float, spacing: tuple[float, ...]) -> float:
    """Voxels of a sphere of ``diameter_mm`` (a disc when ``spacing`` has two entries: one slice)."""
    if len(spacing) == 2:
        return math.pi / 4 * diameter_mm ** 2 / math.prod(spacing)
    return math.pi / 6 * diameter_mm ** 3 / math.prod(spacing)


def select_components(coarse: np.ndarray, saliency: np.ndarray, max_components: int,
                      min_size: int = 1, ratio: float = 0.0) -> Selection:
    """Connected components of the coarse mask, most confident first, at most K, each at least
    ``ratio`` times as confident as the best.

    Confidence is the mean saliency inside the component (SPEC 2.4); the authors'
    code ranks by area instead, which prefers large dull regions over a small bright target.
    A relative rule instead of a fixed K: three metastases are three targets, a dim blob beside
    one lesion is not.
    """
    labels, count = ndimage.label(coarse, structure=FULL_CONNECTIVITY_3D)
    if count == 0:
        return Selection([], 0)
    index = np.arange(1, count + 1)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index)
    means = ndimage.mean(saliency, labels, index)
    ranked = sorted(((float(means[i]), int(sizes[i]), int(index[i])) for i in range(count)),
                    key=lambda c: (-c[0], -c[1]))
    chosen = _confident(ranked, max_components, ratio, min_size)
    kept = [Component(label=lab, size=size, confidence=conf, mask=labels == lab) for conf, size, lab in chosen]
    unsized = _confident(ranked, max_components, ratio, 1)
    return Selection(kept, sum(1 for c in unsized if c[1] < min_size))


def _confident(ranked: list[tuple[float, int, int]], max_components: int, ratio: float,
               min_size: int) -> list[tuple[float, int, int]]:
    """The first K of the ranked (confidence, size, label) entries of at least ``min_size`` voxels that are
    at least ``ratio`` times as confident as the best of them."""
    sized = [c for c in ranked if c[1] >= min_size]
    return [c for c in sized[:max_components] if c[0] >= ratio * sized[0][0]] if sized else []


def select_by_rule(coarse: np.ndarray, saliency: np.ndarray, rule: ComponentRule, voxels: int) -> Selection:
    """``select_components`` with a rule's K, ratio and size floor over ``voxels`` processed voxels."""
    return select_components(coarse, saliency, rule.max_components, rule.min_size(voxels), rule.ratio)


def box_of(mask2d: np.ndarray) -> Box | None:
    """Tight box (x0, y0, x1, y1) around the true pixels of a 2D mask, None if empty."""
    rows = np.flatnonzero(mask2d.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask2d.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def sample_points(mask2d: np.ndarray, weights: np.ndarray, count: int) -> list[Point]:
    """Positive points inside a 2D component: its most salient pixel first, then spread out.

    Greedy farthest-point sampling weighted by saliency keeps the points inside the
    target and away from each other, which SAM needs to see the whole extent.
    """
    ys, xs = np.nonzero(mask2d)
    if ys.size == 0:
        return []
    w = weights[ys, xs].astype(np.float64)
    chosen = [int(np.argmax(w))]
    dist = np.full(ys.size, np.inf)
    for _ in range(1, min(count, ys.size)):
        last = chosen[-1]
        dist = np.minimum(dist, (ys - ys[last]) ** 2 + (xs - xs[last]) ** 2)
        chosen.append(int(np.argmax(dist * (0.5 + w))))
    return [(int(xs[i]), int(ys[i])) for i in chosen]


def prompts_per_slice(components: list[Component], saliency: np.ndarray, mode: str,
                      points_per_component: int = 3) -> list[SlicePrompts]:
    """Each slice's prompts from the kept components' cross-sections; empty where none crosses."""
    prompts = [SlicePrompts() for _ in range(saliency.shape[0])]
    for z in range(saliency.shape[0]):
        sections = [c.mask[z] for c in components if c.mask[z].any()]
        if not sections:
            continue
        if mode == "box_all":
            prompts[z].boxes.append(box_of(np.logical_or.reduce(sections)))
        elif mode == "boxes":
            prompts[z].boxes.extend(box_of(s) for s in sections)
        elif mode == "points":
            prompts[z].points.extend(sample_points(s, saliency[z], points_per_component) for s in sections)
        else:
            raise ValueError(f"unknown prompt mode {mode!r}")
    return prompts


def grow_box(box: Box, fraction: float, shape: tuple[int, int]) -> Box:
    """Enlarge a box by a fraction of its size on every side, clipped to the image.

    Emulates loose saliency boxes around an oracle box (SPEC 6).
    """
    x0, y0, x1, y1 = box
    dx, dy = fraction * (x1 - x0 + 1), fraction * (y1 - y0 + 1)
    height, width = shape
    return (max(0, int(round(x0 - dx))), max(0, int(round(y0 - dy))),
            min(width - 1, int(round(x1 + dx))), min(height - 1, int(round(y1 + dy))))


def keep_largest_components(mask: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` largest connected components of a (slices, rows, cols) mask."""
    labels, n = ndimage.label(mask, structure=FULL_CONNECTIVITY_3D)
    if n <= count:
        return mask.astype(bool)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, np.arange(1, n + 1))
    keep = np.argsort(sizes)[::-1][:count] + 1
    return np.isin(labels, keep)


def keep_overlapping(mask: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Components of ``mask`` that touch ``reference`` (3D clean-up after SAM, SPEC 3)."""
    labels, n = ndimage.label(mask, structure=FULL_CONNECTIVITY_3D)
    if n == 0:
        return mask.astype(bool)
    touching = np.unique(labels[reference & (labels > 0)])
    return np.isin(labels, touching[touching > 0])
