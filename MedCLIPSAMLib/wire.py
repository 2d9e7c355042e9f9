"""The bytes that travel between client and server: volumes up, results down (numpy + stdlib only).

A volume is an uncompressed ``.npz`` of its (z, y, x) array and spacing; its id is the sha256 of
those bytes, so a client can ask whether the server already holds a volume before sending it,
and a second prompt on the same volume uploads nothing. A result is an ``.npz`` of the label
map, the masks (bit-packed), the saliency maps (16-bit, [0, 1] -> 0..65535) and a JSON record of
the rest. Only ``allow_pickle=False`` loads are used: a malicious upload cannot run code, and an
upload is checked before anything is decoded: stored (uncompressed) members only, whose sizes and
array headers fit the bytes sent and the server's limit, so a small archive cannot expand in memory.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from typing import BinaryIO

import numpy as np

from .errors import InputError, MedCLIPSAMError
from .result import SegmentationResult
from . import npy_steps

READY_LINE = "MedCLIP-SAM engine listening on"
"""``medclipsam serve`` prints this and its URL once it accepts connections; a parent process reads it."""
TOKEN_ENV = "MEDCLIPSAM_TOKEN"
"""Environment variable holding the server's bearer token (how a parent process hands it to the child)."""
MEMBERS = ("array.npy", "spacing.npy")
SPACING_RANGE = (1e-6, 1e6)
"""Voxel sizes (mm) an upload may give: nanometres to a kilometre; outside, the geometry maths degenerates."""
NOT_A_VOLUME = ("The upload is not a MedCLIP-SAM volume: send an uncompressed .npz of numeric arrays 'array' and "
                "'spacing' (EngineClient does this).")


class TooLarge(InputError):
    """Refused for its size; the server answers 413."""

    status = 413


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


def encode_volume_steps(array: np.ndarray, spacing: tuple[float, ...] | None = None, chunk_bytes: int = 16_000_000):
    """``encode_volume`` a chunk at a time: a generator that yields after each chunk written or hashed and
    returns (payload, sha256 id), byte for byte what ``encode_volume`` gives (Slicer packs a CT over
    several timer ticks instead of freezing for one long one)."""
    array = np.ascontiguousarray(array)
    spacing_array = np.asarray(spacing if spacing is not None else (), dtype=np.float64)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open("array.npy", "w", force_zip64=True) as member:  # the layout np.savez writes
            np.lib.format.write_array_header_1_0(member, np.lib.format.header_data_from_array_1_0(array))
            data = memoryview(array.reshape(-1).view(np.uint8)) if array.size else memoryview(b"")
            for start in range(0, len(data), chunk_bytes):
                member.write(data[start:start + chunk_bytes])
                yield
        with archive.open("spacing.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array(member, spacing_array, allow_pickle=False)
    payload = buffer.getvalue()
    yield
    digest = hashlib.sha256()
    view = memoryview(payload)
    for start in range(0, len(payload), chunk_bytes):
        digest.update(view[start:start + chunk_bytes])
        yield
    return payload, digest.hexdigest()


def decode_volume(payload: bytes | bytearray | BinaryIO, limit: int | None = None
                  ) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """(array, spacing) from upload bytes (or a file of them); anything else is an InputError naming what is
    wrong, and arrays that would expand past ``limit`` bytes are TooLarge, refused before they are decoded.

    Pixel type and dimensions are checked where every array is, in ``imageio.as_volume``."""
    source = io.BytesIO(payload) if isinstance(payload, (bytes, bytearray, memoryview)) else payload
    try:
        with zipfile.ZipFile(source) as archive:
            members = {info.filename: info for info in archive.infolist()}
            if sorted(members) != sorted(MEMBERS):
                raise InputError(NOT_A_VOLUME)
            expanded = sum(info.file_size for info in members.values())
            if limit is not None and expanded > limit:
                raise TooLarge(f"The upload expands to {expanded / 1e6:.0f} MB, over this server's limit of "
                               f"{limit / 1e6:.0f} MB; crop the volume or start the server with larger "
                               "--max-upload-mb and --max-stored-mb.")
            if any(info.compress_type != zipfile.ZIP_STORED for info in members.values()):
                raise InputError("The upload's .npz is compressed; send it uncompressed (numpy.savez, not "
                                 "savez_compressed) and compress the transfer with Content-Encoding: deflate parts.")
            array, spacing = (_read_member(archive, members[name]) for name in MEMBERS)
    except MedCLIPSAMError:
        raise
    except MemoryError:
        raise InputError("The upload declares an array larger than the server can hold; send the volume itself "
                         "(an .npz with 'array' and 'spacing').") from None
    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile, RuntimeError, TypeError, OverflowError,
            NotImplementedError, SyntaxError):  # a damaged archive or npy header, whatever part of it
        raise InputError(NOT_A_VOLUME) from None
    if spacing.size == 0:
        return array, None
    if (spacing.dtype.kind not in "iuf" or spacing.shape != (array.ndim,) or not np.all(np.isfinite(spacing))
            or np.any(spacing <= 0)):
        raise InputError(f"The uploaded spacing {spacing.tolist()} does not fit an array of shape {array.shape}; "
                         "give one positive spacing per axis.")
    low, high = SPACING_RANGE
    if np.any(spacing < low) or np.any(spacing > high):
        raise InputError(f"The uploaded spacing {spacing.tolist()} is outside {low:g}-{high:g} mm per voxel; "
                         "give the volume's real voxel size in mm.")
    return array, tuple(float(s) for s in spacing)


