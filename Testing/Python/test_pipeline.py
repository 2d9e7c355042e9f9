"""The zero-shot pipeline end to end with a tiny random CLIP and the real LiteMedSAM."""
import resource
import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import disk_image, shared_data
from MedCLIPSAMLib.errors import Cancelled, InputError
from MedCLIPSAMLib.imageio import read_volume, write_label
from MedCLIPSAMLib.pipeline import Pipeline, segment_image, segment_volume


@pytest.fixture
def pipeline(fast_settings, tiny_clip, litemedsam):
    return Pipeline(fast_settings, clip=tiny_clip, sam=litemedsam)


def test_segment_image_returns_aligned_outputs(fast_settings, tiny_clip, litemedsam):
    image = disk_image(height=90, width=140)
    result = segment_image(image, "bright disk", fast_settings, clip=tiny_clip, sam=litemedsam)
    assert result.mask.shape == result.saliency.shape == (90, 140)
    assert result.mask.dtype == bool and 0 <= result.saliency.min() and result.saliency.max() <= 1
    assert result.boxes, "a random model still yields one salient component and its box"
    for x0, y0, x1, y1 in result.boxes:
        assert 0 <= x0 <= x1 < 140 and 0 <= y0 <= y1 < 90
    assert 0 < result.score <= 1
    assert {"clip_features", "m2ib", "prompts", "sam_encoder", "sam_decoder", "total"} <= set(result.timings)


def test_rgb_image_is_accepted(fast_settings, tiny_clip, litemedsam):
    rgb = np.repeat(disk_image()[..., None], 3, axis=2)
    assert segment_image(rgb, "disk", fast_settings, clip=tiny_clip, sam=litemedsam).mask.shape == (96, 128)


@pytest.mark.parametrize("image, prompt, message", [
    (disk_image(), "", "prompt is empty"),
    (disk_image(), "   ", "prompt is empty"),
    (np.zeros((1, 1)), "tumor", "too small"),
    (np.where(disk_image() > 100, np.nan, 1.0), "tumor", "NaN"),
    (np.zeros((40, 40, 4), np.uint8), "tumor", "4 channels"),
])
def test_bad_inputs_are_clear_errors(fast_settings, tiny_clip, litemedsam, image, prompt, message):
    with pytest.raises(InputError, match=message):
        segment_image(image, prompt, fast_settings, clip=tiny_clip, sam=litemedsam)


@pytest.mark.parametrize("prompts, message", [
    (None, "must be text or a list of sentences, not NoneType"),
    (5, "not int"),
    (["tumor", 3], "not int"),
    (["Tumor", "tumor "], r"must differ \(ignoring case\)"),
    ([], "No prompt given"),
])
def test_prompts_that_are_not_distinct_text_are_refused(prompts, message):
    from MedCLIPSAMLib.pipeline import check_prompts

    with pytest.raises(InputError, match=message):
        check_prompts(prompts)
    assert check_prompts(["brain tumor ", ["a lesion", " a mass"]]) == [["brain tumor"], ["a lesion", "a mass"]]


def test_a_boolean_image_is_read_as_zero_and_one(fast_settings, tiny_clip, litemedsam):
    from MedCLIPSAMLib.imageio import as_volume, normalize_intensity

    mask = disk_image() > 100
    volume = as_volume(mask)
    assert volume.array.dtype == np.float32 and set(np.unique(volume.array)) == {0.0, 1.0}
    assert set(np.unique(normalize_intensity(volume.array))) == {0, 255}
    assert segment_image(mask, "disk", fast_settings, clip=tiny_clip, sam=litemedsam).mask.shape == mask.shape


def test_blank_slices_are_skipped_and_stay_empty(pipeline):
    volume = np.zeros((6, 64, 64), np.float32)
    for z in (2, 3):
        volume[z] = disk_image(64, 64, (32, 32), 12, seed=z)
    stages = []
    result = pipeline.run(volume, ["disk"], progress=lambda s, d, t: stages.append((s, d, t)))
    assert ("saliency", 2, 2) in stages  # only the two non-blank slices went through CLIP
    assert set(result.boxes["disk"]) <= {2, 3}
    assert not result.masks["disk"][[0, 1, 4, 5]].any()
    assert result.saliency["disk"][[0, 1, 4, 5]].max() == 0


def test_all_blank_volume_gives_empty_result_and_message(pipeline):
    result = pipeline.run(np.zeros((3, 32, 32)), "tumor")
    assert not result.labels.any() and result.scores["tumor"] == 0
    assert any("blank" in m for m in result.messages)


