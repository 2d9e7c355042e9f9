"""What an interaction changed, and its JSON form between server and client (numpy + stdlib only).

A changed slice travels as its bit-packed mask in base64: a 512 x 512 slice is 32 KiB raw, ~44 KiB as
text, and an interaction on one slice sends one.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Answer:
    """What one interaction changed: slice index (along ``axis``) -> that slice's new mask (rows, cols)."""

    axis: int
    slices: dict[int, np.ndarray]
    message: str = ""
    can_undo: bool = False
    seconds: float | None = None
    """Engine-side time of the interaction (the server adds it to the answer it sends)."""
    path: str = ""
    """How a click was answered (interactive/honour.py): "sam" (SAM's answer honoured every click of the slice),
    "candidates" or "region" (a fallback made it); "" for other interactions."""


def encode_answer(answer: Answer) -> dict[str, Any]:
    shapes = {tuple(mask.shape) for mask in answer.slices.values()}
    return {"axis": int(answer.axis), "message": answer.message, "can_undo": bool(answer.can_undo),
            "path": answer.path, "slice_shape": list(shapes.pop()) if shapes else None,
            "slices": {str(index): encode_mask(mask) for index, mask in sorted(answer.slices.items())}}


def decode_answer(body: dict[str, Any]) -> Answer:
    shape = tuple(body.get("slice_shape") or (0, 0))
    count = int(np.prod(shape))
    slices = {int(index): np.unpackbits(np.frombuffer(base64.b64decode(bits), np.uint8), count=count)
              .reshape(shape).astype(bool) for index, bits in body.get("slices", {}).items()}
    return Answer(int(body["axis"]), slices, str(body.get("message", "")), bool(body.get("can_undo")),
                  body.get("seconds"), str(body.get("path") or ""))


def encode_mask(mask: np.ndarray) -> str:
    """A whole mask as base64 of its packed bits (the shape travels separately)."""
    return base64.b64encode(np.packbits(np.asarray(mask, bool).ravel())).decode()


def decode_mask(text: Any, shape: tuple[int, ...]) -> np.ndarray:
    """The mask ``encode_mask`` sent, checked against the volume's shape (an InputError otherwise)."""
    from ..errors import InputError

    count = int(np.prod(shape))
    try:
        packed = np.frombuffer(base64.b64decode(str(text), validate=True), np.uint8)
    except ValueError:
        raise InputError("'mask' is not base64 text; send the mask's packed bits (EngineClient does this).") from None
    if packed.size != (count + 7) // 8:
        raise InputError(f"'mask' holds {packed.size * 8} bits, the volume {count} voxels {list(shape)}; send a mask "
                         "on the volume's grid.")
    return np.unpackbits(packed, count=count).reshape(shape).astype(bool)
