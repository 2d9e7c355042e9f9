"""Key-slice choice for the saliency stride: keys, the target's ends, interpolation."""
import numpy as np

from MedCLIPSAMLib.keyslices import crossed_keys, key_slices, target_ends


def blob_maps(count: int, target: slice, size: int = 20) -> np.ndarray:
    maps = np.zeros((count, size, size), np.float32)
    maps[target, 6:14, 6:14] = 1.0
    return maps


def test_keys_include_the_last_active_slice():
    assert key_slices(np.arange(10), 4).tolist() == [0, 4, 8, 9]
    assert key_slices(np.arange(9), 4).tolist() == [0, 4, 8]
    assert key_slices(np.array([2, 3, 7]), 1).tolist() == [2, 3, 7]
    assert key_slices(np.zeros(0, int), 3).size == 0


def test_ends_are_the_gaps_next_to_where_the_target_appears_and_disappears():
    active = np.arange(21)
    keys = key_slices(active, 5)  # 0, 5, 10, 15, 20
    maps = [blob_maps(21, slice(7, 13))]  # crosses key 10 only
    assert crossed_keys(maps, keys, 1, 0.0).tolist() == [False, False, True, False, False]
    assert target_ends(maps, keys, active, 1, 0.0).tolist() == [6, 7, 8, 9, 11, 12, 13, 14]
    # a target crossing no key is invisible to the stride: nothing more is computed
    assert target_ends([blob_maps(21, slice(1, 4))], keys, active, 1, 0.0).size == 0


def test_ends_follow_each_prompt_and_skip_inactive_slices():
    active = np.array([0, 1, 2, 4, 5, 6, 7, 8])  # slice 3 is blank
    keys = key_slices(active, 3)  # 0, 4, 7, 8
    first, second = blob_maps(9, slice(3, 6)), blob_maps(9, slice(8, 9))
    assert target_ends([first], keys, active, 1, 0.0).tolist() == [1, 2, 5, 6]
    assert target_ends([first, second], keys, active, 1, 0.0).tolist() == [1, 2, 5, 6]
    assert target_ends([second], keys, active, 1, 0.0).tolist() == []  # 7 and 8 are neighbours


def test_only_the_k_kept_components_count():
    active = np.arange(11)
    keys = key_slices(active, 5)  # 0, 5, 10
    maps = np.zeros((11, 30, 30), np.float32)
    maps[4:7, 2:8, 2:8] = 1.0  # strong, crosses key 5
    maps[9:11, 20:26, 20:26] = 0.6  # weaker, crosses key 10
    assert crossed_keys([maps], keys, 1, 0.0).tolist() == [False, True, False]
    assert crossed_keys([maps], keys, 2, 0.0).tolist() == [False, True, True]
    assert target_ends([maps], keys, active, 2, 0.0).tolist() == [1, 2, 3, 4]
