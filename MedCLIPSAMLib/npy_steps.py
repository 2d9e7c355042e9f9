"""Reading a large ``.npz`` in bounded steps (numpy + stdlib only): no step touches more than ``step_bytes``.

Why: Slicer decodes a received result on its GUI thread, one step per timer tick. Reading a whole
78 MB member at once took 0.6 s in one tick when fresh memory was slow to come (measured with numpy's
huge-page advice on a long-running process), so arrays are allocated empty and filled a slab per step,
and the received bytes are read in place instead of being copied into a ``BytesIO`` first.
"""
from __future__ import annotations

import io
import math
import zipfile
from typing import Generator

import numpy as np

STEP_BYTES = 8_000_000
"""Bytes written per step: 5-20 ms of copying or unpacking on a laptop core, up to ~0.1 s when fresh memory is slow."""


class BufferReader(io.RawIOBase):
    """A seekable read-only file over bytes, a bytearray or a memoryview, without copying them."""

    def __init__(self, data: bytes | bytearray | memoryview):
        super().__init__()
        self._view, self._position = memoryview(data).cast("B"), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer) -> int:
        chunk = self._view[self._position:self._position + len(buffer)]
        memoryview(buffer).cast("B")[:len(chunk)] = chunk
        self._position += len(chunk)
        return len(chunk)

    def close(self) -> None:
        self._view.release()
        super().close()


def read_array_steps(archive: zipfile.ZipFile, name: str,
                     step_bytes: int = STEP_BYTES) -> Generator[None, None, np.ndarray]:
    """The ``.npy`` member ``name`` (without ``.npy``), read ``step_bytes`` at a time, yielding between slabs.

    A member whose header claims more than it holds, or an object array, is a ``ValueError``."""
    info = archive.getinfo(f"{name}.npy")
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(member)
        if dtype.hasobject or math.prod(shape) * dtype.itemsize > info.file_size:
            raise ValueError(f"member {name} is not a plain array of the size it claims")
        array = np.empty(shape, dtype, order="F" if fortran_order else "C")
        target = memoryview(array.reshape(-1, order="A").view(np.uint8)) if array.size else memoryview(b"")
        for start in range(0, len(target), step_bytes):
            wanted = target[start:start + step_bytes]
            got = member.readinto(wanted)
            if got != len(wanted):
                raise ValueError(f"member {name} ends early")
            yield
    return array


def unpack_bits_steps(packed: np.ndarray, count: int, step_bytes: int = STEP_BYTES
                      ) -> Generator[None, None, np.ndarray]:
    """``np.unpackbits(packed, count=count).view(bool)``, ``step_bytes`` of output per step."""
    out = np.empty(count, bool)
    per_step = max(1, step_bytes // 8)
    for start in range(0, packed.size, per_step):
        first = start * 8
        last = min(count, (start + per_step) * 8)
        if first >= count:
            break
        out[first:last] = np.unpackbits(packed[start:start + per_step], count=last - first).view(bool)
        yield
    return out


def scale_steps(values: np.ndarray, divisor: float, step_bytes: int = STEP_BYTES
                ) -> Generator[None, None, np.ndarray]:
    """``values.astype(float32) / divisor``, ``step_bytes`` of output per step."""
    out = np.empty(values.shape, np.float32)
    flat_in, flat_out = values.reshape(-1), out.reshape(-1)
    per_step = max(1, step_bytes // 4)
    for start in range(0, flat_in.size, per_step):
        np.divide(flat_in[start:start + per_step], divisor, out=flat_out[start:start + per_step], dtype=np.float32)
        yield
    return out
