"""Segmentation metrics as in the paper: Dice (DSC) and normalised surface Dice (NSD).

Conventions: both masks empty -> 1 for both metrics (the authors' code crashes there);
one empty -> 0. NSD uses distance transforms with the image spacing, so the tolerance
is in millimetres for volumes (2 mm) and pixels for 2D images (2 px).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    total = prediction.sum() + truth.sum()
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(prediction, truth).sum() / total)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels: in the mask and touching the background (full connectivity)."""
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def normalized_surface_dice(prediction: np.ndarray, truth: np.ndarray, tolerance: float,
                            spacing: Sequence[float] | None = None) -> float:
    """Fraction of both surfaces lying within ``tolerance`` of the other surface."""
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    if not prediction.any() and not truth.any():
        return 1.0
    if not prediction.any() or not truth.any():
        return 0.0
    spacing = tuple(spacing) if spacing is not None else (1.0,) * prediction.ndim
    surface_p, surface_t = _surface(prediction), _surface(truth)
    distance_to_t = ndimage.distance_transform_edt(~surface_t, sampling=spacing)
    distance_to_p = ndimage.distance_transform_edt(~surface_p, sampling=spacing)
    close_p = (distance_to_t[surface_p] <= tolerance).sum()
    close_t = (distance_to_p[surface_t] <= tolerance).sum()
    return float((close_p + close_t) / (surface_p.sum() + surface_t.sum()))


NSD_CONVENTIONS = ("ours", "paper")


def nsd_2d(prediction: np.ndarray, truth: np.ndarray, tolerance: float, convention: str = "ours") -> float:
    """NSD of 2D masks. ``paper``: as the authors' evaluation computes it, surfel areas on (H, W, 1)
    volumes at spacing (1, 1, 1) (see ``surfels``), where every foreground pixel's top and bottom faces are
    surface: that "NSD" is close to the share of foreground lying within ``tolerance`` of the other mask,
    far above the boundary-only NSD (``ours``)."""
    if convention == "paper":
        from .surfels import surfel_surface_dice

        return surfel_surface_dice(prediction[..., None], truth[..., None], tolerance)
    if convention != "ours":
        raise ValueError(f"unknown NSD convention '{convention}'")
    return normalized_surface_dice(prediction, truth, tolerance)
