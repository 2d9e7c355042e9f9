"""Saliency on key slices only (the CPU shortcut ``saliency_stride``): which slices get M2IB.

Every k-th slice is a key. Interpolating between keys is safe inside the target, where
maps change smoothly, but it blurs where the target starts and ends: a key that shows the
target next to one that does not says nothing about the slices between. So those gaps are
searched by bisection (``end_midpoints``, one round per call) until the target's first and
last slices are computed; only the rest is interpolated. Bisection needs about log2(k)
extra slices per end instead of k - 1, which is what makes a long stride affordable.
"""
from __future__ import annotations

import numpy as np

from .prompts import ComponentRule, normalize_saliency, otsu_mask, select_by_rule


def key_slices(active: np.ndarray, stride: int) -> np.ndarray:
    """Every ``stride``-th active slice, and the last one, so interpolation never extrapolates inward."""
    keys = active[::stride]
    if keys.size and keys[-1] != active[-1]:
        keys = np.append(keys, active[-1])
    return keys


def crossed_keys(maps: list[np.ndarray], keys: np.ndarray, rule: ComponentRule) -> np.ndarray:
    """Which keys (bool per key) the kept salient components of any prompt cross.

    The same rule as the full pipeline (one Otsu over the keys, components by confidence,
    K kept), applied to the stack of key slices.
    """
    crossed = np.zeros(len(keys), dtype=bool)
    for raw in maps:
        stack = normalize_saliency(raw[keys])
        for component in select_by_rule(otsu_mask(stack), stack, rule, stack.size).kept:
            crossed |= component.mask.reshape(len(keys), -1).any(axis=1)
    return crossed


def end_midpoints(maps: list[np.ndarray], computed: np.ndarray, active: np.ndarray,
                  rule: ComponentRule) -> np.ndarray:
    """One bisection round: the middle active slice of each gap between a computed slice the target
    crosses and a neighbouring computed slice it does not. Empty once every end is found."""
    if len(computed) < 2:
        return np.zeros(0, dtype=int)
    crossed = crossed_keys(maps, computed, rule)
    middles = []
    for low, high, a, b in zip(computed[:-1], computed[1:], crossed[:-1], crossed[1:]):
        between = active[(active > low) & (active < high)]
        if a != b and between.size:
            middles.append(between[between.size // 2])
    return np.array(middles, dtype=int)


def interpolate_between(maps: np.ndarray, keys: np.ndarray, wanted: np.ndarray) -> None:
    """Fill ``maps[z]`` for wanted slices that are not keys, linearly from the nearest keys (in place)."""
    for z in np.setdiff1d(wanted, keys):
        after = np.searchsorted(keys, z)
        if after == 0 or after == len(keys):
            maps[z] = maps[keys[min(after, len(keys) - 1)]]
            continue
        low, high = keys[after - 1], keys[after]
        weight = (z - low) / (high - low)
        maps[z] = (1 - weight) * maps[low] + weight * maps[high]
