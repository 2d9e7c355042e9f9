"""A click always does what it says (issue 33): the clicked pixel ends in (positive) or out (negative) of the mask,
on images and on thick-slice volumes, every click of a slice stays honoured, and NoC figures are right."""
import numpy as np
import pytest

from conftest import disk_image, disk_mask
from MedCLIPSAMLib.correction_figures import noc, noc_summary
from MedCLIPSAMLib.imageio import as_volume
from MedCLIPSAMLib.interactive.answer import decode_answer, encode_answer
from MedCLIPSAMLib.interactive.embedding_cache import EmbeddingCache
from MedCLIPSAMLib.interactive.honour import PATHS, fallback_start, remember
from MedCLIPSAMLib.interactive.session import InteractionSession, is_trim
from MedCLIPSAMLib.prompts import box_of

SECOND = (70, 30)
"""(y, x) of a second disk in the two-disk image: a missed region once the first disk is boxed."""


def two_disks() -> tuple[np.ndarray, np.ndarray]:
    image = disk_image(center=(40, 80), radius=16)
    second = disk_mask(center=SECOND, radius=10)
    image[second] = 200
    return image, disk_mask(center=(40, 80), radius=16) | second


@pytest.fixture(scope="module")
def image_cache(litemedsam):
    image, _ = two_disks()
    return EmbeddingCache(litemedsam, image[None])


@pytest.fixture
def image_session(litemedsam, image_cache):
    image, _ = two_disks()
    return InteractionSession(litemedsam, image, cache=image_cache)


def test_noc_counts_interactions_until_the_threshold_capped_at_the_budget():
    assert noc([0.80, 0.86, 0.91], 0.85) == 2 and noc([0.80, 0.86, 0.91], 0.90) == 3
    assert noc([0.95, 0.80, 0.70], 0.90) == 1  # the first time it is reached, even if it falls later
    assert noc([0.5, 0.6, 0.7, 0.8], 0.85) == 4  # never: the budget
    summary = noc_summary([[0.80, 0.86, 0.91], [0.5, 0.6, 0.7]])
    assert summary["noc_85"] == pytest.approx(2.5) and summary["noc_90"] == pytest.approx(3.0)
    assert summary["noc_85_failed"] == 1 and summary["noc_90_failed"] == 1


def test_a_later_click_on_the_same_pixel_replaces_the_earlier_one():
    kept = remember([(1, 2, True), (5, 5, False)], [(1, 2, False)])
    assert kept == [(5, 5, False), (1, 2, False)]


def test_a_positive_click_in_a_missed_region_puts_the_pixel_in(image_session):
    _, truth = two_disks()
    image_session.box(0, box_of(disk_mask(center=(40, 80), radius=16)))
    y, x = SECOND
    assert not image_session.mask[0, y, x]
    answer = image_session.click(0, x, y, True)
    assert image_session.mask[0, y, x] and answer.path in PATHS
    added = image_session.mask[0] & disk_mask(center=SECOND, radius=10)
    assert added.sum() > 0.5 * disk_mask(center=SECOND, radius=10).sum()  # the region, not only the pixel
    assert decode_answer(encode_answer(answer)).path == answer.path  # the wire carries it


def test_a_negative_click_on_a_leak_takes_the_pixel_out(image_session):
    leaked = disk_mask(center=(40, 80), radius=16)
    leaked[38:43, 10:80] = True  # a bar leaking out to the left over the background
    image_session.set_mask(leaked[None])
    answer = image_session.click(0, 30, 40, False)
    assert not image_session.mask[0, 40, 30] and 0 in answer.slices
    assert image_session.mask[0, 40, 80]  # the disk stays


def test_each_click_changes_a_wrong_pixel_even_when_sam_ignores_it(image_session, monkeypatch):
    """SAM's answer made to leave the mask as it was: the fallback still honours the click, every time."""
    image_session.box(0, box_of(disk_mask(center=(40, 80), radius=16)))
    unchanged = lambda index, clicks: (image_session.mask[index].copy(), image_session._prompts.get(index))
    monkeypatch.setattr(image_session, "_local_edit", lambda index, clicks: None)
    monkeypatch.setattr(image_session, "_answer_as_prompt", unchanged)
    y, x = SECOND
    for positive in (True, False, True):
        before = image_session.mask[0, y, x]
        answer = image_session.click(0, x, y, positive)
        assert image_session.mask[0, y, x] == positive != before
        assert answer.path in ("candidates", "region") and 0 in answer.slices


