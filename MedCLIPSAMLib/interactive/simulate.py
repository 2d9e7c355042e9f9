"""The simulated user of interactive segmentation papers: each step places one interaction where the
error is largest, so a curve of DSC after 1..N interactions measures how fast corrections converge.

Step 1 is a box around the ground truth on the slice where it is largest (then, in a volume,
propagation both ways); every later step is one click at the centre (the point furthest from the
region's edge) of the largest false-negative (positive click) or false-positive (negative click)
2D region, on the slice where that region is.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..prompts import box_of
from .session import InteractionSession

EIGHT = np.ones((3, 3), dtype=bool)


@dataclass
class ErrorClick:
    index: int
    x: int
    y: int
    positive: bool
    size: int


def largest_error(prediction: np.ndarray, truth: np.ndarray) -> ErrorClick | None:
    """The centre of the largest 2D error region over all slices (slices first), or None when there is none."""
    best: ErrorClick | None = None
    for positive, error in ((True, truth & ~prediction), (False, prediction & ~truth)):
        for z in np.flatnonzero(error.any(axis=(1, 2))):
            labels, count = ndimage.label(error[z], structure=EIGHT)
            sizes = ndimage.sum_labels(np.ones_like(labels), labels, np.arange(1, count + 1))
            piece = int(np.argmax(sizes)) + 1
            if best is not None and sizes[piece - 1] <= best.size:
                continue
            region = np.pad(labels == piece, 1)
            depth = ndimage.distance_transform_edt(region)[1:-1, 1:-1]
            y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
            best = ErrorClick(int(z), int(x), int(y), positive, int(sizes[piece - 1]))
    return best


def first_box(session: InteractionSession, truth: np.ndarray) -> None:
    """A tight box around the truth on its largest slice, then propagation both ways (volumes)."""
    areas = truth.sum(axis=(1, 2))
    index = int(np.argmax(areas))
    session.box(index, box_of(truth[index]))
    if session.slice_count > 1 and session.mask[index].any():
        session.propagate(index, "both")


def simulate(session: InteractionSession, truth: np.ndarray, steps: int) -> list[np.ndarray]:
    """The session's mask (slices first) after each of ``steps`` simulated interactions; ``truth`` is on the
    session's slices. A step with nothing left to fix repeats the mask."""
    masks = []
    for step in range(steps):
        if step == 0 and not session.mask.any():
            first_box(session, truth)
        else:
            error = largest_error(session.mask, truth)
            if error is not None:
                session.click(error.index, error.x, error.y, error.positive)
        masks.append(session.mask.copy())
    return masks
