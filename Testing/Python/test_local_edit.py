"""Clicks answered as local edits: only pixels near the click change, and undo restores the mask exactly."""
import numpy as np
import pytest
from scipy import ndimage

from conftest import disk_image, disk_mask
from MedCLIPSAMLib.interactive.embedding_cache import EmbeddingCache
from MedCLIPSAMLib.interactive.local_edit import LocalEditRule, level_set_edit
from MedCLIPSAMLib.interactive.session import InteractionSession
from MedCLIPSAMLib.prompts import box_of


def ramp_logits(shape=(60, 80)) -> np.ndarray:
    """Logits falling with the distance from (40, 30): SAM's ranking of a round object."""
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    return 10.0 - np.hypot(cols - 40, rows - 30)


def outside_disc(shape, x, y, radius) -> np.ndarray:
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    return (cols - x) ** 2 + (rows - y) ** 2 > radius * radius


def test_a_positive_click_adds_only_near_itself():
    logits = ramp_logits()
    mask = logits > 4  # too small: the object reaches logit 0
    edited = level_set_edit(logits, mask, 40, 38, True)  # 8 px below the centre, 2 px outside the mask
    distance = ndimage.distance_transform_edt(~mask)[38, 40]
    assert edited[38, 40] and (edited | mask).sum() > mask.sum()
    assert not (mask & ~edited).any()  # a positive click only adds
    far = outside_disc(mask.shape, 40, 38, LocalEditRule().reach * distance + LocalEditRule().pad_px + 1)
    assert np.array_equal(edited[far], mask[far])  # nothing changes away from the click
    assert not edited[30, 52]  # the object's other side stays missed: one click, one place


def test_a_negative_click_removes_only_near_itself():
    logits = ramp_logits()
    mask = logits > -4  # too large
    edited = level_set_edit(logits, mask, 40, 42, False)  # inside, 12 px below the centre
    assert not edited[42, 40] and not (edited & ~mask).any()  # a negative click only removes
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1][42, 40]
    far = outside_disc(mask.shape, 40, 42, LocalEditRule().reach * depth + LocalEditRule().pad_px + 1)
    assert np.array_equal(edited[far], mask[far])
    assert edited[30, 40] and edited[18, 40]  # the centre and the opposite border are kept


def test_a_click_where_sam_sees_only_background_is_left_to_the_caller():
    logits = ramp_logits()
    mask = logits > 4
    assert level_set_edit(logits, mask, 2, 2, True) is None  # logit there is about -35, under the floor -8
    assert level_set_edit(logits, mask, 2, 2, True, LocalEditRule(floor=-100)) is not None


def test_a_click_that_agrees_with_the_mask_changes_nothing():
    logits = ramp_logits()
    mask = logits > 0
    assert np.array_equal(level_set_edit(logits, mask, 40, 30, True), mask)
    assert np.array_equal(level_set_edit(logits, mask, 5, 5, False, LocalEditRule(floor=-100)), mask)


def test_a_negative_edit_never_takes_an_earlier_positive_click_out():
    logits = ramp_logits()
    mask = logits > -4
    earlier = (44, 42, True)  # a positive click on the rim 4 px from the new one, inside the edit's reach
    alone = level_set_edit(logits, mask, 40, 42, False)
    assert not alone[42, 44]  # without the rule the edit takes it out
    edited = level_set_edit(logits, mask, 40, 42, False, others=[earlier])
    assert edited[42, 44] and not edited[42, 40]
    rows, cols = np.nonzero(mask & ~edited)  # only pixels nearer the new click than the earlier one
    assert (np.hypot(cols - 40, rows - 42) < np.hypot(cols - 44, rows - 42)).all()
    same_kind = level_set_edit(logits, mask, 40, 42, False, others=[(44, 42, False)])
    assert np.array_equal(same_kind, alone)  # a click that says the same limits nothing


def test_a_positive_edit_never_adds_an_earlier_negative_click():
    logits = ramp_logits()
    mask = logits > 4
    earlier = (43, 37, False)  # outside the mask, 3 px beside the new click
    alone = level_set_edit(logits, mask, 40, 38, True)
    assert alone[37, 43]
    edited = level_set_edit(logits, mask, 40, 38, True, others=[earlier])
    assert edited[38, 40] and not edited[37, 43] and not (mask & ~edited).any()


@pytest.fixture
def disk_session(litemedsam):
    volume = disk_image(seed=3)[None]
    # no floor: the synthetic disk's background is so clear that SAM is sure of it right past the border
    return InteractionSession(litemedsam, volume, axis=0, cache=EmbeddingCache(litemedsam, volume),
                              local_rule=LocalEditRule(floor=-np.inf))


def test_a_session_click_is_local_and_undo_restores_it_exactly(disk_session):
    truth = disk_mask()
    disk_session.box(0, box_of(truth))
    before = disk_session.mask.copy()
    rows, cols = np.nonzero(before[0])
    x, y = int(cols.max()) + 2, int(np.median(rows))  # 2-3 px right of the mask's border
    distance = ndimage.distance_transform_edt(~before[0])[y, x]
    answer = disk_session.click(0, x, y, True)
    after = disk_session.mask[0]
    assert list(answer.slices) == [0] and after[y, x]
    assert not (before[0] & ~after).any()  # only added
    far = outside_disc(after.shape, x, y, LocalEditRule().reach * distance + LocalEditRule().pad_px + 1)
    assert np.array_equal(after[far], before[0][far])  # pixels away from the click unchanged
    disk_session.undo()
    assert np.array_equal(disk_session.mask, before)


def test_a_session_negative_edit_keeps_the_slices_earlier_positive_click(disk_session, monkeypatch):
    """The session hands the slice's earlier clicks to the edit: SAM ranks a ring along the border alike, the
    negative click's level set runs along it over an earlier positive click, and the edit stops halfway instead
    of taking that click out (which the failed-answer rule would have answered with a much smaller fallback)."""
    import MedCLIPSAMLib.interactive.session as session_module

    def rim_logits(backend, encoded, decoded):  # the object's rim ranked lowest, its centre highest
        depth = ndimage.distance_transform_edt(np.pad(disk_session.mask[0], 1))[1:-1, 1:-1]
        return np.where(disk_session.mask[0], np.minimum(depth, 6.0), -3.0)

    truth = disk_mask()
    disk_session.box(0, box_of(truth))
    rows, cols = np.nonzero(disk_session.mask[0])
    y = int(rows.max()) - 2  # 2 px inside the mask's bottom border, under its centre
    x = int(np.round(cols[rows == y].mean()))
    monkeypatch.setattr(session_module, "slice_logits", rim_logits)
    disk_session.click(0, x + 3, y, True)  # an earlier positive click on the same rim, 3 px aside: kept as it is
    before = disk_session.mask[0].copy()
    answer = disk_session.click(0, x, y, False)
    after = disk_session.mask[0]
    assert answer.path == "sam" and not after[y, x] and after[y, x + 3]
    rows, cols = np.nonzero(before & ~after)  # only the negative click's side of the two
    assert rows.size > 1 and (np.hypot(cols - x, rows - y) < np.hypot(cols - x - 3, rows - y)).all()
