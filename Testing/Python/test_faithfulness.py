"""Prompt faithfulness: the scores, the key slices, the pipeline's check and its switch, and a degenerate text
tower that must score unfaithful (the toy-model figures are measured by Testing/measure/faithfulness_match.py;
a right prompt scoring above a wrong one on the trained toy is tested in test_finetune.py)."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from conftest import disk_image
from degenerate import ignore_text
from MedCLIPSAMLib.faithfulness import (UNFAITHFUL_BELOW, WARNING, correlation_score, crop_box, faithfulness_warning,
                                        format_score, match_score, otsu_overlap_score, prompt_faithfulness,
                                        relative_change_score, result_region, strongest_slices)


def test_correlation_score_is_0_for_the_same_map_at_any_scale_and_1_for_an_opposite_one():
    maps = np.random.default_rng(0).random((2, 16, 16))
    assert correlation_score(maps, maps) == pytest.approx(0.0, abs=1e-9)
    assert correlation_score(maps, 3 * maps + 1) == pytest.approx(0.0, abs=1e-9)
    assert correlation_score(maps, 1 - maps) == 1.0  # anti-correlated: clipped to 1
    unrelated = np.random.default_rng(1).random((2, 16, 16))
    assert 0.8 < correlation_score(maps, unrelated) <= 1.0
    assert correlation_score(maps, np.zeros_like(maps)) == 0.0  # a flat map says nothing: no evidence of faith


def test_relative_change_is_the_difference_over_the_prompt_maps_spread():
    maps = np.random.default_rng(4).random((2, 16, 16))
    assert relative_change_score(maps, maps) == 0.0
    nudged = maps + 0.001 * (maps - maps.mean())
    assert relative_change_score(maps, nudged) == pytest.approx(0.001, rel=1e-6)
    assert relative_change_score(maps, 1 - maps) == 1.0 and relative_change_score(np.ones((2, 4, 4)), maps) == 0.0


def test_scores_look_inside_the_body_only():
    rng = np.random.default_rng(2)
    prompt, null = rng.random((1, 20, 20)), rng.random((1, 20, 20))
    body = np.zeros((1, 20, 20), bool)
    body[:, 5:15, 5:15] = True
    null[body] = prompt[body]  # the same inside the body, different in the air around it
    assert correlation_score(prompt, null, body) == pytest.approx(0.0, abs=1e-9)
    assert correlation_score(prompt, null) > 0.2
    assert relative_change_score(prompt, null, body) == 0.0 and relative_change_score(prompt, null) > 0.2


def test_otsu_overlap_score_compares_the_salient_regions():
    left, right = np.zeros((1, 20, 20)), np.zeros((1, 20, 20))
    left[:, 2:8, 2:8], right[:, 12:18, 12:18] = 1.0, 1.0
    assert otsu_overlap_score(left, left) == 0.0
    assert otsu_overlap_score(left, right) == 1.0


def test_strongest_slices_are_the_candidates_where_the_map_peaks_highest_in_slice_order():
    raw = np.zeros((5, 4, 4))
    for z, peak in enumerate([0.1, 0.9, 0.3, 0.8, 0.95]):
        raw[z, 1, 2] = peak
    candidates = np.array([0, 1, 2, 3])  # slice 4 was interpolated: never a key
    np.testing.assert_array_equal(strongest_slices(raw, candidates, 2), [1, 3])
    assert strongest_slices(raw, candidates, 0).size == 0 and strongest_slices(raw, np.array([], int), 2).size == 0


def unit(*values) -> np.ndarray:
    vector = np.asarray(values, dtype=float)
    return vector / np.linalg.norm(vector)


def test_match_score_is_the_prompts_similarity_above_the_nulls_mean():
    disk, square, null = unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1)
    views = np.stack([unit(1, 0, 0.2), unit(1, 0.1, 0.2)])  # crops that look like a disk
    right = match_score(views, disk, np.stack([null]))
    wrong = match_score(views, square, np.stack([null]))
    assert right > 0.7 and wrong < 0 and right > UNFAITHFUL_BELOW > wrong
    expected = np.mean(views @ disk - (views @ np.stack([null, square]).T).mean(axis=1))
    assert match_score(views, disk, np.stack([null, square])) == pytest.approx(expected)
    assert match_score(views, null, np.stack([null, null])) == pytest.approx(0.0, abs=1e-12)  # text changes nothing
    assert match_score(np.zeros((0, 3)), disk, np.stack([null])) == 0.0  # no view: defined, and flagged


def test_the_crop_is_a_square_around_the_region_with_a_margin_and_none_when_empty():
    region = np.zeros((40, 60), bool)
    region[10:20, 30:34] = True  # 10 x 4 px: the square's side follows the longer side
    top, bottom, left, right = crop_box(region, margin=0.25)
    assert (top, left) == (7, 24) and bottom - top == right - left == 15  # side 9 px x 1.5
    corner = np.zeros((40, 60), bool)
    corner[:3, :3] = True
    assert crop_box(corner)[0] == 0 and crop_box(corner)[2] == 0  # cut at the border
    assert crop_box(np.zeros((40, 60), bool)) is None


def test_a_flat_map_looks_at_the_whole_slice_and_a_slice_without_body_scores_none():
    body = np.ones((3, 16, 16), bool)
    flat = np.zeros((3, 16, 16))
    assert not result_region(flat[0], body[0]).any()
    seen = []

    def embed(views):
        seen.extend(views)
        return np.tile(unit(1, 0, 0), (len(views), 1))

    scores = prompt_faithfulness([flat], np.arange(3), body, 2, [unit(1, 0, 0)], np.stack([unit(0, 0, 1)]), embed)
    assert seen == [(0, None), (1, None)] and scores == [pytest.approx(1.0)]
    air = np.zeros_like(body)
    assert prompt_faithfulness([flat], np.arange(3), air, 2, [unit(1, 0, 0)], np.stack([unit(0, 0, 1)]),
                               embed) == [None]


def test_each_prompt_is_scored_on_crops_around_its_own_region_in_one_embedding_call():
    maps = [np.zeros((4, 32, 32)) for _ in range(2)]
    maps[0][1, 4:10, 4:10] = 1.0  # the first prompt's region: slice 1, top left
    maps[1][3, 20:28, 20:28] = 1.0  # the second's: slice 3, bottom right
    calls = []

    def embed(views):
        calls.append(views)
        return np.stack([unit(1, 0, 0) if z == 1 else unit(0, 1, 0) for z, _ in views])

    disk, null = unit(1, 0, 0), unit(0, 0, 1)
    scores = prompt_faithfulness(maps, np.arange(4), np.ones((4, 32, 32), bool), 1, [disk, disk],
                                 np.stack([null]), embed)
    assert len(calls) == 1 and [z for z, _ in calls[0]] == [1, 3]
    top, bottom, left, right = calls[0][0][1]
    assert top <= 4 and bottom >= 10 and right < 20  # the crop holds the first region only
    assert scores[0] == pytest.approx(1.0) and scores[1] == pytest.approx(0.0)


def test_the_warning_is_one_line_under_the_threshold_only():
    assert faithfulness_warning("brain tumor", UNFAITHFUL_BELOW) is None
    assert faithfulness_warning("brain tumor", None) is None
    line = faithfulness_warning("brain tumor", UNFAITHFUL_BELOW / 4)
    assert line.startswith("'brain tumor': " + WARNING) and f"{UNFAITHFUL_BELOW / 4:.2g}" in line and "\n" not in line
    assert format_score(None) == "n/a" and format_score(0.12345) == "0.12" and format_score(0.000412) == "0.00041"


def volume_with_disk(slices: int = 5) -> np.ndarray:
    return np.stack([disk_image(seed=z) for z in range(slices)])


def test_the_pipeline_scores_every_prompt_on_few_slices_and_the_setting_switches_it_off(tiny_clip, litemedsam,
                                                                                      fast_settings):
    from MedCLIPSAMLib.pipeline import Pipeline

    seen = []
    pipeline = Pipeline(fast_settings, clip=tiny_clip, sam=litemedsam)
    result = pipeline.run(volume_with_disk(), ["bright disk", "dark lesion"], lambda *a: seen.append(a))
    assert set(result.faithfulness) == {"bright disk", "dark lesion"}
    assert all(-2.0 <= v <= 2.0 for v in result.faithfulness.values())  # cosine margins
    views = [total for stage, _, total in seen if stage == "faithfulness"]
    assert views and max(views) <= 2 * fast_settings.faithfulness_slices  # per prompt, one view per key slice
    assert result.timings["faithfulness"] > 0

    seen.clear()
    pipeline.settings = fast_settings.replace(faithfulness_slices=0)
    off = pipeline.run(volume_with_disk(), ["bright disk"], lambda *a: seen.append(a))
    assert off.faithfulness == {"bright disk": None} and "faithfulness" not in off.timings
    assert not any(stage == "faithfulness" for stage, _, _ in seen)
    np.testing.assert_array_equal(off.masks["bright disk"], result.masks["bright disk"])  # the check changes no mask


def test_the_setting_is_refused_out_of_range():
    from MedCLIPSAMLib.errors import SettingError
    from MedCLIPSAMLib.settings import Settings

    with pytest.raises(SettingError, match="between 0 \\(off\\) and 16"):
        Settings(faithfulness_slices=-1)


def test_given_saliency_maps_have_no_text_to_check(tiny_clip, litemedsam, fast_settings):
    from MedCLIPSAMLib.pipeline import Pipeline

    volume = volume_with_disk(3)
    maps = [np.ones(volume.shape, np.float32) * (volume > 150)]
    result = Pipeline(fast_settings, clip=tiny_clip, sam=litemedsam).run(volume, ["disk"], saliency=maps)
    assert result.faithfulness == {"disk": None}


@pytest.fixture(scope="module")
def text_ignoring_clip(tiny_clip):
    clone = copy.copy(tiny_clip)
    clone.model = ignore_text(copy.deepcopy(tiny_clip.model))
    return clone


def test_a_text_tower_that_ignores_the_text_scores_unfaithful_and_warns(text_ignoring_clip, litemedsam,
                                                                       fast_settings):
    from MedCLIPSAMLib.pipeline import Pipeline

    a, b = (text_ignoring_clip.encode_text([t], "cpu") for t in ("a bright round disk", "xqz vlorp"))
    assert float((a - b).abs().max()) < 1e-6, "the tower really ignores the text"
    result = Pipeline(fast_settings, clip=text_ignoring_clip, sam=litemedsam).run(
        volume_with_disk(), ["a bright round disk", "xqz vlorp"])
    assert result.faithfulness["a bright round disk"] == pytest.approx(0.0, abs=1e-6)
    assert result.faithfulness["xqz vlorp"] == pytest.approx(0.0, abs=1e-6)
    warnings = [m for m in result.messages if WARNING in m]
    assert len(warnings) == 2 and warnings[0].startswith("'a bright round disk': ")


def test_the_score_travels_in_the_result_bytes():
    from MedCLIPSAMLib.result import SegmentationResult
    from MedCLIPSAMLib import wire

    masks = {"a": np.zeros((1, 4, 4), bool), "b": np.ones((1, 4, 4), bool)}
    result = SegmentationResult(np.zeros((1, 4, 4), np.uint8), masks, {n: np.zeros((1, 4, 4)) for n in masks},
                                {"a": {}, "b": {}}, {"a": 0.0, "b": 0.5}, 0, faithfulness={"a": 0.25, "b": None})
    decoded = wire.decode_result(wire.encode_result(result))
    assert decoded.faithfulness == {"a": 0.25, "b": None}


def test_a_server_reports_the_score_in_the_job_status_and_the_result(text_ignoring_server):
    """End to end on a real server serving the degenerate model from a folder: score 0, and the warning."""
    from MedCLIPSAMLib.client import EngineClient, Upload
    from conftest import ENGINE_TOKEN

    client = EngineClient(text_ignoring_server.url, ENGINE_TOKEN)
    upload = Upload.of(volume_with_disk(3), (2.0, 1.0, 1.0))
    client.upload(upload)
    job = client.submit(upload.id, ["bright disk"], {"m2ib_steps": 2, "m2ib_samples": 2, "refine_rounds": 0})
    assert job["faithfulness"] is None  # not known before the run
    deadline = __import__("time").monotonic() + 300
    while job["state"] not in ("done", "failed", "cancelled"):
        assert __import__("time").monotonic() < deadline
        job = client.status(job["id"])
    assert job["state"] == "done", job["error"]
    assert job["faithfulness"]["bright disk"] == pytest.approx(0.0, abs=1e-6)
    result = client.result(job["id"])
    assert result.faithfulness["bright disk"] == pytest.approx(0.0, abs=1e-6)
    assert any(WARNING in m for m in result.messages)


def test_segment_prints_the_score_per_prompt(tmp_path, tiny_clip_folder, capsys):
    import SimpleITK as sitk

    from MedCLIPSAMLib.cli import main

    image = tmp_path / "disk.png"
    sitk.WriteImage(sitk.GetImageFromArray(disk_image()), str(image))
    common = ["-p", "bright disk", "-p", "dark lesion", "--clip-model", str(tiny_clip_folder), "--sam", "litemedsam",
              "--device", "cpu", "--steps", "2", "--samples", "2", "--refine-rounds", "0", "-q"]
    assert main(["segment", str(image), "-o", str(tmp_path / "on.png"), *common]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("label ")]
    import re

    values = [float(re.search(r"faithfulness=(\S+)", line).group(1)) for line in lines]
    assert len(values) == 2 and all(-2.0 <= v <= 2.0 for v in values)
    assert main(["segment", str(image), "-o", str(tmp_path / "off.png"), "--faithfulness-slices", "0", *common]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("label ")]
    assert len(lines) == 2 and all("faithfulness=n/a" in line for line in lines)
