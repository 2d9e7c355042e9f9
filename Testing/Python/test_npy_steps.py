"""Results decoded in bounded steps (what Slicer's GUI thread runs, one step per tick) equal a plain decode."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from MedCLIPSAMLib.result import SegmentationResult
from MedCLIPSAMLib import npy_steps, wire


def drain(steps):
    """Run a step generator to its end; returns (value, number of steps)."""
    count = 0
    while True:
        try:
            next(steps)
            count += 1
        except StopIteration as done:
            return done.value, count


def archive_of(**arrays) -> zipfile.ZipFile:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return zipfile.ZipFile(npy_steps.BufferReader(bytearray(buffer.getvalue())))


@pytest.mark.parametrize("array", [
    np.arange(1000, dtype=np.int16).reshape(10, 100),
    np.asfortranarray(np.arange(600, dtype=np.float32).reshape(20, 30)),
    np.zeros((0, 5), np.uint8),
    np.array(3.5),
])
def test_an_array_read_in_slabs_equals_numpys_read(array):
    value, steps = drain(npy_steps.read_array_steps(archive_of(a=array), "a", step_bytes=64))
    assert value.dtype == array.dtype and value.shape == array.shape
    np.testing.assert_array_equal(value, array)
    assert value.flags.f_contiguous == array.flags.f_contiguous
    assert steps == -(-array.nbytes // 64)  # one step per slab of at most 64 bytes


def test_a_member_shorter_than_its_header_claims_is_refused():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<i2", "fortran_order": False, "shape": (1000,)})
        archive.writestr("a.npy", header.getvalue() + b"\0" * 100)
    with zipfile.ZipFile(npy_steps.BufferReader(buffer.getvalue())) as archive, \
            pytest.raises(ValueError, match="not a plain array of the size it claims"):
        drain(npy_steps.read_array_steps(archive, "a"))


@pytest.mark.parametrize("count", [1, 7, 8, 9, 1001])
def test_bits_unpacked_in_slabs_equal_unpackbits(count):
    bits = np.random.default_rng(count).random(count) > 0.5
    packed = np.packbits(bits)
    value, steps = drain(npy_steps.unpack_bits_steps(packed, count, step_bytes=16))
    assert value.dtype == bool
    np.testing.assert_array_equal(value, bits)
    assert steps == -(-packed.size // 2)  # 16 bytes of output = 2 packed bytes per step


def test_scaled_in_slabs_equals_a_whole_division():
    values = np.random.default_rng(0).integers(0, 65535, (7, 13), dtype=np.uint16)
    value, steps = drain(npy_steps.scale_steps(values, 65535, step_bytes=40))
    assert value.dtype == np.float32 and steps == -(-values.size // 10)
    np.testing.assert_array_equal(value, values.astype(np.float32) / 65535)


def test_the_reader_reads_in_place_and_seeks_like_a_file():
    data = bytearray(b"0123456789")
    reader = npy_steps.BufferReader(data)
    assert reader.read(3) == b"012" and reader.seek(-2, io.SEEK_END) == 8 and reader.read() == b"89"
    assert reader.seek(2) == 2 and reader.read(2) == b"23" and reader.tell() == 4


def a_result(shape=(3, 17, 19)) -> SegmentationResult:
    rng = np.random.default_rng(1)
    masks = {"a": rng.random(shape) > 0.7, "b": rng.random(shape) > 0.9}
    saliency = {name: rng.random(shape).astype(np.float32) for name in masks}
    labels = np.zeros(shape, np.uint8)
    labels[masks["b"]] = 2
    labels[masks["a"]] = 1
    return SegmentationResult(labels=labels, masks=masks, saliency=saliency, boxes={"a": {1: [(0, 0, 4, 4)]}, "b": {}},
                              scores={"a": 0.5, "b": 0.25}, axis=0, messages=["m"], timings={"sam": 1.0},
                              saliency_slices=3)


@pytest.mark.parametrize("labels,bits", [(True, 16), (False, 8)])
def test_a_result_decoded_in_small_steps_equals_one_decoded_whole(labels, bits):
    payload = bytearray(wire.encode_result(a_result(), labels=labels, saliency_bits=bits))
    whole = wire.decode_result(bytes(payload), raw_saliency=True)
    stepped, steps = drain(wire.decode_result_steps(payload, raw_saliency=True, step_bytes=256))
    assert steps >= 19  # 3x17x19 = 969 voxels per array: each mask and map takes 4 steps of 256 bytes
    for name in ("a", "b"):
        np.testing.assert_array_equal(stepped.masks[name], whole.masks[name])
        np.testing.assert_array_equal(stepped.saliency[name], whole.saliency[name])
        assert stepped.masks[name].dtype == bool
    np.testing.assert_array_equal(stepped.labels, whole.labels)
    np.testing.assert_array_equal(whole.labels, a_result().labels)  # sent or rebuilt, the earlier prompt wins
    assert stepped.boxes == {"a": {1: [(0, 0, 4, 4)]}, "b": {}} and stepped.scores == {"a": 0.5, "b": 0.25}
    if bits == 8:
        assert stepped.saliency["a"].dtype == np.uint8
    else:
        assert np.abs(stepped.saliency["a"] - a_result().saliency["a"]).max() <= 1 / 65535
