"""Otsu, connected components, boxes and points, in 2D (one slice) and 3D."""
import numpy as np
import pytest

from MedCLIPSAMLib.prompts import (box_of, grow_box, keep_largest_components, keep_overlapping, normalize_saliency,
                                   otsu_mask, prompts_per_slice, sample_points, select_components)


def blob(shape, center, radius, value=1.0):
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    inside = sum((g - c) ** 2 for g, c in zip(grids, center)) <= radius ** 2
    out = np.zeros(shape, dtype=np.float32)
    out[inside] = value
    return out


def run_2d(saliency2d, k=1, mode="boxes"):
    sal = normalize_saliency(saliency2d[None])
    comps = select_components(otsu_mask(sal), sal, k).kept
    return comps, prompts_per_slice(comps, sal, mode)[0]


def test_one_blob_gives_its_tight_box():
    sal = blob((60, 80), (20, 50), 8) + 0.05 * np.random.default_rng(0).random((60, 80))
    comps, prompts = run_2d(sal)
    assert len(comps) == 1
    assert prompts.boxes == [(42, 12, 58, 28)]


def test_two_blobs_ranked_by_confidence_not_area():
    # a large dim blob and a small bright one: confidence ranking keeps the bright one first
    sal = blob((100, 100), (30, 30), 20, 0.6) + blob((100, 100), (75, 75), 6, 1.0)
    comps, prompts = run_2d(sal, k=1)
    assert len(comps) == 1 and comps[0].confidence == pytest.approx(1.0)
    assert prompts.boxes == [(69, 69, 81, 81)]
    comps, prompts = run_2d(sal, k=2)
    assert len(comps) == 2 and len(prompts.boxes) == 2
    comps, prompts = run_2d(sal, k=2, mode="box_all")
    assert prompts.boxes == [(10, 10, 81, 81)]


def test_empty_and_flat_maps_give_no_prompt():
    for sal in (np.zeros((40, 50)), np.full((40, 50), 3.0)):
        comps, prompts = run_2d(sal)
        assert comps == [] and not prompts


def test_blob_on_the_border_is_clipped_to_the_image():
    sal = blob((50, 70), (0, 69), 10)
    _, prompts = run_2d(sal)
    x0, y0, x1, y1 = prompts.boxes[0]
    assert (x1, y0) == (69, 0) and x0 == 59 and y1 == 10


def test_non_square_image_keeps_x_y_order():
    sal = np.zeros((30, 120), dtype=np.float32)
    sal[5:10, 100:115] = 1
    _, prompts = run_2d(sal)
    assert prompts.boxes == [(100, 5, 114, 9)]


def test_points_lie_inside_the_component_and_spread_out():
    sal = blob((80, 80), (40, 40), 15)
    _, prompts = run_2d(sal, mode="points")
    (points,) = prompts.points
    assert len(points) == 3
    mask = sal > 0
    assert all(mask[y, x] for x, y in points)
    assert min(np.hypot(a[0] - b[0], a[1] - b[1]) for i, a in enumerate(points) for b in points[i + 1:]) > 10


def test_sample_points_on_tiny_component():
    mask = np.zeros((10, 10), bool)
    mask[3, 4] = True
    assert sample_points(mask, mask.astype(float), 3) == [(4, 3)]


def test_volume_target_in_slices_10_to_20_gets_boxes_only_there():
    rng = np.random.default_rng(1)
    sal = 0.1 * rng.random((32, 48, 48)).astype(np.float32)
    sal[10:21, 15:30, 20:35] += 1.0
    norm = normalize_saliency(sal)
    comps = select_components(otsu_mask(norm), norm, 1).kept
    prompts = prompts_per_slice(comps, norm, "boxes")
    with_boxes = [z for z, p in enumerate(prompts) if p.boxes]
    assert with_boxes == list(range(10, 21))
    assert all(p.boxes == [(20, 15, 34, 29)] for p in prompts[10:21])


def test_volume_two_targets_with_k2_and_k1():
    sal = np.zeros((20, 40, 40), dtype=np.float32)
    sal[2:6, 5:10, 5:10] = 0.9
    sal[12:18, 25:35, 25:35] = 1.0
    norm = normalize_saliency(sal)
    two = select_components(otsu_mask(norm), norm, 2).kept
    assert len(two) == 2
    prompts = prompts_per_slice(two, norm, "boxes")
    assert [z for z, p in enumerate(prompts) if p.boxes] == [2, 3, 4, 5, 12, 13, 14, 15, 16, 17]
    one = select_components(otsu_mask(norm), norm, 1).kept
    assert [z for z, p in enumerate(prompts_per_slice(one, norm, "boxes")) if p.boxes] == list(range(12, 18))


def test_volume_normalisation_is_global_not_per_slice():
    sal = np.zeros((3, 10, 10), dtype=np.float32)
    sal[0] = 0.1
    sal[0, 0, 0] = 0.2  # a weak slice: per-slice min-max would blow it up to 1
    sal[2, 4:6, 4:6] = 5.0
    norm = normalize_saliency(sal)
    assert norm[0].max() < 0.05 and norm.max() == pytest.approx(1.0)
    comps = select_components(otsu_mask(norm), norm, 3).kept
    assert all(not c.mask[0].any() for c in comps)


def test_invalid_slices_are_ignored():
    sal = np.zeros((4, 10, 10), dtype=np.float32)
    sal[1, 2:5, 2:5] = 1
    sal[3] = 100  # a skipped slice must not count
    valid = np.zeros(sal.shape, bool)
    valid[:3] = True
    norm = normalize_saliency(sal, valid)
    assert norm[3].max() == 0 and norm[1].max() == pytest.approx(1.0)
    assert otsu_mask(norm, valid)[1, 3, 3] and not otsu_mask(norm, valid)[3].any()


def test_min_size_drops_specks():
    sal = np.zeros((1, 30, 30), dtype=np.float32)
    sal[0, 1, 1] = 1.0
    sal[0, 10:20, 10:20] = 0.9
    comps = select_components(sal > 0.5, sal, 2, min_size=5).kept
    assert [c.size for c in comps] == [100]


def test_box_helpers():
    assert box_of(np.zeros((5, 5), bool)) is None
    assert grow_box((10, 10, 19, 29), 0.25, (40, 40)) == (8, 5, 22, 34)
    assert grow_box((0, 0, 9, 9), 0.5, (10, 10)) == (0, 0, 9, 9)


def test_keep_largest_and_overlapping():
    mask = np.zeros((2, 20, 20), bool)
    mask[0, 1:3, 1:3] = True
    mask[:, 10:18, 10:18] = True
    assert keep_largest_components(mask, 1).sum() == 128
    ref = np.zeros_like(mask)
    ref[0, 1, 1] = True
    assert keep_overlapping(mask, ref).sum() == 4