SALIENCY_BITS = {16: (np.uint16, SALIENCY_LEVELS), 8: (np.uint8, 255)}
"""Saliency precision a client may ask for: 8 bits (1/255 steps) is what an overlay shows, half of 16's bytes."""


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One .npy member, its header checked against the member's size before the array is allocated."""
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(member)
        if dtype.hasobject or math.prod(shape) * dtype.itemsize > info.file_size:
            raise InputError(NOT_A_VOLUME)
    with archive.open(info) as member:
        return np.lib.format.read_array(member, allow_pickle=False)


def encode_result(result: SegmentationResult, include_saliency: bool = True, labels: bool = True,
                  saliency_bits: int = 16) -> bytes:
    """Result bytes; without saliency the client gets empty saliency maps (smaller, when no overlay is shown);
    without ``labels`` no label map (Slicer builds segments from the masks and never uses it)."""
    dtype, levels = SALIENCY_BITS[saliency_bits]
    names = list(result.masks)
    arrays: dict[str, np.ndarray] = {"labels": np.asarray(result.labels)} if labels else {}
    for index, name in enumerate(names):
        mask = np.asarray(result.masks[name], dtype=bool)
        arrays[f"mask{index}"] = np.packbits(mask.ravel())
        if include_saliency:
            values = np.clip(np.asarray(result.saliency[name], dtype=np.float32), 0.0, 1.0)
            arrays[f"saliency{index}"] = np.round(values * levels).astype(dtype)
    meta = {
        "names": names, "shape": list(np.shape(result.labels)), "axis": int(result.axis),
        "boxes": {name: {str(z): [[int(v) for v in box] for box in boxes] for z, boxes in result.boxes[name].items()}
                  for name in names},
        "scores": {name: float(result.scores[name]) for name in names},
        "messages": list(result.messages), "timings": {k: float(v) for k, v in result.timings.items()},
        "saliency_slices": int(result.saliency_slices), "saliency": include_saliency, "labels": labels,
        "saliency_bits": saliency_bits,
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


def decode_result(payload: bytes | bytearray, raw_saliency: bool = False, rebuild_labels: bool = True) -> SegmentationResult:
    """The result; ``raw_saliency``: 8-bit saliency stays uint8 0..255 (no float copy: what an overlay needs).

    A result sent without its label map gets one rebuilt from the masks (the earlier prompt wins), or,
    with ``rebuild_labels=False`` (Slicer, which uses the masks only), an empty (0, ...) array."""
    steps = decode_result_steps(payload, raw_saliency, rebuild_labels)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def decode_result_steps(payload: bytes | bytearray, raw_saliency: bool = False, rebuild_labels: bool = True,
                        step_bytes: int = npy_steps.STEP_BYTES):
    """``decode_result`` in bounded steps: a generator that yields after every ``step_bytes`` of arrays written
    and returns the result (Slicer decodes on its GUI thread, one step per timer tick). ``payload`` is read in
    place, not copied."""
    with zipfile.ZipFile(npy_steps.BufferReader(payload)) as archive:
        meta = json.loads((yield from npy_steps.read_array_steps(archive, "meta", step_bytes)).tobytes().decode())
        shape = tuple(meta["shape"])
        size = int(np.prod(shape))
        levels = SALIENCY_BITS[meta.get("saliency_bits", 16)][1]
        masks, saliency = {}, {}
        for index, name in enumerate(meta["names"]):
            packed = yield from npy_steps.read_array_steps(archive, f"mask{index}", step_bytes)
            masks[name] = (yield from npy_steps.unpack_bits_steps(packed, size, step_bytes)).reshape(shape)
            if meta["saliency"]:
                values = yield from npy_steps.read_array_steps(archive, f"saliency{index}", step_bytes)
                saliency[name] = values if raw_saliency and values.dtype == np.uint8 else (
                    yield from npy_steps.scale_steps(values, levels, step_bytes))
        labels = (yield from npy_steps.read_array_steps(archive, "labels", step_bytes)) if meta.get("labels", True) \
            else None
    if labels is None and not rebuild_labels:
        labels = np.zeros((0,) * len(shape), np.uint8)
    elif labels is None:
        labels = np.zeros(shape, np.uint8 if len(masks) < 256 else np.uint16)
        for index, mask in reversed(list(enumerate(masks.values()))):
            labels[mask] = index + 1
    boxes = {name: {int(z): [tuple(b) for b in found] for z, found in per_slice.items()}
             for name, per_slice in meta["boxes"].items()}
    return SegmentationResult(labels=labels, masks=masks, saliency=saliency, boxes=boxes, scores=meta["scores"],
                              axis=meta["axis"], messages=meta["messages"], timings=meta["timings"],
                              saliency_slices=meta["saliency_slices"],
                              faithfulness=meta.get("faithfulness", {}))  # absent from a server older than the check