FAR_BLOB = ((85, 115), 8)
"""(centre, radius) of a blob far from the disks and from every click of the tests below."""
BUMP = (40, 97)
"""(y, x) one pixel right of the first disk's edge: a new positive click there."""


def _sam_answers(session, monkeypatch, change):
    """SAM's answer to the next click made to be ``change(mask before)``."""
    monkeypatch.setattr(session, "_local_edit", lambda index, clicks: None)
    monkeypatch.setattr(session, "_answer_as_prompt",
                        lambda index, clicks: (change(session.mask[index].copy()), session._prompts.get(index)))


def _clicked_twice(session, monkeypatch, change):
    """The first disk boxed (an approved slice), the second disk clicked in, then a click at BUMP that SAM
    answers with ``change``."""
    session.box(0, box_of(disk_mask(center=(40, 80), radius=16)))
    y, x = SECOND
    session.click(0, x, y, True)
    assert session.mask[0, y, x]
    before = session.mask[0].copy()
    _sam_answers(session, monkeypatch, change)
    return before, session.click(0, BUMP[1], BUMP[0], True)


def test_a_failed_answer_on_an_approved_slice_changes_nothing_far_from_the_clicks(image_session, monkeypatch):
    """SAM's answer holds the new click but undoes the earlier one and adds a far blob: the fallback starts from
    the mask before the click, so the far blob never appears and the earlier click's region stays."""
    far, second = disk_mask(center=FAR_BLOB[0], radius=FAR_BLOB[1]), disk_mask(center=SECOND, radius=10)
    bump = disk_mask(center=BUMP, radius=3)
    before, answer = _clicked_twice(image_session, monkeypatch, lambda mask: (mask | bump | far) & ~second)
    mask = image_session.mask[0]
    assert mask[BUMP] and mask[SECOND] and answer.path in ("candidates", "region")
    assert not (mask & far).any()
    assert (mask & before).sum() == before.sum()  # only added around the new click: nothing else changed
    assert (mask & ~before).sum() <= np.pi * 16 ** 2


def test_an_answer_that_honours_every_click_is_taken_whole(image_session, monkeypatch):
    far, bump = disk_mask(center=FAR_BLOB[0], radius=FAR_BLOB[1]), disk_mask(center=BUMP, radius=3)
    before, answer = _clicked_twice(image_session, monkeypatch, lambda mask: mask | bump | far)
    assert answer.path == "sam" and np.array_equal(image_session.mask[0], before | bump | far)


def test_a_failed_answer_on_a_slice_no_one_approved_is_kept(image_session, monkeypatch):
    """A slice set from a mask (the text result), not boxed or clicked yet: SAM's answer is as good a guess as
    that mask, so its far change stays while the fallback honours the click."""
    first, far = disk_mask(center=(40, 80), radius=16), disk_mask(center=FAR_BLOB[0], radius=FAR_BLOB[1])
    image_session.set_mask(first[None])
    _sam_answers(image_session, monkeypatch, lambda mask: mask | far)  # leaves the click at SECOND out
    y, x = SECOND
    answer = image_session.click(0, x, y, True)
    assert image_session.mask[0, y, x] and answer.path in ("candidates", "region")
    assert (image_session.mask[0] & far).sum() == far.sum()


def test_fallback_start_takes_the_answer_only_when_it_holds_every_click():
    before, answer = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    before[2:5, 2:5] = True
    answer[2:7, 2:7] = True
    assert fallback_start(before, answer, [(6, 6, True)], approved=True) is answer
    kept = fallback_start(before, answer, [(6, 6, True), (3, 3, False)], approved=True)
    assert np.array_equal(kept, before) and kept is not before
    assert fallback_start(before, answer, [(3, 3, False)], approved=False) is answer
    assert fallback_start(np.zeros((8, 8), bool), answer, [(3, 3, False)], approved=True) is answer


