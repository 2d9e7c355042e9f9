"""Box rules: zoom geometry and gains on a small target, refinement margin and keep-better, splitting."""
import numpy as np
import pytest

from conftest import disk_image, disk_mask
from MedCLIPSAMLib.metrics import dice
from MedCLIPSAMLib.models.box_prompting import BoxRules, paste, pieces, zoom_region
from MedCLIPSAMLib.prompts import box_of


def test_zoom_region_is_a_square_crop_around_a_small_box_inside_the_slice():
    rules = BoxRules(zoom_below=0.25, zoom_context=1.0)
    assert zoom_region((100, 100, 199, 199), (256, 256), rules) is None  # large box: whole-slice embedding
    assert zoom_region((10, 10, 20, 20), (256, 256), BoxRules()) is None  # zoom off by default
    x0, y0, x1, y1 = zoom_region((100, 120, 114, 129), (256, 256), rules)
    assert x1 - x0 == y1 - y0 == 44  # 15 px box + one box side of context on each side
    assert x0 <= 100 and y0 <= 120 and x1 >= 114 and y1 >= 129
    edge = zoom_region((0, 250, 9, 255), (256, 300), rules)  # near the corner: shifted inside, not clipped
    assert edge[0] == 0 and edge[3] == 255 and edge[2] - edge[0] == edge[3] - edge[1]
    tiny = zoom_region((128, 128, 129, 129), (256, 256), rules)
    assert tiny[2] - tiny[0] + 1 == 32  # at most 8x magnification (256 / 8)


def test_paste_and_pieces():
    local = np.zeros((10, 10), bool)
    local[2:4, 5:7] = True
    full = paste(local, (20, 30, 29, 39), (64, 64))
    assert full.sum() == 4 and full[32:34, 25:27].all()
    two = disk_mask(64, 96, (30, 25), 10) | disk_mask(64, 96, (30, 70), 12)
    assert sorted(pieces(two, 0.3)) == sorted([box_of(disk_mask(64, 96, (30, 25), 10)),
                                               box_of(disk_mask(64, 96, (30, 70), 12))])
    speck = disk_mask(64, 96, (30, 25), 10)
    speck[5, 90] = True
    assert pieces(speck, 0.3) == []  # a speck beside one target is not a second target
    assert pieces(disk_mask(64, 96, (30, 25), 10), 0.3) == []


class ScriptedDecoder:
    """A stand-in for SAM's decoder with fixed answers, to check the rules' choices (not SAM's)."""

    def __init__(self, answers):
        self.answers, self.boxes = list(answers), []

    def decode(self, encoded, boxes=None, points=None, with_scores=False):
        self.boxes.append(tuple(boxes[0]))
        mask, score = self.answers.pop(0)
        return (mask[None], np.array([score])) if with_scores else mask[None]


class Encoded:
    original_hw = (64, 64)


def square(x0, y0, x1, y1):
    mask = np.zeros((64, 64), bool)
    mask[y0:y1 + 1, x0:x1 + 1] = True
    return mask


def test_refinement_reprompts_with_a_margin_and_keeps_a_mask_only_when_sam_rates_it_no_worse():
    from MedCLIPSAMLib.models.box_prompting import refine

    first, worse = square(10, 10, 29, 29), square(15, 15, 24, 24)
    decoder = ScriptedDecoder([(first, 0.9), (worse, 0.7)])
    kept = refine(decoder, Encoded(), (5, 5, 34, 34), BoxRules(refine_rounds=2, refine_margin=0.1,
                                                                 refine_keep_better=True))
    assert decoder.boxes == [(5, 5, 34, 34), (8, 8, 31, 31)]  # 20 px mask box + 2 px per side
    assert np.array_equal(kept, first)  # the lower-rated re-prompt is dropped and refinement stops
    decoder = ScriptedDecoder([(first, 0.9), (worse, 0.7), (worse, 0.7)])
    taken = refine(decoder, Encoded(), (5, 5, 34, 34), BoxRules(refine_rounds=2))
    assert np.array_equal(taken, worse) and decoder.boxes[1] == (10, 10, 29, 29)  # old rule: tight box


def test_refinement_stops_on_a_box_that_was_already_tight():
    from MedCLIPSAMLib.models.box_prompting import refine
    from MedCLIPSAMLib.settings import Settings

    rules = Settings().box_rules()
    assert (rules.refine_rounds, rules.refine_min_shrink) == (2, 0.05)  # the default (README, Results)
    near = square(6, 5, 33, 34)  # the mask's box is 1 px (3 %) inside the 30 px prompt box
    decoder = ScriptedDecoder([(near, 0.9)])
    assert np.array_equal(refine(decoder, Encoded(), (5, 5, 34, 34), rules), near) and len(decoder.boxes) == 1
    inner, core = square(10, 10, 29, 29), square(11, 10, 28, 29)  # 5 px (17 %) inside: a loose box, refined
    decoder = ScriptedDecoder([(inner, 0.9), (core, 0.9)])
    assert np.array_equal(refine(decoder, Encoded(), (5, 5, 34, 34), rules), core)
    assert decoder.boxes == [(5, 5, 34, 34), (10, 10, 29, 29)]  # then the new box is 1 px (5 %) inside: stop


