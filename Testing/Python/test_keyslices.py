"""Key-slice choice for the saliency stride: keys, and bisection to the target's ends."""
import numpy as np

from MedCLIPSAMLib.keyslices import crossed_keys, end_midpoints, key_slices
from MedCLIPSAMLib.prompts import ComponentRule


def blob_maps(count: int, target: slice, size: int = 20) -> np.ndarray:
    maps = np.zeros((count, size, size), np.float32)
    maps[target, 6:14, 6:14] = 1.0
    return maps


def bisection_rounds(maps: list[np.ndarray], keys: np.ndarray, active: np.ndarray, k: int = 1) -> list[list[int]]:
    """The slices each round asks for, as the pipeline's loop computes them (the maps here are complete)."""
    computed, rounds = keys, []
    while (middles := end_midpoints(maps, computed, active, ComponentRule(k))).size:
        rounds.append(middles.tolist())
        computed = np.union1d(computed, middles)
    return rounds


def test_keys_include_the_last_active_slice():
    assert key_slices(np.arange(10), 4).tolist() == [0, 4, 8, 9]
    assert key_slices(np.arange(9), 4).tolist() == [0, 4, 8]
    assert key_slices(np.array([2, 3, 7]), 1).tolist() == [2, 3, 7]
    assert key_slices(np.zeros(0, int), 3).size == 0


def test_bisection_finds_where_the_target_appears_and_disappears():
    active = np.arange(21)
    keys = key_slices(active, 5)  # 0, 5, 10, 15, 20
    maps = [blob_maps(21, slice(7, 13))]  # slices 7-12: crosses key 10 only
    assert crossed_keys(maps, keys, ComponentRule(1)).tolist() == [False, False, True, False, False]
    # 6 | 7 and 12 | 13 are found with 5 extra slices; computing both gaps whole would take 8
    assert bisection_rounds(maps, keys, active) == [[8, 13], [7, 12], [6]]
    # a target crossing no key is invisible to the stride: nothing more is computed
    assert bisection_rounds([blob_maps(21, slice(1, 4))], keys, active) == []


def test_bisection_follows_each_prompt_and_skips_inactive_slices():
    active = np.array([0, 1, 2, 4, 5, 6, 7, 8])  # slice 3 is blank
    keys = key_slices(active, 3)  # 0, 4, 7, 8
    first, second = blob_maps(9, slice(3, 6)), blob_maps(9, slice(8, 9))
    assert bisection_rounds([first], keys, active) == [[2, 6], [5]]  # 2 | 4 meet across blank 3
    assert bisection_rounds([first, second], keys, active) == [[2, 6], [5]]
    assert bisection_rounds([second], keys, active) == []  # 7 and 8 are neighbours


def test_only_the_k_kept_components_count():
    active = np.arange(11)
    keys = key_slices(active, 5)  # 0, 5, 10
    maps = np.zeros((11, 30, 30), np.float32)
    maps[4:7, 2:8, 2:8] = 1.0  # strong, crosses key 5
    maps[9:11, 20:26, 20:26] = 0.6  # weaker, crosses key 10
    assert crossed_keys([maps], keys, ComponentRule(1)).tolist() == [False, True, False]
    assert crossed_keys([maps], keys, ComponentRule(2)).tolist() == [False, True, True]
    assert bisection_rounds([maps], keys, active, k=2) == [[3], [4]]
    assert bisection_rounds([maps], keys, active, k=1) == [[3, 8], [4, 7], [6]]