def test_a_trim_is_told_from_a_whole_piece_removal():
    before = np.zeros((10, 20), bool)
    before[2:8, 2:8] = True
    before[2:8, 12:18] = True  # two pieces
    trimmed = before.copy()
    trimmed[2:8, 6:8] = False
    assert is_trim(before, trimmed, [(7, 5, False)])
    one_gone = before.copy()
    one_gone[:, 10:] = False
    assert not is_trim(before, one_gone, [(15, 5, False)])
    assert not is_trim(before, trimmed, [(7, 5, False), (1, 1, True)])  # a positive click carries on
    assert not is_trim(before, before, [(0, 0, False)])  # nothing removed


def test_all_clicks_of_a_slice_stay_honoured(image_session):
    image_session.box(0, box_of(disk_mask(center=(40, 80), radius=16)))
    clicks = [(SECOND[1], SECOND[0], True), (80, 40, False), (66, 40, True), (100, 40, False)]
    for done, (x, y, positive) in enumerate(clicks, start=1):
        image_session.click(0, x, y, positive)
        for cx, cy, cpositive in clicks[:done]:
            assert image_session.mask[0, cy, cx] == cpositive, (done, (cx, cy, cpositive))


THICK = (2, 3, 4)
"""Slices of the thick-slice volume the lesion is on; 5 and 6 hold a look-alike that propagation leaks into."""


def thick_volume():
    """A lesion on three 6.5 mm slices, a fainter look-alike on the next two, blank slices, and on slice 8 a
    second lesion propagation never reaches (the blank slice 7 stops it)."""
    slices = []
    for z in range(10):
        if z in THICK:
            slices.append(disk_image(seed=z))
        elif z in (5, 6):
            slices.append(disk_image(seed=z, radius=15))
        elif z == 8:
            slices.append(disk_image(seed=z, center=(50, 40), radius=12))
        else:
            slices.append(np.full((96, 128), 40, np.uint8))
    return as_volume(np.stack(slices), spacing=(6.5, 0.8, 0.8))


@pytest.fixture(scope="module")
def thick_cache(litemedsam):
    return EmbeddingCache(litemedsam, thick_volume().array)


@pytest.fixture
def thick_session(litemedsam, thick_cache):
    return InteractionSession(litemedsam, thick_volume(), axis=0, cache=thick_cache)


def test_a_negative_click_on_a_leaked_thick_slice_removes_the_leak_and_stops_beyond(thick_session):
    thick_session.box(3, box_of(disk_mask()))
    thick_session.propagate(3, "both")
    assert thick_session.mask[5].any() and thick_session.mask[6].any()  # leaked into the look-alike
    answer = thick_session.click(5, 70, 40, False)
    assert not thick_session.mask[5, 40, 70] and not thick_session.mask[5].any()
    assert not thick_session.mask[6].any() and {5, 6} <= set(answer.slices)
    assert all(thick_session.mask[z, 40, 70] for z in THICK)  # the lesion's slices are kept


def test_a_positive_click_inside_a_missed_thick_slice_and_one_propagation_never_reached(thick_session):
    thick_session.box(3, box_of(disk_mask()))
    thick_session.propagate(3, "down")
    thick_session.click(2, 70, 40, False)  # a user takes the lesion off slice 2, then clicks it back in
    assert not thick_session.mask[2, 40, 70]
    thick_session.click(2, 70, 40, True)
    assert thick_session.mask[2, 40, 70]
    assert not thick_session.mask[8].any()
    answer = thick_session.click(8, 40, 50, True)  # never reached by propagation
    assert thick_session.mask[8, 50, 40] and 8 in answer.slices
    assert thick_session.mask[8].sum() > 0.5 * disk_mask(center=(50, 40), radius=12).sum()


def test_a_negative_click_on_an_empty_slice_changes_nothing_and_is_no_error(thick_session):
    answer = thick_session.click(0, 10, 10, False)
    assert answer.slices == {} and not thick_session.mask.any() and "nothing to remove" in answer.message
