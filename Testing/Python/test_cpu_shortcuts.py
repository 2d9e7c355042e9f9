"""The CPU shortcuts of issue 37: flat maps stop after the probe steps (the others get exactly their full-batch
result), and slices with the same pixels reuse CLIP/M2IB and SAM encoder work, with the counts reported."""
import numpy as np
import pytest
import torch

from MedCLIPSAMLib.errors import SettingError
from MedCLIPSAMLib.pipeline import Pipeline, SameSlices
from MedCLIPSAMLib.saliency import M2IB, PROBE_STEPS, M2IBConfig, clip_inputs, flat_maps
from MedCLIPSAMLib.settings import Settings

from conftest import disk_image

CPU = torch.device("cpu")


def test_flat_maps_measures_each_images_variation_over_its_patch_tokens():
    kl = torch.ones(3, 1, 5, 4)
    kl[1, 0, 1:, 0] = torch.tensor([1.0, 4.0, 1.0, 4.0])  # varies over the patch tokens
    kl[2, 0, 0] = 50.0  # only the class token differs: the patch map is still flat
    assert flat_maps(kl, prefix=1, threshold=0.01).tolist() == [True, False, True]
    assert flat_maps(kl, prefix=1, threshold=10.0).tolist() == [True, True, True]


@pytest.fixture(scope="module")
def tokens_and_text(tiny_clip):
    """Row 0: a slice's real block-L tokens (a salient map); row 1: every token the same (a perfectly flat map)."""
    m2ib = M2IB(tiny_clip, M2IBConfig(layer=9), CPU)
    images, _ = clip_inputs(disk_image()[None], tiny_clip, CPU)
    real = m2ib.prefix_tokens(images)
    flat = real[:, 1:2].expand_as(real).clone()
    return torch.cat([real, flat]), tiny_clip.encode_text(["disk"], CPU)


def test_flat_slices_are_skipped_and_salient_ones_keep_their_full_result(tiny_clip, tokens_and_text):
    tokens, text = tokens_and_text
    config = M2IBConfig(layer=9, steps=PROBE_STEPS + 3, samples=2)
    full = M2IB(tiny_clip, config, CPU)
    reference = full.saliency_from_prefix(tokens, text)
    assert full.last_flat == 0 and not torch.isnan(reference).any()
    skipping = M2IB(tiny_clip, M2IBConfig(**{**config.__dict__, "flat_cv": 1e-3}), CPU)
    maps = skipping.saliency_from_prefix(tokens, text)
    assert skipping.last_flat == 1
    assert torch.isnan(maps[1]).all(), "the flat slice stopped after the probe steps"
    torch.testing.assert_close(maps[0], reference[0], rtol=1e-5, atol=1e-6)  # Adam's state carried over exactly
    alone = skipping.saliency_from_prefix(tokens[:1], text)
    assert skipping.last_flat == 0
    torch.testing.assert_close(alone[0], reference[0], rtol=1e-5, atol=1e-6)


def test_a_threshold_above_every_map_skips_them_all(tiny_clip, tokens_and_text):
    tokens, text = tokens_and_text
    m2ib = M2IB(tiny_clip, M2IBConfig(layer=9, steps=PROBE_STEPS + 2, samples=1, flat_cv=1.0), CPU)
    assert torch.isnan(m2ib.saliency_from_prefix(tokens, text)).all() and m2ib.last_flat == 2


def test_flat_saliency_setting_is_checked():
    with pytest.raises(SettingError, match="'flat_saliency_cv' must be between 0 and 1 \\(got 2.0\\)"):
        Settings(flat_saliency_cv=2.0)


def test_same_slices_are_found_by_their_pixels():
    slices = np.stack([disk_image(seed=s) for s in (0, 1, 0, 2, 1)])
    same = SameSlices(slices)
    assert same.unseen(np.array([0, 1, 2])).tolist() == [0, 1]
    assert same.copies(np.array([0, 1, 2])) == [(2, 0)]
    assert same.unseen(np.array([3, 4])).tolist() == [3] and same.source(4) == 1 and same.source(3) == 3
    assert same.has_copies_after(1, 3) and not same.has_copies_after(0, 2)


def test_a_volume_with_repeated_slices_computes_each_distinct_slice_once(fast_settings, tiny_clip, litemedsam):
    distinct = np.stack([disk_image(seed=s, radius=14 + s) for s in range(4)]).astype(np.float32)
    volume = distinct[[0, 1, 1, 2, 2, 2, 3]]  # a thick-slice scan resampled by repetition
    settings = fast_settings.replace(faithfulness_slices=0, runtime="torch", min_component_mm=0)
    result = Pipeline(settings, clip=tiny_clip, sam=litemedsam).run(volume, "disk")
    counts = result.stage_slices
    assert counts["clip_features"] == 4 and counts["m2ib"] == 4 and counts["saliency_reused"] == 3
    name = result.names[0]
    for a, b in ((1, 2), (3, 4), (3, 5)):
        assert np.array_equal(result.saliency[name][a], result.saliency[name][b])
        assert np.array_equal(result.masks[name][a], result.masks[name][b])
    with_sam = [z for z in range(7) if result.boxes[name].get(z)]
    assert with_sam and counts["sam_decoder"] == len(with_sam)
    assert counts["sam_encoder"] == len({int(volume[z].sum()) for z in with_sam}), "one encoding per distinct slice"
    assert counts["sam_encoder"] + counts.get("sam_encoder_reused", 0) == len(with_sam)
    assert set(result.cpu_timings) >= {"clip_features", "m2ib", "sam_encoder"}
    assert all(value >= 0 for value in result.cpu_timings.values())
