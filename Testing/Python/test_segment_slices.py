"""Slices of a segment read and written in place (slicer-core MRML): the same as exporting and writing it whole."""
import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from test_mrml import scene, segmentation_converters, volume_node  # noqa: E402,F401  (shared fixtures)
from MedCLIPSAMLib.slicer.mrml import apply_result, segment_to_array  # noqa: E402
from MedCLIPSAMLib.slicer.segment_slices import _runs, read_slices, write_slices  # noqa: E402

SHAPE = (6, 40, 56)


@pytest.fixture
def two_segments(scene, volume_node):
    """'a' and 'b' on one shared layer (as an import makes them), each a blob on a few slices."""
    rng = np.random.default_rng(5)
    a = np.zeros(SHAPE, np.uint8)
    a[1:4, 8:20, 10:30] = rng.random((3, 12, 20)) > 0.3
    b = np.zeros(SHAPE, np.uint8)
    b[2:5, 25:35, 30:50] = 1
    record = apply_result(scene, volume_node, {"a": a, "b": b})
    node = scene.GetNodeByID(record.segmentation_node_id)
    return node, record.segment_ids[0], record.segment_ids[1]


def test_runs_of_neighbouring_slices():
    assert _runs([7, 1, 3, 2]) == [(1, 3), (7, 7)] and _runs([]) == []


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_read_slices_equals_the_export(volume_node, two_segments, axis):
    node, a, _b = two_segments
    whole = np.moveaxis(segment_to_array(node, a, volume_node) > 0, axis, 0)
    indices = range(whole.shape[0])
    read = read_slices(node, a, volume_node, axis, indices)
    for z in indices:
        np.testing.assert_array_equal(read[z], whole[z], err_msg=f"axis {axis} slice {z}")


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_written_slices_change_that_segment_there_and_nothing_else(volume_node, two_segments, axis):
    node, a, b = two_segments
    before_a, before_b = (segment_to_array(node, s, volume_node) for s in (a, b))
    moved = np.moveaxis(before_a, axis, 0)
    rng = np.random.default_rng(axis)
    picked = [1, 2, 4] if moved.shape[0] > 4 else [1]  # two runs: (1, 2) and (4, 4)
    new = {z: rng.random(moved.shape[1:]) > 0.6 for z in picked}
    new[picked[0]][:] = False  # one slice emptied
    write_slices(node, a, volume_node, axis, new)
    after_a = np.moveaxis(segment_to_array(node, a, volume_node), axis, 0)
    expected = moved.copy()
    for z, mask in new.items():
        expected[z] = mask
    np.testing.assert_array_equal(after_a, expected)
    np.testing.assert_array_equal(segment_to_array(node, b, volume_node), before_b)  # overlapped, not overwritten
    read = read_slices(node, a, volume_node, axis, picked)
    for z in picked:
        np.testing.assert_array_equal(read[z], new[z])


def test_an_empty_segment_takes_its_first_slices(scene, volume_node, two_segments):
    node, _a, _b = two_segments
    empty = node.GetSegmentation().AddEmptySegment("", "empty")
    mask = np.zeros(SHAPE[1:], bool)
    mask[10:15, 20:40] = True
    write_slices(node, empty, volume_node, 0, {3: mask})
    whole = segment_to_array(node, empty, volume_node) > 0
    assert whole.sum() == mask.sum() and np.array_equal(whole[3], mask)


def test_the_whole_segment_from_its_layer_equals_the_export(scene, volume_node, two_segments):
    from MedCLIPSAMLib.slicer.segment_slices import segment_array

    node, a, b = two_segments
    for segment_id in (a, b):
        np.testing.assert_array_equal(segment_array(node, segment_id, volume_node),
                                      segment_to_array(node, segment_id, volume_node) > 0)
    empty = node.GetSegmentation().AddEmptySegment("", "empty")
    assert segment_array(node, empty, volume_node).shape == SHAPE and not segment_array(node, empty, volume_node).any()


def test_slices_that_equal_the_segment_leave_it_untouched(volume_node, two_segments):
    from MedCLIPSAMLib.slicer.mrml import labelmap_stamp

    node, a, _b = two_segments
    same = read_slices(node, a, volume_node, 0, [1, 2])
    stamp = labelmap_stamp(node.GetSegmentation(), a)
    write_slices(node, a, volume_node, 0, same)
    assert labelmap_stamp(node.GetSegmentation(), a) == stamp  # no merge ran
