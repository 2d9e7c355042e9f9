"""Interaction sessions on real LiteMedSAM: boxes, clicks, propagation, undo, and refused input."""
import numpy as np
import pytest

from conftest import disk_image, disk_mask
from MedCLIPSAMLib.interactive.embedding_cache import EmbeddingCache, encoded_bytes
from MedCLIPSAMLib.interactive.propagation import StopRule
from MedCLIPSAMLib.interactive.session import InteractionError, InteractionSession, edit_box
from MedCLIPSAMLib.interactive.simulate import largest_error, simulate
from MedCLIPSAMLib.metrics import dice
from MedCLIPSAMLib.prompts import box_of

DISK_SLICES = (2, 3, 4)
"""The synthetic volume's disk crosses these slices; the others are background only."""


def disk_volume(slices: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """(z, y, x) uint8 volume with a bright disk on DISK_SLICES and blank slices around, and its mask."""
    volume = np.stack([disk_image(seed=z) if z in DISK_SLICES else np.full((96, 128), 40, np.uint8)
                       for z in range(slices)])
    truth = np.zeros(volume.shape, dtype=bool)
    truth[list(DISK_SLICES)] = disk_mask()
    return volume, truth


@pytest.fixture(scope="module")
def disk_cache(litemedsam):
    """The disk volume's slices, encoded once for the tests that share them (the CPU encoder is the slow part)."""
    volume, _ = disk_volume()
    return EmbeddingCache(litemedsam, volume)


@pytest.fixture
def session(litemedsam, disk_cache):
    volume, _ = disk_volume()
    return InteractionSession(litemedsam, volume, axis=0, cache=disk_cache)


def test_a_box_answers_only_its_slice_and_segments_the_disk(session):
    truth = disk_mask()
    answer = session.box(3, box_of(truth))
    assert list(answer.slices) == [3] and answer.axis == 0 and answer.can_undo
    assert dice(answer.slices[3], truth) > 0.95
    again = session.box(3, box_of(truth))  # the same box again changes nothing, so nothing is sent
    assert again.slices == {}


def test_undo_restores_the_exact_previous_mask(session):
    truth = disk_mask()
    session.box(3, box_of(truth))
    before = session.mask.copy()
    answer = session.click(3, 70, 40, False)  # remove at the disk's centre
    assert 3 in answer.slices and not np.array_equal(session.mask, before)
    undone = session.undo()
    assert np.array_equal(session.mask, before) and list(undone.slices) == [3]
    assert np.array_equal(undone.slices[3], before[3])
    session.undo()
    assert not session.mask.any()
    with pytest.raises(InteractionError, match="Nothing to undo"):
        session.undo()


def test_propagation_stops_on_an_empty_neighbour(session):
    truth = disk_mask()
    session.box(3, box_of(truth))
    answer = session.propagate(3, "both")
    assert sorted(answer.slices) == [2, 4], answer.message
    assert "on slice 5" in answer.message and "on slice 1" in answer.message  # the blank neighbours stop it
    assert not session.mask[[0, 1, 5, 6]].any()
    assert all(dice(session.mask[z], truth) > 0.9 for z in DISK_SLICES)


def test_propagation_one_way_and_through_the_embedding_cache(litemedsam):
    volume, _ = disk_volume()
    session = InteractionSession(litemedsam, volume, axis=0)
    session.box(3, box_of(disk_mask()))
    encoded = session.cache.encoded_count
    answer = session.propagate(3, "down")
    assert sorted(answer.slices) == [2]
    assert session.cache.encoded_count == encoded + 2  # slices 2 and 1 (where it stopped), once each
    session.undo()
    session.propagate(3, "down")
    assert session.cache.encoded_count == encoded + 2  # the second time: decoder passes only


def test_a_click_on_a_propagated_slice_repropagates_from_there(session):
    """A negative click that removes a whole piece (the target ended before the slice) carries on through the
    slices the same propagation wrote after it; a trim (part of the piece) changes its own slice only."""
    truth = disk_mask()
    session.box(2, box_of(truth))
    session.propagate(2, "up")
    before = session.mask.copy()
    assert before[3].any() and before[4].any()
    answer = session.click(3, 70 + 12, 40, False)  # cut the disk's right part off on slice 3: a trim ...
    assert set(answer.slices) == {3} and session.mask[3].sum() < 0.9 * before[3].sum()
    assert np.array_equal(session.mask[4], before[4])  # ... slice 4 keeps its mask
    session.undo()
    answer = session.click(3, 70, 40, False)  # the disk's centre: the whole piece goes ...
    assert set(answer.slices) == {3, 4} and not session.mask[3].any()
    assert not session.mask[4].any()  # ... and slice 4, written by the same propagation, follows
    assert np.array_equal(session.mask[2], before[2])  # the seed slice is not touched
    session.undo()
    assert np.array_equal(session.mask, before)


def test_a_click_on_the_seed_keeps_the_slices_beyond_an_edited_one(session):
    """Re-running a propagation stops at a slice the user edited; the slices it wrote beyond that one keep their
    masks (they were cleared and never rewritten)."""
    session.box(2, box_of(disk_mask()))
    session.propagate(2, "up")
    session.click(3, 70 + 12, 40, False)  # slice 3 edited (a trim: slice 4 stays the first run's)
    before = session.mask.copy()
    assert before[4].any()
    answer = session.click(2, 70, 40, True)  # on the seed: its run is re-run, slice 3 stops it
    assert np.array_equal(session.mask[4], before[4]) and 4 not in answer.slices
    assert np.array_equal(session.mask[3], before[3])


def test_reset_empties_and_can_be_undone(session):
    session.box(3, box_of(disk_mask()))
    before = session.mask.copy()
    answer = session.reset()
    assert list(answer.slices) == [3] and not session.mask.any()
    session.undo()
    assert np.array_equal(session.mask, before)


def test_any_axis_uses_that_axis_slices(litemedsam):
    zz, yy, xx = np.mgrid[:48, :96, :128]
    ball = (zz - 24) ** 2 + (yy - 40) ** 2 + (xx - 70) ** 2 <= 18 ** 2
    rng = np.random.default_rng(0)
    volume = np.clip(40 + 15 * rng.standard_normal(ball.shape), 0, 255).astype(np.uint8)
    volume[ball] = 200
    session = InteractionSession(litemedsam, volume, axis=2)
    assert session.slice_shape == (48, 96) and session.slice_count == 128
    answer = session.box(70, box_of(ball[:, :, 70]))
    assert list(answer.slices) == [70] and answer.axis == 2
    assert dice(answer.slices[70], ball[:, :, 70]) > 0.9
    whole = session.volume_mask()
    assert whole.shape == volume.shape and whole[:, :, 70].any() and not whole[:, :, 69].any()


@pytest.mark.parametrize("call, message", [
    (lambda s: s.box(7, (10, 10, 40, 40)), "Slice 7 is outside the volume: axis 0 has slices 0-6"),
    (lambda s: s.box(-1, (10, 10, 40, 40)), "Slice -1 is outside"),
    (lambda s: s.box(3, (200, 200, 300, 300)), "lies outside the slice"),
    (lambda s: s.box(3, (40, 40, 10, 10)), "is empty"),
    (lambda s: s.box(3, (10, 10, 10, 10)), "is empty"),
    (lambda s: s.box(3, "big"), "four numbers"),
    (lambda s: s.click(3, 500, 10, True), "off the slice"),
    (lambda s: s.click(3, -1, 10, True), "off the slice"),
    (lambda s: s.clicks(3, [(1, 2)]), "A click is x, y and true"),
    (lambda s: s.propagate(3, "sideways"), "Direction 'sideways' is unknown"),
    (lambda s: s.propagate(0, "up"), "Slice 0 has no mask to propagate"),
    (lambda s: s.box(3, (10, 10, 40, 40), mode="merge"), "Box mode 'merge' is unknown"),
])
def test_bad_input_is_one_line_and_changes_nothing(session, call, message):
    session.box(3, box_of(disk_mask()))
    before, history = session.mask.copy(), len(session._history)
    with pytest.raises(InteractionError, match=message) as caught:
        call(session)
    assert "\n" not in str(caught.value)
    assert np.array_equal(session.mask, before) and len(session._history) == history


def test_box_edit_grows_and_pulls_in_the_nearest_side():
    assert edit_box((10, 10, 20, 20), (30, 15, True), (50, 50)) == (10, 10, 30, 20)
    assert edit_box((10, 10, 20, 20), (18, 15, False), (50, 50)) == (10, 10, 17, 20)
    assert edit_box((10, 10, 20, 20), (15, 15, True), (50, 50)) == (10, 10, 20, 20)  # inside: no change


def test_embedding_cache_keeps_to_its_budget(litemedsam):
    volume, _ = disk_volume()
    one = encoded_bytes(litemedsam.encode(volume[:1])[0])
    cache = EmbeddingCache(litemedsam, volume, budget_bytes=2 * one + 1)
    cache.get_many([0, 1, 2])
    assert len(cache) == 3  # a request's own slices are kept while it needs them
    cache.get(3)
    assert len(cache) == 2 and 3 in cache and 0 not in cache and cache.nbytes <= 2 * one + 1
    cache.get(2)
    assert cache.encoded_count == 4  # 2 was still held: no new encoder pass


def test_largest_error_clicks_the_centre_of_the_largest_region():
    truth = np.zeros((2, 40, 40), bool)
    truth[1, 5:25, 5:25] = True
    prediction = np.zeros_like(truth)
    prediction[0, 30:34, 30:34] = True
    click = largest_error(prediction, truth)
    assert (click.index, click.positive, click.size) == (1, True, 400)
    assert 13 <= click.x <= 16 and 13 <= click.y <= 16
    assert largest_error(truth, truth) is None


def test_simulated_interactions_on_the_disk_volume(litemedsam, disk_cache):
    volume, truth = disk_volume()
    session = InteractionSession(litemedsam, volume, axis=0, cache=disk_cache)
    masks = simulate(session, truth, 3)
    scores = [dice(m, truth) for m in masks]
    assert len(masks) == 3 and scores[0] > 0.9 and scores[-1] >= scores[0] - 0.02


def test_a_click_on_the_start_slice_never_clears_a_slice_edited_since(session):
    truth = disk_mask()
    session.box(3, box_of(truth))
    session.propagate(3, "both")
    session.click(2, 82, 40, False)  # slice 2 is now the user's
    edited = session.mask[2].copy()
    assert edited.any()
    answer = session.click(3, 70, 40, True)
    assert 2 not in answer.slices and np.array_equal(session.mask[2], edited)
