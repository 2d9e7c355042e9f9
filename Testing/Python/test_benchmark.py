"""`medclipsam benchmark`: the report's figures come from a real run, stride and naive baseline included."""
import json

import numpy as np
import pytest

from MedCLIPSAMLib.benchmark import PIPELINE_STAGES, STAGES, format_report, synthetic_volume
from MedCLIPSAMLib.cli import main


def test_synthetic_volume_has_a_tumour_in_its_middle_third():
    volume = synthetic_volume(12, 64)
    assert volume.shape == (12, 64, 64) and volume.dtype == np.float32
    bright = (volume > 700).reshape(12, -1).any(axis=1)
    assert not bright[:3].any() and not bright[-3:].any() and bright[6]


def test_benchmark_reports_every_stage_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["benchmark", "--device", "cpu", "--slices", "9", "--image-size", "64", "--clip-size", "tiny",
                 "--steps", "1", "--samples", "1", "--stride", "4", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report["seconds_per_slice"]) == set(STAGES)
    assert report["seconds_per_slice"]["m2ib"] > 0 and report["naive_seconds_per_slice"]["m2ib_naive"] > 0
    assert report["slices"] == 9 and report["saliency_stride"] == 4 and report["sam_input_size"] == 256
    # keys 0, 4, 8 at least; never more than the 9 slices
    assert 3 <= report["slices_with_saliency"] <= 9
    assert report["m2ib_steps"] == 1 and report["m2ib_samples"] == 1 and report["peak_memory_mb"] > 0
    printed = capsys.readouterr().out
    assert printed.strip() == format_report(report)
    assert f"{report['slices_with_saliency']} with M2IB" in printed and "naive M2IB" in printed
    assert report["faithfulness_slices"] == 2 and report["faithfulness_seconds"] > 0  # the check's cost, stated
    assert "prompt faithfulness check:" in printed
    # today's path ran on the same volume in the same process, with the same result
    assert set(report["stage_seconds"]) == set(report["baseline_stage_seconds"]) == set(PIPELINE_STAGES)
    assert report["baseline_wall_seconds"] > 0 and report["speedup_vs_baseline"] == pytest.approx(
        report["baseline_wall_seconds"] / report["pipeline_wall_seconds"])
    assert report["labels_dice_vs_baseline"] > 0.99 and report["baseline_slices_with_saliency"] == \
        report["slices_with_saliency"]
    assert f"speed-up vs today's path: {report['speedup_vs_baseline']:.2f}x" in printed
    # the CPU's features and each stage's path on both paths, CPU seconds and touched slices per stage
    from MedCLIPSAMLib.models.cpu_features import detect
    assert report["cpu_features"]["summary"] == detect().summary() and detect().level in printed
    assert set(report["stage_paths"]) == set(report["baseline_stage_paths"]) == {
        "clip_features", "m2ib", "sam_encoder", "sam_decoder"}
    assert {p["runtime"] + " " + p["precision"] for p in report["baseline_stage_paths"].values()} == {"PyTorch fp32"}
    assert report["stage_paths"]["m2ib"]["precision"] == ("bf16" if detect().native_bf16 else "fp32")
    assert f"m2ib            PyTorch {report['stage_paths']['m2ib']['precision']}" in printed
    assert report["stage_slices"]["clip_features"] == report["slices_with_saliency"]
    assert report["stage_slices"]["m2ib"] == report["baseline_stage_slices"]["m2ib"] == report["slices_with_saliency"]
    assert report["stage_slices"]["sam_decoder"] == report["slices_with_sam"]
    assert report["pipeline_cpu_seconds"] > 0 and report["stage_cpu_seconds"]["m2ib"] > 0
    assert report["speedup_vs_baseline_cpu_time"] == pytest.approx(
        report["baseline_cpu_seconds"] / report["pipeline_cpu_seconds"])
    assert "stopped early as flat" in printed and report["load_average_before"] >= 0


def test_benchmark_fast_takes_the_fast_shortcuts_and_explicit_options_win(monkeypatch):
    from MedCLIPSAMLib import benchmark

    seen = []
    monkeypatch.setattr(benchmark, "run_benchmark", lambda *args: seen.append(args[-1]) or {})
    monkeypatch.setattr(benchmark, "format_report", lambda report: "figures")
    assert main(["benchmark", "--device", "cpu", "--fast", "--samples", "5"]) == 0
    assert seen[0].saliency_stride == 4 and seen[0].m2ib_samples == 5 and seen[0].m2ib_steps == 10


def test_benchmark_option_errors_exit_2_before_any_model(tmp_path, capsys, monkeypatch):
    from MedCLIPSAMLib import benchmark

    monkeypatch.setattr(benchmark, "run_benchmark", lambda *a: pytest.fail("the benchmark ran"))
    for args, message in ((["--slices", "0"], "--slices must be at least 1 (got 0)"),
                          (["--steps", "0"], "--steps must be between 1 and 100 (got 0)"),
                          (["--device", "foo"], "Unknown --device 'foo'"),
                          (["--json", str(tmp_path / "figures.txt")], "--json '" + str(tmp_path) + "/figures.txt' "
                           "has the unknown extension '.txt'; use one of .json")):
        assert main(["benchmark", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
