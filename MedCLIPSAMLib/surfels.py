"""Normalised surface Dice on surfels: the method of the authors' evaluation (the surface-distance
computation of Nikolov et al., 2021, used with spacing (1, 1, 1) and tolerance 2 on 2D masks as
(H, W, 1) volumes), so ``--nsd-convention paper`` compares with the paper's tables.

The surface is cut into surface elements (surfels), one per 2x2x2 cube of voxels whose corners are
partly in the mask; a surfel's area is that of the marching-cubes surface inside its cube, and it
sits at the cube's centre. Each surface's surfels within the tolerance of the other surface count
with their areas. Where a cube's corners are ambiguous, the marching-cubes surface keeps the corners
of the smaller side apart (an 8-corner cube and its complement have one area), as in the reference
tables.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
from scipy import ndimage

CORNERS = [(i, j, k) for i in (0, 1) for j in (0, 1) for k in (0, 1)]
"""Bit b of a cube's code is its corner CORNERS[b] (offsets along axes 0, 1, 2)."""


def _code_corners(code: int) -> np.ndarray:
    cube = np.zeros((2, 2, 2))
    for bit, corner in enumerate(CORNERS):
        cube[corner] = code >> bit & 1
    return cube


@lru_cache(maxsize=8)
def surfel_areas(spacing: tuple[float, float, float]) -> np.ndarray:
    """Area (in mm^2) of the surface inside a cube, for each of the 256 corner codes, at this spacing."""
    from skimage.measure import marching_cubes

    areas = np.zeros(256)
    for code in range(1, 255):
        minority = code if bin(code).count("1") <= 4 else 255 - code
        vertices, faces, _, _ = marching_cubes(_code_corners(minority), 0.5, method="lorensen")
        corners = vertices.astype(np.float64)[faces] * np.asarray(spacing, np.float64)  # (T, 3 vertices, 3)
        normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        areas[code] = 0.5 * np.linalg.norm(normals, axis=1).sum()
    return areas


def cube_codes(mask: np.ndarray) -> np.ndarray:
    """The corner code of every 2x2x2 cube that touches ``mask`` (one more than its size along each axis)."""
    padded = np.pad(mask.astype(np.uint8), 1)
    size = tuple(n + 1 for n in mask.shape)
    codes = np.zeros(size, np.uint8)
    for bit, (i, j, k) in enumerate(CORNERS):
        codes |= padded[i:i + size[0], j:j + size[1], k:k + size[2]] << bit
    return codes


def surfel_surface_dice(prediction: np.ndarray, truth: np.ndarray, tolerance: float,
                        spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """Surfel-area-weighted share of both 3D surfaces within ``tolerance`` (mm) of the other; both masks
    empty: 1, one empty: 0 (as ``metrics.normalized_surface_dice``)."""
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    if prediction.ndim != 3 or prediction.shape != truth.shape:
        raise ValueError(f"surfel NSD needs two 3D masks of one shape, got {prediction.shape} and {truth.shape}")
    if not prediction.any() and not truth.any():
        return 1.0
    if not prediction.any() or not truth.any():
        return 0.0
    occupied = np.argwhere(prediction | truth)
    box = tuple(slice(low, high + 1) for low, high in zip(occupied.min(0), occupied.max(0)))
    areas = surfel_areas(tuple(float(s) for s in spacing))
    codes_p, codes_t = cube_codes(prediction[box]), cube_codes(truth[box])
    surface_p = (codes_p != 0) & (codes_p != 255)
    surface_t = (codes_t != 0) & (codes_t != 255)
    distance_to_t = ndimage.distance_transform_edt(~surface_t, sampling=spacing)
    distance_to_p = ndimage.distance_transform_edt(~surface_p, sampling=spacing)
    area_p, area_t = areas[codes_p[surface_p]], areas[codes_t[surface_t]]
    close = area_p[distance_to_t[surface_p] <= tolerance].sum() + area_t[distance_to_p[surface_t] <= tolerance].sum()
    return float(close / (area_p.sum() + area_t.sum()))
