"""The bytes that travel between client and server: volumes up, results down (numpy + stdlib only).

A volume is an uncompressed ``.npz`` of its (z, y, x) array and spacing; its id is the sha256 of
those bytes, so a client can ask whether the server already holds a volume before sending it,
and a second prompt on the same volume uploads nothing. A result is an ``.npz`` of the label
map, the masks (bit-packed), the saliency maps (16-bit, [0, 1] -> 0..65535) and a JSON record of
the rest. Only ``allow_pickle=False`` loads are used: a malicious upload cannot run code.
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile

import numpy as np

from ..errors import InputError
from ..result import SegmentationResult

SALIENCY_LEVELS = 65535
"""Saliency is sent as uint16: at most 7.7e-6 from the engine's float map, a quarter of float64's bytes."""


def encode_volume(array: np.ndarray, spacing: tuple[float, ...] | None = None) -> bytes:
    """Upload bytes of a 2D (y, x) or 3D (z, y, x) array and its spacing in the same order."""
    array = np.ascontiguousarray(array)
    buffer = io.BytesIO()
    spacing_array = np.asarray(spacing if spacing is not None else (), dtype=np.float64)
    np.savez(buffer, array=array, spacing=spacing_array)
    return buffer.getvalue()


def volume_id(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def decode_volume(payload: bytes) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """(array, spacing) from upload bytes; anything else is an InputError naming what is wrong.

    Pixel type and dimensions are checked where every array is, in ``imageio.as_volume``."""
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
            array, spacing = archive["array"], archive["spacing"]
    except MemoryError:
        raise InputError("The upload declares an array larger than the server can hold; send the volume itself "
                         "(an .npz with 'array' and 'spacing').") from None
    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile):
        raise InputError("The upload is not a MedCLIP-SAM volume: send an uncompressed .npz of numeric arrays "
                         "'array' and 'spacing' (EngineClient does this).") from None
    if spacing.size == 0:
        return array, None
    if (spacing.dtype.kind not in "iuf" or spacing.shape != (array.ndim,) or not np.all(np.isfinite(spacing))
            or np.any(spacing <= 0)):
        raise InputError(f"The uploaded spacing {spacing.tolist()} does not fit an array of shape {array.shape}; "
                         "give one positive spacing per axis.")
    return array, tuple(float(s) for s in spacing)


def encode_result(result: SegmentationResult, include_saliency: bool = True) -> bytes:
    """Result bytes; without saliency the client gets empty saliency maps (smaller, when no overlay is shown)."""
    names = list(result.masks)
    arrays: dict[str, np.ndarray] = {"labels": np.asarray(result.labels)}
    for index, name in enumerate(names):
        mask = np.asarray(result.masks[name], dtype=bool)
        arrays[f"mask{index}"] = np.packbits(mask.ravel())
        if include_saliency:
            values = np.clip(np.asarray(result.saliency[name], dtype=np.float32), 0.0, 1.0)
            arrays[f"saliency{index}"] = np.round(values * SALIENCY_LEVELS).astype(np.uint16)
    meta = {
        "names": names, "shape": list(np.shape(result.labels)), "axis": int(result.axis),
        "boxes": {name: {str(z): [[int(v) for v in box] for box in boxes] for z, boxes in result.boxes[name].items()}
                  for name in names},
        "scores": {name: float(result.scores[name]) for name in names},
        "messages": list(result.messages), "timings": {k: float(v) for k, v in result.timings.items()},
        "saliency_slices": int(result.saliency_slices), "saliency": include_saliency,
        "faithfulness": faithfulness_record(result),
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def faithfulness_record(result: SegmentationResult) -> dict[str, float | None]:
    """Per prompt: the faithfulness score as JSON (None when not checked)."""
    return {name: None if result.faithfulness.get(name) is None else round(float(result.faithfulness[name]), 6)
            for name in result.names}


def decode_result(payload: bytes) -> SegmentationResult:
    with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
        meta = json.loads(archive["meta"].tobytes().decode())
        shape = tuple(meta["shape"])
        size = int(np.prod(shape))
        masks, saliency = {}, {}
        for index, name in enumerate(meta["names"]):
            masks[name] = np.unpackbits(archive[f"mask{index}"], count=size).reshape(shape).astype(bool)
            if meta["saliency"]:
                saliency[name] = archive[f"saliency{index}"].astype(np.float32) / SALIENCY_LEVELS
        labels = archive["labels"]
    boxes = {name: {int(z): [tuple(b) for b in found] for z, found in per_slice.items()}
             for name, per_slice in meta["boxes"].items()}
    return SegmentationResult(labels=labels, masks=masks, saliency=saliency, boxes=boxes, scores=meta["scores"],
                      axis=meta["axis"], messages=meta["messages"], timings=meta["timings"],
                      saliency_slices=meta["saliency_slices"],
                      faithfulness=meta.get("faithfulness", {}))  # absent from a server older than the check
