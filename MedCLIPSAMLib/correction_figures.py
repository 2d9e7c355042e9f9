"""The standard figures of interactive segmentation beside a DSC curve: NoC@85 and NoC@90.

NoC@t (number of clicks) is how many interactions a case needs before its DSC first reaches t, capped at the
budget (the interactions simulated) when it never does; a set's figure is the mean over its cases. Numpy only.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

NOC_THRESHOLDS = (0.85, 0.90)


def noc(curve: Sequence[float], threshold: float) -> int:
    """Interactions until the DSC after interaction 1, 2, ... first reaches ``threshold``; ``len(curve)`` (the
    budget) when it never does."""
    for step, value in enumerate(curve, start=1):
        if value >= threshold:
            return step
    return len(curve)


def noc_key(threshold: float) -> str:
    """summary.json's name for NoC at ``threshold``: noc_85, noc_90."""
    return f"noc_{round(100 * threshold)}"


def noc_summary(curves: Sequence[Sequence[float]], thresholds: Sequence[float] = NOC_THRESHOLDS
                ) -> dict[str, float]:
    """Mean NoC over cases at each threshold, and how many cases never reached it (``noc_85_failed``)."""
    out: dict[str, float] = {}
    for threshold in thresholds:
        counts = [noc(curve, threshold) for curve in curves]
        reached = [any(value >= threshold for value in curve) for curve in curves]
        key = noc_key(threshold)
        out[key] = float(np.mean(counts)) if counts else float("nan")
        out[f"{key}_failed"] = int(len(reached) - sum(reached))
    return out