def test_several_prompts_give_several_labels_on_any_axis(pipeline):
    volume = np.stack([disk_image(40, 72, seed=s)[:, :64] for s in range(5)]).astype(np.float32)
    pipeline.settings = pipeline.settings.replace(axis=1)  # slice along y: 40 slices of 5 x 64
    with pytest.raises(InputError, match="too small"):
        pipeline.run(volume, ["a", "b"])
    volume = np.repeat(volume, 4, axis=0)  # 20 x 40 x 64 -> slices of 20 x 64
    result = pipeline.run(volume, ["disk", ["round shape", "a bright circle"]])
    assert result.axis == 1 and result.labels.shape == volume.shape
    assert result.names == ["disk", "round shape"]
    assert set(np.unique(result.labels)) <= {0, 1, 2}
    assert all(result.masks[n].shape == volume.shape for n in result.names)
    first = result.masks["disk"]
    assert ((result.labels == 1) == first).all()  # the first prompt wins where they overlap
    overlap = int((first & result.masks["round shape"]).sum())
    assert overlap  # the two random-CLIP masks share voxels here, so the note is tested
    said = [m for m in result.messages if "'round shape':" in m and "earlier prompt's mask" in m]
    assert said == ([f"'round shape': {overlap} of its {int(result.masks['round shape'].sum())} voxels are also in "
                     "an earlier prompt's mask and carry that prompt's label in the label map (earlier prompts win); "
                     "its whole mask is in result.masks, or segment it alone."] if overlap else [])


def test_slice_range_limits_the_work(pipeline):
    volume = np.stack([disk_image(48, 48, (24, 24), 10, seed=s) for s in range(8)]).astype(np.float32)
    pipeline.settings = pipeline.settings.replace(slice_range=(2, 4))
    result = pipeline.run(volume, "disk")
    assert set(result.boxes["disk"]) <= {2, 3, 4}
    assert not result.masks["disk"][[0, 1, 5, 6, 7]].any()
    pipeline.settings = pipeline.settings.replace(slice_range=(9, 12))
    with pytest.raises(InputError, match="outside the 8 slices"):
        pipeline.run(volume, "disk")


def test_cancel_stops_between_batches_and_returns_nothing(pipeline):
    cancel = threading.Event()
    volume = np.stack([disk_image(48, 48, seed=s) for s in range(4)]).astype(np.float32)
    pipeline.settings = pipeline.settings.replace(clip_batch_size=1)

    def progress(stage, done, total):
        if stage == "saliency" and done == 1:
            cancel.set()

    with pytest.raises(Cancelled):
        pipeline.run(volume, "disk", progress=progress, cancel=cancel)


