"""DSC and NSD against hand-computed cases."""
import numpy as np
import pytest

from MedCLIPSAMLib.metrics import dice, normalized_surface_dice


def square(offset_x=0, size=(40, 40)):
    mask = np.zeros(size, bool)
    mask[10:20, 10 + offset_x:20 + offset_x] = True
    return mask


def test_squares_offset_by_one_pixel():
    assert dice(square(), square(1)) == pytest.approx(2 * 90 / 200)
    assert normalized_surface_dice(square(), square(1), 2.0) == 1.0


def test_squares_offset_by_three_pixels():
    # 36 boundary pixels each; on each surface 14 lie farther than 2 px from the other (worked by hand:
    # 8 on the far column, 4 in the middle of the near column, 1 corner each on top and bottom rows)
    assert dice(square(), square(3)) == pytest.approx(0.7)
    assert normalized_surface_dice(square(), square(3), 2.0) == pytest.approx(44 / 72)
    assert normalized_surface_dice(square(), square(3), 3.0) == 1.0


def test_circle_against_itself_and_empty_cases():
    yy, xx = np.mgrid[:64, :64]
    circle = (yy - 30) ** 2 + (xx - 33) ** 2 <= 15 ** 2
    assert dice(circle, circle) == 1.0 and normalized_surface_dice(circle, circle, 2.0) == 1.0
    empty = np.zeros_like(circle)
    assert dice(empty, empty) == 1.0 and normalized_surface_dice(empty, empty, 2.0) == 1.0
    assert dice(circle, empty) == 0.0 and normalized_surface_dice(empty, circle, 2.0) == 0.0


def test_nsd_uses_spacing_in_millimetres():
    a, b = square()[None].repeat(3, 0), square(1)[None].repeat(3, 0)
    assert normalized_surface_dice(a, b, 2.0, spacing=(1.0, 1.0, 1.0)) == 1.0
    assert normalized_surface_dice(a, b, 2.0, spacing=(1.0, 1.0, 3.0)) < 0.9  # a 1-voxel shift is 3 mm