def test_fill_gate_refines_only_masks_that_leave_most_of_their_box_empty():
    from MedCLIPSAMLib.models.box_prompting import refine

    gate = BoxRules(refine_rounds=1, refine_below_fill=0.6)
    full, small = square(5, 5, 30, 30), square(12, 12, 24, 24)  # 26^2 / 30^2 = 0.75 vs 0.19 of the box
    decoder = ScriptedDecoder([(full, 0.9)])
    assert np.array_equal(refine(decoder, Encoded(), (5, 5, 34, 34), gate), full) and len(decoder.boxes) == 1
    decoder = ScriptedDecoder([(small, 0.9), (small, 0.9)])
    refine(decoder, Encoded(), (5, 5, 34, 34), gate)
    assert decoder.boxes == [(5, 5, 34, 34), (12, 12, 24, 24)]


def test_zoom_segments_a_small_target_on_one_cached_crop(litemedsam, monkeypatch):
    image = disk_image(256, 256, center=(140, 100), radius=6, seed=3)
    truth = disk_mask(256, 256, center=(140, 100), radius=6)
    (encoded,) = litemedsam.encode(image[None])
    calls = []
    encode = litemedsam.encode
    monkeypatch.setattr(litemedsam, "encode", lambda slices: calls.append(slices.shape) or encode(slices))
    zoom = BoxRules(refine_rounds=2, zoom_below=0.25, zoom_context=2.0)
    litemedsam.segment(encoded, boxes=[box_of(truth)], rules=zoom)
    assert calls == [(1, 65, 65)] and len(encoded.crops) == 1  # refinement reused the crop's embedding
    once = litemedsam.segment(encoded, boxes=[box_of(truth)], rules=BoxRules(refine_rounds=0, zoom_below=0.25,
                                                                                     zoom_context=2.0))
    assert len(calls) == 1  # a second prompt on the slice reuses it too
    assert once.shape == truth.shape and dice(once, truth) > 0.9
    (x0, y0, x1, y1), = encoded.crops
    assert not once[:y0].any() and not once[y1 + 1:].any() and not once[:, :x0].any() and not once[:, x1 + 1:].any()


def test_zoom_works_for_the_sam_vit_path_with_random_weights():
    import torch
    from test_sam import small_sam_vit
    from MedCLIPSAMLib.models.sam import vit_backend

    backend = vit_backend(small_sam_vit(), "vit_b", torch.device("cpu"), input_size=256)
    image = disk_image(96, 128, center=(40, 70), radius=4)
    (encoded,) = backend.encode(image[None])
    mask = backend.segment(encoded, boxes=[(66, 36, 74, 44)], rules=BoxRules(refine_rounds=1, zoom_below=0.25))
    assert mask.shape == (96, 128) and mask.dtype == bool
    (region,) = encoded.crops
    x0, y0, x1, y1 = region
    assert not mask[:y0].any() and not mask[y1 + 1:].any() and not mask[:, :x0].any() and not mask[:, x1 + 1:].any()


def test_split_gives_each_piece_of_a_merged_box_its_own_box():
    from MedCLIPSAMLib.models.box_prompting import segment_box

    left, right = square(5, 20, 20, 40), square(40, 20, 58, 44)
    decoder = ScriptedDecoder([(left | right, 0.9), (left, 0.9), (right, 0.9)])
    mask = segment_box(decoder, Encoded(), (0, 15, 63, 50), BoxRules(refine_rounds=0, split_fraction=0.3))
    assert decoder.boxes == [(0, 15, 63, 50), box_of(left), box_of(right)]
    assert np.array_equal(mask, left | right)


@pytest.mark.parametrize("field,value", [("zoom_below", 1.5), ("component_ratio", -0.1), ("refine_margin", 2.0),
                                         ("split_fraction", 1.2), ("min_component_mm", -1.0),
                                         ("refine_min_shrink", 0.6)])
def test_rule_settings_out_of_range_are_refused_by_name(field, value):
    from MedCLIPSAMLib.errors import InputError
    from MedCLIPSAMLib.settings import Settings

    with pytest.raises(InputError, match=field):
        Settings(**{field: value})