def test_brain_volume_end_to_end_keeps_geometry_and_bounded_memory(fast_settings, tiny_clip, litemedsam, tmp_path):
    path = shared_data("volumes", "brain1_image.nrrd")
    volume = read_volume(path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = segment_volume(volume, "brain tumor", fast_settings.replace(slice_range=(8, 16), sam_batch_size=2),
                            clip=tiny_clip, sam=litemedsam)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert result.labels.shape == volume.array.shape == (25, 256, 256)
    assert grown_mb < 1500, f"peak memory grew by {grown_mb:.0f} MB"
    out = write_label(result.labels, volume.reference, tmp_path / "seg.nii.gz")
    written, source = sitk.ReadImage(str(out)), sitk.ReadImage(str(path))
    assert written.GetSize() == source.GetSize()
    np.testing.assert_allclose(written.GetSpacing(), source.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(written.GetOrigin(), source.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetDirection(), source.GetDirection(), atol=1e-6)


def test_interpolation_between_key_slices():
    from MedCLIPSAMLib.keyslices import interpolate_between

    maps = np.zeros((7, 2, 2), np.float32)
    maps[1], maps[4] = 1.0, 4.0
    interpolate_between(maps, np.array([1, 4]), np.arange(0, 7))
    assert [float(m[0, 0]) for m in maps] == [1.0, 1.0, 2.0, 3.0, 4.0, 4.0, 4.0]


def test_saliency_stride_computes_fewer_slices_and_default_computes_all(pipeline):
    volume = np.stack([disk_image(48, 48, (24, 24), 10, seed=s) for s in range(7)]).astype(np.float32)
    stages = []
    full = pipeline.run(volume, "disk", progress=lambda s, d, t: stages.append((s, t)))
    assert ("saliency", 7) in stages and pipeline.settings.saliency_stride == 1
    pipeline.settings = pipeline.settings.replace(saliency_stride=3)
    stages.clear()
    strided = pipeline.run(volume, "disk", progress=lambda s, d, t: stages.append((s, t)))
    assert ("saliency", 3) in stages  # slices 0, 3, 6
    raw_full, raw_strided = full.saliency["disk"], strided.saliency["disk"]
    assert raw_full.shape == raw_strided.shape and np.isfinite(raw_strided).all()
    assert raw_strided[1:3].max() > 0  # interpolated, not left empty


def test_air_slices_are_skipped(pipeline):
    volume = np.stack([disk_image(48, 48, (24, 24), 10, seed=s) for s in range(4)]).astype(np.float32)
    volume[0] = np.random.default_rng(0).normal(5, 2, (48, 48))  # noisy air
    volume[0, :2, :5] = 200  # 10 bright pixels: 0.4% of the slice
    stages = []
    result = pipeline.run(volume, "disk", progress=lambda s, d, t: stages.append((s, d, t)))
    assert ("saliency", 3, 3) in stages and not result.masks["disk"][0].any()


def test_changed_settings_reach_the_saliency_stage(pipeline):
    pipeline.settings = pipeline.settings.replace(bottleneck_layer=5, beta=3.0, m2ib_steps=1)
    assert (pipeline.m2ib.config.layer, pipeline.m2ib.config.beta, pipeline.m2ib.config.steps) == (5, 3.0, 1)


def test_out_of_memory_halves_the_batch_and_resumes_where_it_failed():
    import torch
    from MedCLIPSAMLib.pipeline import _with_oom_retry

    seen = []

    def work(part):
        if len(part) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        seen.extend(part.tolist())

    assert _with_oom_retry(work, np.arange(7), 8) == 2
    assert seen == list(range(7))

    def always(part):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(InputError, match="even with one slice"):
        _with_oom_retry(always, np.arange(3), 4)


def test_given_saliency_skips_clip_and_drives_prompts_and_sam(fast_settings, litemedsam, monkeypatch):
    import MedCLIPSAMLib.pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "cached_clip", lambda *a, **k: pytest.fail("CLIP must not load"))
    volume = np.stack([disk_image(64, 80, (30, 40), 12, seed=s) for s in range(5)]).astype(np.float32)
    saliency = np.zeros(volume.shape, np.float32)
    saliency[1:4, 17:44, 27:54] = 1.0  # around the disk, on slices 1-3 only
    result = Pipeline(fast_settings, sam=litemedsam).run(volume, "disk", saliency=[saliency])
    assert sorted(result.boxes["disk"]) == [1, 2, 3]
    mask = result.masks["disk"]
    assert not mask[[0, 4]].any() and mask[2, 30, 40] and not mask[2, 5, 5]
    truth = (np.mgrid[:64, :80][0] - 30) ** 2 + (np.mgrid[:64, :80][1] - 40) ** 2 <= 144
    assert (mask[2] & truth).sum() / (mask[2] | truth).sum() > 0.8


def test_given_saliency_is_checked_and_strided_like_m2ib(fast_settings, litemedsam):
    """Stride 4 over 13 slices: keys 0, 4, 8, 12. The target crosses keys 4 and 8, so the gaps 1-3 and
    9-11 are bisected: 2 and 10 (too faint to pass Otsu), then 3 and 9 (inside), which ends the search.
    8 slices are read; 1 and 11 outside the target and 5-7 inside it are interpolated."""
    volume = np.stack([disk_image(48, 48, (24, 24), 10, seed=s) for s in range(13)]).astype(np.float32)
    saliency = np.zeros(volume.shape, np.float32)
    strength = np.array([0, 0, 1, 2, 4, 6, 9, 6, 4, 2, 1, 0, 0], np.float32)
    saliency[:, 14:35, 14:35] = strength[:, None, None]
    stages = []
    pipeline = Pipeline(fast_settings.replace(saliency_stride=4), sam=litemedsam)
    located = pipeline.locate(volume, "disk", saliency=[saliency], progress=lambda *a: stages.append(a))
    # 5-7 interpolated between slices 4 and 8 (so the peak of 9 is missed), 1 and 11 between 0|2 and 10|12
    expected = np.array([0, 0.5, 1, 2, 4, 4, 4, 4, 4, 2, 1, 0.5, 0]) / 4
    np.testing.assert_allclose(located.targets[0].saliency[:, 24, 24], expected, atol=1e-6)
    assert located.targets[0].saliency[:, 5, 5].max() == 0
    assert stages[0] == ("saliency", 0, 4) and stages[-1] == ("saliency", 8, 8)
    with pytest.raises(InputError, match="one map per prompt"):
        pipeline.locate(volume, ["disk", "square"], saliency=[saliency])
    with pytest.raises(InputError, match="array order and size"):
        pipeline.locate(volume, "disk", saliency=[saliency[:, :10]])


def test_litemedsam_gets_boxes_even_when_points_are_asked_for(fast_settings, litemedsam):
    from types import SimpleNamespace

    volume = disk_image(64, 80, (30, 40), 12)[None].astype(np.float32)
    saliency = np.zeros(volume.shape, np.float32)
    saliency[0, 17:44, 27:54] = 1.0
    settings = fast_settings.replace(prompt_mode="points")
    located = Pipeline(settings, sam=litemedsam).locate(volume, "disk", saliency=[saliency])
    prompts = located.targets[0].prompts[0]
    assert prompts.boxes and not prompts.points
    assert any("box prompts only" in m for m in located.messages)
    vit = SimpleNamespace(name="vit_b")  # only its name is read before SAM runs
    located = Pipeline(settings, sam=vit).locate(volume, "disk", saliency=[saliency])
    prompts = located.targets[0].prompts[0]
    assert prompts.points and not prompts.boxes and not located.messages


def test_a_bad_sam_checkpoint_fails_before_any_saliency_is_computed(tmp_path, fast_settings):
    from types import SimpleNamespace

    from MedCLIPSAMLib.errors import ModelError

    damaged = tmp_path / "sam_vit_b.pth"
    damaged.write_bytes(b"not a checkpoint")
    settings = fast_settings.replace(sam_backend="vit_b", sam_checkpoint=str(damaged))
    no_clip = SimpleNamespace()  # any use of CLIP would raise AttributeError
    volume = disk_image(48, 48, (24, 24), 10)[None].astype(np.float32)
    stages = []
    with pytest.raises(ModelError, match="cannot be read as a SAM vit_b checkpoint"):
        Pipeline(settings, clip=no_clip).run(volume, "disk", progress=lambda *a: stages.append(a))
    assert stages == []


def ct_with_a_nodule() -> tuple[np.ndarray, np.ndarray]:
    """A 40 x 128 x 128 body at 1 x 0.7 x 0.7 mm, and a saliency map with one large region, a 1 cm nodule
    (~1,000 voxels) as salient as it, and a 2-voxel speck."""
    zz, yy, xx = np.mgrid[:40, :128, :128]
    body = (40 + 20 * np.random.default_rng(0).standard_normal((40, 128, 128))).astype(np.float32)
    saliency = np.zeros(body.shape, np.float32)
    saliency[5:30, 10:50, 10:60] = 1.0
    nodule = (zz - 20) ** 2 + ((yy - 90) * 0.7) ** 2 + ((xx - 90) * 0.7) ** 2 <= 5 ** 2
    saliency[nodule] = 1.0
    saliency[35, 120, 120:122] = 1.0
    return body, saliency, nodule


def test_a_small_target_survives_the_size_floor_in_a_large_volume(fast_settings, litemedsam):
    from MedCLIPSAMLib.imageio import as_volume

    body, saliency, nodule = ct_with_a_nodule()
    volume = as_volume(body, spacing=(1.0, 0.7, 0.7))
    relative_only = fast_settings.replace(max_components=3, min_component_fraction=0.01, min_component_mm=0)
    located = Pipeline(relative_only, sam=litemedsam).locate(volume, "nodule", saliency=[saliency])
    target = located.targets[0]
    assert len(target.components) == 1 and not target.coarse[nodule].any()  # 1 % = 6,554 voxels: dropped
    assert any("2 salient region(s) under 6553 voxels were dropped" in m for m in located.messages)
    floored = relative_only.replace(min_component_mm=5.0)  # 5 mm sphere = 65 mm3 = 134 voxels here
    located = Pipeline(floored, sam=litemedsam).locate(volume, "nodule", saliency=[saliency])
    target = located.targets[0]
    assert len(target.components) == 2 and target.coarse[nodule].all()
    assert any("1 salient region(s) under 133 voxels were dropped" in m for m in located.messages)  # the speck


def test_component_ratio_keeps_lesions_close_to_the_best_and_drops_dim_ones(fast_settings, litemedsam):
    image = np.full((96, 96), 60, np.float32) + np.random.default_rng(1).standard_normal((96, 96))
    saliency = np.zeros((96, 96), np.float32)
    saliency[10:30, 10:30], saliency[60:80, 10:30], saliency[40:60, 60:80] = 1.0, 0.9, 0.45
    settings = fast_settings.replace(max_components=3)
    names = lambda s: sorted(c.size for c in Pipeline(s, sam=litemedsam).locate(image, "x", saliency=[saliency[None]])
                             .targets[0].components)
    assert len(names(settings)) == 3  # ratio 0: the K most confident, dim or not
    assert len(names(settings.replace(component_ratio=0.7))) == 2
    assert len(names(settings.replace(component_ratio=0.95))) == 1
