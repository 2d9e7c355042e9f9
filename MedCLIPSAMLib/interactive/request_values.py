"""What a client may send as interaction values, and how a refused value is shown in a one-line answer.

Numpy only (the server checks a request with these before loading anything). Whole numbers are checked as whole
numbers: JSON gives Python ints of any size, which numpy cannot test for finiteness past 2**64.
"""
from __future__ import annotations

import math

import numpy as np

MAX_CLICKS = 64
"""Clicks one request may carry, and clicks a slice's prompt keeps (the last ones): in points mode SAM's cost
and memory grow with the square of their number, and no user clicks more on one slice."""
MAX_COORDINATE = 1_000_000
"""A box corner or click further than this from the slice's origin (in pixels) is refused, not clipped."""


def pixel(value) -> int | None:
    """A coordinate as a whole pixel, or None when it is not a number within ``MAX_COORDINATE`` (whole numbers are
    checked as such: numpy cannot test an int of 2**64 or more for finiteness)."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value) if abs(int(value)) <= MAX_COORDINATE else None
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and abs(value) <= MAX_COORDINATE:
        return int(round(float(value)))
    return None


def shown(value, width: int = 60) -> str:
    """A client's value for an error line: numbers at most 6 significant digits, anything else cut to ``width``."""
    if isinstance(value, (list, tuple)):
        text = "[" + ", ".join(shown(v, 20) for v in value[:8]) + (", ...]" if len(value) > 8 else "]")
        return text if len(text) <= width else text[:width - 4] + " ...]"
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        whole = int(value)
        if abs(whole) < 10 ** 12:
            return str(whole)
        return f"{whole:.6g}" if abs(whole) < 10 ** 300 else f"<a number of {whole.bit_length()} bits>"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return f"{value!r:.{width}}"
