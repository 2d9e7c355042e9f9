"""The paper's NSD (surfel areas, as the authors' evaluation computes it) against hand-worked surfel areas
and reference values of the original surface-distance code."""
from __future__ import annotations

import math

import numpy as np
import pytest

from MedCLIPSAMLib.metrics import nsd_2d
from MedCLIPSAMLib.surfels import CORNERS, cube_codes, surfel_areas, surfel_surface_dice


def code_of(*corners: tuple[int, int, int]) -> int:
    return sum(1 << CORNERS.index(corner) for corner in corners)


def test_surfel_areas_are_the_marching_cubes_areas_worked_by_hand():
    areas = surfel_areas((1.0, 1.0, 1.0))
    assert areas[0] == areas[255] == 0.0
    assert areas[code_of((0, 0, 0))] == pytest.approx(math.sqrt(3) / 8)  # a corner cut off at the edge midpoints
    assert areas[code_of((0, 0, 0), (0, 0, 1))] == pytest.approx(math.sqrt(2) / 2)  # one edge: a 1 x 0.707 strip
    assert areas[code_of((0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1))] == pytest.approx(1.0)  # a face: a unit square
    diagonal = code_of((0, 0, 0), (0, 1, 1))  # ambiguous face: two corners cut off apart
    assert areas[diagonal] == pytest.approx(2 * math.sqrt(3) / 8)
    assert np.allclose(areas, areas[::-1])  # a cube and its complement have one surface
    stretched = surfel_areas((2.0, 3.0, 5.0))
    assert stretched[code_of((0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1))] == pytest.approx(15.0)  # face across axis 0


def test_cube_codes_cover_every_cube_touching_the_mask():
    mask = np.zeros((1, 2, 1), bool)
    mask[0, 0, 0] = True
    codes = cube_codes(mask)
    assert codes.shape == (2, 3, 2)
    assert np.count_nonzero(codes) == 8  # the voxel is a corner of 8 cubes
    assert sorted(codes[codes > 0].tolist()) == sorted(1 << bit for bit in range(8))


def ascii_mask(rows: str) -> np.ndarray:
    return np.array([[char == "#" for char in row] for row in rows.split()], bool)


# Pixels touching only at corners (ambiguous cube faces), a hole and a one-pixel line.
PATTERN_P = ascii_mask("""
................
.##...#.........
.##..#.#....##..
...#..#.....##..
.####...........
.#..#..##.......
.####..##.......
................
""")
PATTERN_T = ascii_mask("""
................
.###..#.........
.##..###........
..##..#.........
.####.......#.#.
.#..#...#....#..
.####..##...#.#.
......#.........
""")


def wavy(shape: tuple[int, ...], phase: float, level: float) -> np.ndarray:
    """A deterministic irregular mask (several pieces, holes, diagonal contacts) from a sum of waves."""
    grids = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    field = sum(np.sin(0.41 * (axis + 1) * grid + phase * (axis + 1)) for axis, grid in enumerate(grids))
    field += np.cos(0.173 * sum(grids) + phase)
    return field > level


def disk(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


# Reference values from DeepMind's surface-distance (PyPI surface-distance 0.1):
# compute_surface_dice_at_tolerance(compute_surface_distances(truth[..., None], prediction[..., None],
# (1, 1, 1)), 2) for the 2D pairs, and the 3D pair at its own spacing; printed by
# `python Testing/measure/surfel_nsd.py --reference` (which needs `pip install surface-distance`).
REFERENCE_2D = {
    "pattern": (lambda: (PATTERN_P, PATTERN_T), 0.9847028157873678),
    "wavy": (lambda: (wavy((37, 52), 0.3, 0.8), wavy((37, 52), 1.4, 0.4)), 0.8697216262048804),
    "disk grown 5 px": (lambda: (disk((64, 64), (32, 32), 17), disk((64, 64), (32, 32), 12)), 0.7929000318018895),
    "disks apart": (lambda: (disk((40, 70), (20, 18), 9), disk((40, 70), (21, 27), 10)), 0.5871983321440933),
}
REFERENCE_3D = (lambda: (wavy((14, 17, 19), 0.2, 1.0), wavy((14, 17, 19), 0.7, 0.9)), (1.0, 0.8, 2.5), 0.8836215006308151)


@pytest.mark.parametrize("name", sorted(REFERENCE_2D))
def test_paper_nsd_equals_the_original_surfel_code_on_2d_pairs(name):
    make, expected = REFERENCE_2D[name]
    prediction, truth = make()
    assert nsd_2d(prediction, truth, 2.0, "paper") == pytest.approx(expected, abs=1e-6)


def test_surfel_nsd_equals_the_original_code_on_a_3d_pair_with_spacing():
    make, spacing, expected = REFERENCE_3D
    prediction, truth = make()
    assert surfel_surface_dice(prediction, truth, 2.0, spacing) == pytest.approx(expected, abs=1e-6)


def test_surfel_nsd_empty_masks_and_shapes():
    mask = disk((20, 20), (10, 10), 5)[..., None]
    empty = np.zeros_like(mask)
    assert surfel_surface_dice(empty, empty, 2.0) == 1.0 and surfel_surface_dice(mask, empty, 2.0) == 0.0
    assert surfel_surface_dice(mask, mask, 2.0) == 1.0
    with pytest.raises(ValueError, match="two 3D masks of one shape"):
        surfel_surface_dice(mask[..., 0], mask[..., 0], 2.0)


def test_random_2d_pairs_agree_with_surface_distance_when_installed():
    """Runs where the original code is installed (``pip install surface-distance``)."""
    reference = pytest.importorskip("surface_distance")
    from scipy import ndimage

    rng = np.random.default_rng(7)
    for _ in range(40):
        shape = tuple(int(n) for n in rng.integers(8, 70, 2))
        smooth = rng.uniform(0.5, 4.0)
        masks = [ndimage.gaussian_filter(rng.random(shape), smooth) for _ in range(2)]
        prediction, truth = (m > np.quantile(m, rng.uniform(0.4, 0.9)) for m in masks)
        distances = reference.compute_surface_distances(truth[..., None], prediction[..., None], (1, 1, 1))
        expected = reference.compute_surface_dice_at_tolerance(distances, 2)
        assert nsd_2d(prediction, truth, 2.0, "paper") == pytest.approx(expected, abs=1e-6)
