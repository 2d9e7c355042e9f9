"""`medclipsam benchmark`: per-stage time per slice with the real architectures at random weights.

Weights do not change the cost, so BiomedCLIP's architecture (ViT-B/16 + a PubMedBERT-sized
BERT) and SAM ViT-B/L/H are built with random weights (no download); LiteMedSAM uses its
real weights. The pipeline runs on a synthetic volume twice in the same process: the default
path (``runtime`` auto: the exported SAM encoder in OpenVINO or ONNX Runtime on a CPU, M2IB's
class-token shortcut, M2IB's blocks in bf16 on a CPU with AMX or AVX512-BF16) and today's reference path
(``runtime`` torch), so ``speedup_vs_baseline`` is a ratio from one
run, and the two label maps are compared. On a CPU the report names the CPU's features (``cpu_features``) and the
runtime and precision each stage took on both paths (``cpu_paths``), with process CPU seconds beside wall seconds
per stage (less disturbed on a shared machine) and the slices each stage touched. A naive baseline (whole network every M2IB step,
fp32, one slice at a time; SAM fp32 at batch 1) is measured too.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from .settings import FAST_SALIENCY, Settings

if TYPE_CHECKING:  # torch loads when a benchmark runs, not when the command line is built
    import torch

STAGES = ("clip_features", "m2ib", "post_processing", "sam_encoder", "sam_decoder", "io")
PIPELINE_STAGES = ("clip_features", "m2ib", "prompts", "sam_encoder", "sam_decoder", "cleanup", "other")
"""The pipeline's own timings (seconds per run); "other": the rest of the wall time (key-slice search,
interpolation, normalisation)."""


def synthetic_volume(slices: int, size: int = 240, seed: int = 0) -> np.ndarray:
    """A head-like ellipse with a bright ellipsoidal 'tumour' in the middle third of the slices."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:slices, :size, :size].astype(np.float32)
    z0, r = slices / 2, max(slices / 6, 1)
    head = ((yy - size / 2) / (0.42 * size)) ** 2 + ((xx - size / 2) / (0.36 * size)) ** 2 <= 1
    tumour = ((zz - z0) / r) ** 2 + ((yy - 0.4 * size) / (0.1 * size)) ** 2 + ((xx - 0.55 * size) / (0.08 * size)) ** 2 <= 1
    volume = np.where(head, 400.0, 0.0) + np.where(tumour, 500.0, 0.0) + rng.normal(0, 20, head.shape)
    return volume.astype(np.float32)


def build_models(sam_name: str, device: torch.device, size: str, folder: Path, sam_input_size: int | None = None):
    from .models.random_clip import random_clip_in_memory
    from .models.sam import load_sam, vit_backend

    clip = random_clip_in_memory(folder, size)
    if sam_name == "litemedsam":
        sam = load_sam("litemedsam", None, str(device), input_size=sam_input_size)
    else:
        from segment_anything import sam_model_registry
        sam = vit_backend(sam_model_registry[sam_name](), sam_name, device, input_size=sam_input_size)
    return clip, sam


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def measure_io(volume: np.ndarray, folder: Path) -> float:
    """Seconds to write and read the volume and write a label map of it (NIfTI, compressed)."""
    start = time.perf_counter()
    path = folder / "bench.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(path), useCompression=True)
    read = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    sitk.WriteImage(sitk.GetImageFromArray((read > 600).astype(np.uint8)), str(folder / "label.nii.gz"),
                    useCompression=True)
    return time.perf_counter() - start


def naive_baseline(clip, sam, slices: np.ndarray, settings: Settings, device: torch.device) -> dict[str, float]:
    """Seconds per slice of the straightforward formulation: naive M2IB, fp32, batch 1; SAM fp32 batch 1."""
    from .saliency import M2IB, M2IBConfig

    m2ib = M2IB(clip, M2IBConfig.from_settings(settings), device, bf16=False)
    text = clip.encode_text(["brain tumor"], device)
    _sync(device)
    start = time.perf_counter()
    m2ib.naive_saliency(slices, text)
    _sync(device)
    m2ib_time = (time.perf_counter() - start) / len(slices)
    amp, sam.amp = sam.amp, False
    start = time.perf_counter()
    for one in slices:
        sam.encode(one[None])
    _sync(device)
    sam.amp = amp
    return {"m2ib_naive": m2ib_time, "sam_encoder_naive": (time.perf_counter() - start) / len(slices)}


def peak_memory_mb(device: torch.device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stage_seconds(timings: dict[str, float], wall: float) -> dict[str, float]:
    """Seconds per pipeline stage of one run, the unaccounted rest as "other"."""
    stages = {stage: timings.get(stage, 0.0) for stage in PIPELINE_STAGES[:-1]}
    stages["other"] = max(0.0, wall - sum(stages.values()))
    return stages


def stage_paths(pipeline) -> dict[str, dict[str, str]]:
    """What each stage of ``pipeline`` runs on: the CPU path table, corrected by what was really loaded (an export
    that failed runs in PyTorch; M2IB's blocks are bf16 only if the copy was made)."""
    import torch
    from .models.cpu_features import detect
    from .models.cpu_paths import OPENVINO, ONNXRUNTIME, TORCH, StagePath, plan_cpu_paths
    from .models.onnx_runtime import runtime_available
    from .models.openvino_runtime import openvino_available

    s = pipeline.settings
    plan = plan_cpu_paths(detect(), runtime=s.runtime, bf16=s.bf16, sam_encoder_bf16=s.sam_encoder_bf16,
                          sam_backend=pipeline.sam.name, openvino=openvino_available(),
                          onnxruntime=runtime_available())
    bf16 = pipeline.m2ib.suffix_dtype == torch.bfloat16
    if (plan["m2ib"].precision == "bf16") != bf16:
        plan["m2ib"] = StagePath(TORCH, "bf16" if bf16 else "fp32", "as loaded")
    encoder = pipeline.sam.runtime_encoder
    runtime = TORCH if encoder is None else OPENVINO if type(encoder).__name__ == "OpenVinoModule" else ONNXRUNTIME
    precision = "fp32" if encoder is None else {"f32": "fp32"}.get(getattr(encoder, "precision", "f32"), "bf16")
    if (runtime, precision) != (plan["sam_encoder"].runtime, plan["sam_encoder"].precision):
        plan["sam_encoder"] = StagePath(runtime, precision, "as loaded (export or precision check fell back)")
    return {stage: path.as_dict() for stage, path in plan.items()}


def timed_run(pipeline, volume: np.ndarray, device: torch.device):
    """The pipeline's result on ``volume``, its wall time in seconds and the process's CPU seconds meanwhile."""
    _sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    result = pipeline.run(volume, "brain tumor")
    _sync(device)
    return result, time.perf_counter() - start, time.process_time() - cpu


def label_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two label maps' foregrounds (1.0 when both are empty)."""
    a, b = a > 0, b > 0
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def run_benchmark(device_name: str = "auto", slices: int = 16, sam_name: str = "litemedsam",
                  size: str = "pubmedbert", naive_slices: int = 1, image_size: int = 240,
                  settings: Settings | None = None) -> dict:
    """Run both paths once (after a warm-up) and return the figures as a dict."""
    import torch
    from .pipeline import Pipeline, resolve_device

    device = resolve_device(device_name)
    settings = (settings or Settings()).replace(device=str(device), sam_backend=sam_name)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        clip, sam = build_models(sam_name, device, size, folder, settings.sam_input_size)
        volume = synthetic_volume(slices, image_size)
        warm = volume[slices // 2: slices // 2 + 1]
        load_before = os.getloadavg()[0]
        pipeline = Pipeline(settings.replace(runtime="auto"), clip=clip, sam=sam)
        start = time.perf_counter()
        notes = pipeline.run(warm, "brain tumor").messages  # warm-up: kernels, caches, the ONNX export
        first_use = time.perf_counter() - start
        reference = Pipeline(settings.replace(runtime="torch"), clip=clip, sam=sam)
        reference.run(warm, "brain tumor")
        m2ib_bf16 = device.type == "cpu" and pipeline.m2ib.suffix_dtype == torch.bfloat16
        encoder = pipeline.sam.runtime_encoder
        onnx = [] if encoder is None else ["sam_encoder"]
        cpu_runtime = "" if encoder is None else (
            f"{'OpenVINO' if type(encoder).__name__ == 'OpenVinoModule' else 'ONNX Runtime'} "
            f"{getattr(encoder, 'precision', 'f32')}")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        io_time = measure_io(volume, folder)
        result, wall, cpu_total = timed_run(pipeline, volume, device)
        baseline, baseline_wall, baseline_cpu_total = timed_run(reference, volume, device)
        peak = peak_memory_mb(device)
        load_after = os.getloadavg()[0]
        paths = {"new": stage_paths(pipeline), "today": stage_paths(reference)} if device.type == "cpu" else {}
        sam_slices = max(1, len(result.boxes["brain tumor"]))
        from .imageio import normalize_intensity
        normalised = normalize_intensity(volume)
        naive = naive_baseline(clip, sam, normalised[slices // 2:slices // 2 + naive_slices], settings, device)
    t = result.timings
    per_slice = {
        "clip_features": t.get("clip_features", 0.0) / slices,
        "m2ib": t.get("m2ib", 0.0) / slices,
        "post_processing": (t.get("prompts", 0.0) + t.get("cleanup", 0.0)) / slices,
        "sam_encoder": t.get("sam_encoder", 0.0) / sam_slices,
        "sam_decoder": t.get("sam_decoder", 0.0) / sam_slices,
        "io": io_time / slices,
    }
    optimised = per_slice["clip_features"] + per_slice["m2ib"] + per_slice["sam_encoder"]
    naive_total = naive["m2ib_naive"] + naive["sam_encoder_naive"]
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "sam": sam_name, "clip": size, "slices": slices,
        "image_size": image_size, "slices_with_saliency": result.saliency_slices, "slices_with_sam": sam_slices,
        "bf16": settings.bf16 and device.type == "cuda" or m2ib_bf16,
        "clip_batch_size": settings.clip_batch_size, "sam_batch_size": settings.sam_batch_for(device.type),
        "m2ib_steps": settings.m2ib_steps, "m2ib_samples": settings.m2ib_samples,
        "saliency_stride": settings.saliency_stride, "sam_input_size": sam.image_size,
        "seconds_per_slice": per_slice, "naive_seconds_per_slice": naive,
        "speedup_vs_naive": naive_total / optimised if optimised else float("nan"),
        "m2ib_speedup_vs_naive": naive["m2ib_naive"] / max(per_slice["clip_features"] + per_slice["m2ib"], 1e-9),
        "pipeline_wall_seconds": wall, "pipeline_seconds_per_slice": wall / slices, "peak_memory_mb": peak,
        "faithfulness_slices": settings.faithfulness_slices, "faithfulness_seconds": t.get("faithfulness", 0.0),
        "onnx_runtime": onnx, "cpu_runtime": cpu_runtime, "m2ib_bf16_blocks": m2ib_bf16,
        "first_use_seconds": first_use, "first_use_messages": notes,
        "stage_seconds": stage_seconds(t, wall),
        "baseline_stage_seconds": stage_seconds(baseline.timings, baseline_wall),
        "baseline_wall_seconds": baseline_wall, "baseline_slices_with_saliency": baseline.saliency_slices,
        "speedup_vs_baseline": baseline_wall / wall if wall else float("nan"),
        "labels_dice_vs_baseline": label_dice(result.labels, baseline.labels),
        "cpu_features": cpu_feature_report(device), "stage_paths": paths.get("new", {}),
        "baseline_stage_paths": paths.get("today", {}),
        "stage_cpu_seconds": cpu_stage_seconds(result.cpu_timings),
        "baseline_stage_cpu_seconds": cpu_stage_seconds(baseline.cpu_timings),
        "pipeline_cpu_seconds": cpu_total, "baseline_cpu_seconds": baseline_cpu_total,
        "speedup_vs_baseline_cpu_time": baseline_cpu_total / max(cpu_total, 1e-9),
        "stage_slices": result.stage_slices, "baseline_stage_slices": baseline.stage_slices,
        "flat_saliency_cv": settings.flat_saliency_cv, "load_average_before": load_before,
        "load_average_after": load_after,
    }


def cpu_feature_report(device: torch.device) -> dict:
    """The CPU's features and the class that decides its path (empty on a GPU run)."""
    if device.type != "cpu":
        return {}
    from .models.cpu_features import detect

    found = detect()
    return {**found.as_dict(), "level": found.level, "summary": found.summary()}


def cpu_stage_seconds(cpu: dict[str, float]) -> dict[str, float]:
    """Process CPU seconds (all threads) of the timed stages; the untimed rest is left out."""
    return {stage: cpu.get(stage, 0.0) for stage in PIPELINE_STAGES[:-1]}


def format_report(report: dict) -> str:
    lines = [f"device {report['device']} ({report['threads']} threads), CLIP {report['clip']}, SAM {report['sam']}, "
             f"{report['slices']} slices of {report['image_size']} px ({report['slices_with_saliency']} with M2IB, "
             f"{report['slices_with_sam']} with SAM at "
             f"{report['sam_input_size']} px), "
             f"bf16 {report['bf16']}", "stage             ms/slice"]
    for stage, value in report["seconds_per_slice"].items():
        lines.append(f"  {stage:15s} {1000 * value:10.1f}")
    naive = report["naive_seconds_per_slice"]
    lines += [f"  {'pipeline (wall)':15s} {1000 * report['pipeline_seconds_per_slice']:10.1f}",
              f"naive M2IB {1000 * naive['m2ib_naive']:.1f} ms/slice, naive SAM encoder "
              f"{1000 * naive['sam_encoder_naive']:.1f} ms/slice",
              f"speed-up vs naive: M2IB {report['m2ib_speedup_vs_naive']:.1f}x, "
              f"M2IB+SAM encoder {report['speedup_vs_naive']:.1f}x",
              f"peak memory {report['peak_memory_mb']:.0f} MB",
              f"prompt faithfulness check: {report['faithfulness_seconds']:.2f} s for the one prompt "
              f"(--faithfulness-slices {report['faithfulness_slices']}; 0 switches it off), included in the wall time",
              *cpu_lines(report),
              f"stage             new s   today s   new cpu s today cpu s  slices new/today  path new | today"]
    new, today = report["stage_seconds"], report["baseline_stage_seconds"]
    cpu_new, cpu_today = report.get("stage_cpu_seconds", {}), report.get("baseline_stage_cpu_seconds", {})
    paths, base_paths = report.get("stage_paths", {}), report.get("baseline_stage_paths", {})
    touched, base_touched = report.get("stage_slices", {}), report.get("baseline_stage_slices", {})
    for stage in PIPELINE_STAGES:
        cpu = (f"{cpu_new[stage]:11.1f} {cpu_today[stage]:12.1f}" if stage in cpu_new else " " * 24)
        counts = (f"{touched.get(stage, 0):>7d}/{base_touched.get(stage, 0):<7d}" if stage in SLICE_STAGES
                  else " " * 15)
        path = (f"  {paths[stage]['runtime']} {paths[stage]['precision']} | {base_paths[stage]['runtime']} "
                f"{base_paths[stage]['precision']}" if stage in paths else "")
        lines.append(f"  {stage:15s} {new[stage]:7.1f} {today[stage]:9.1f} {cpu} {counts}{path}".rstrip())
    lines += [f"  {'end to end':15s} {report['pipeline_wall_seconds']:7.1f} {report['baseline_wall_seconds']:9.1f}"
              + (f" {report['pipeline_cpu_seconds']:11.1f} {report['baseline_cpu_seconds']:12.1f}" if cpu_new else ""),
              f"speed-up vs today's path: {report['speedup_vs_baseline']:.2f}x (same slices, same run)"
              + (f", in CPU time {report['speedup_vs_baseline_cpu_time']:.2f}x" if cpu_new else "")
              + f"; label maps' Dice new vs today {report['labels_dice_vs_baseline']:.4f}",
              *shortcut_lines(report),
              f"first use (warm-up, ONNX export if not cached): {report['first_use_seconds']:.1f} s"]
    return "\n".join(lines)


SLICE_STAGES = ("clip_features", "m2ib", "sam_encoder", "sam_decoder")
"""Stages whose touched slices the table shows (M2IB: slice x prompt optimisations run to the end)."""


def cpu_lines(report: dict) -> list[str]:
    """The CPU's features, and why each stage took its path on the new path."""
    features = report.get("cpu_features") or {}
    if not features:
        return []
    lines = [f"CPU features: {features['summary']} -> {features['level']}; new path per stage:"]
    for stage, path in report.get("stage_paths", {}).items():
        lines.append(f"  {stage:15s} {path['runtime']} {path['precision']} ({path['reason']})")
    return lines


def shortcut_lines(report: dict) -> list[str]:
    """What the work-skipping shortcuts did: flat maps stopped early, repeated slices reused."""
    touched = report.get("stage_slices", {})
    if not touched:
        return []
    return [f"shortcuts: {touched.get('m2ib_flat_skipped', 0)} slice(s) stopped early as flat (--flat-saliency-cv "
            f"{report.get('flat_saliency_cv', 0):g}), {touched.get('saliency_reused', 0)} saliency and "
            f"{touched.get('sam_encoder_reused', 0)} SAM encodings reused from slices with the same pixels; "
            f"load average {report.get('load_average_before', 0):.2f} before, "
            f"{report.get('load_average_after', 0):.2f} after"]


def register_cli(sub: argparse._SubParsersAction) -> None:
    from .options import at_least
    from .outputs import add_output_option, add_overwrite_option

    parser = sub.add_parser("benchmark", help="per-stage speed with the real architectures at random weights")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--slices", type=at_least(1), default=16)
    parser.add_argument("--image-size", type=at_least(32), default=240)
    parser.add_argument("--sam", default="litemedsam", choices=["litemedsam", "vit_b", "vit_l", "vit_h"])
    parser.add_argument("--clip-size", default="pubmedbert", choices=["pubmedbert", "tiny"],
                        help="pubmedbert: BiomedCLIP's architecture; tiny: a quick smoke run")
    parser.add_argument("--naive-slices", type=at_least(1), default=1, help="slices for the naive baseline")
    parser.add_argument("--steps", type=int, help="M2IB steps (default 10)")
    parser.add_argument("--samples", type=int, help="M2IB noise samples (default 10)")
    parser.add_argument("--stride", type=int, help="saliency on every k-th slice")
    parser.add_argument("--fast", action="store_true", help="the CPU shortcuts of --fast: --stride 4 --samples 3")
    parser.add_argument("--sam-input-size", type=int, help="SAM ViT input side in px (default: 1024)")
    parser.add_argument("--faithfulness-slices", type=int,
                        help="prompt check's CLIP views per prompt (default 2; 0: off)")
    parser.add_argument("--flat-saliency-cv", type=float,
                        help="stop M2IB after 2 steps on slices whose map varies less than this (0: off)")
    parser.add_argument("--clip-batch-size", type=int)
    parser.add_argument("--sam-batch-size", type=int)
    parser.add_argument("--fp32", action="store_true", help="disable bf16 autocast on CUDA")
    parser.add_argument("--compile", action="store_true", help="torch.compile the M2IB network")
    add_output_option(parser, "--json", help="also write the figures to this .json file")
    add_overwrite_option(parser)
    parser.set_defaults(func=cmd_benchmark)


def cmd_benchmark(args: argparse.Namespace) -> int:
    from .outputs import check_output, write_json
    from .pipeline import resolve_device

    given = {"m2ib_steps": args.steps, "m2ib_samples": args.samples, "saliency_stride": args.stride,
             "clip_batch_size": args.clip_batch_size, "sam_batch_size": args.sam_batch_size,
             "sam_input_size": args.sam_input_size, "faithfulness_slices": args.faithfulness_slices,
             "flat_saliency_cv": args.flat_saliency_cv}
    changes = (FAST_SALIENCY if args.fast else {}) | {k: v for k, v in given.items() if v is not None}
    settings = Settings(bf16=not args.fp32, compile=args.compile, **changes)
    resolve_device(args.device)
    if args.json:
        check_output(args.json, "--json", args.overwrite, extensions=(".json",))
    report = run_benchmark(args.device, args.slices, args.sam, args.clip_size, args.naive_slices,
                           args.image_size, settings)
    print(format_report(report))
    if args.json:
        write_json(args.json, report, overwrite=args.overwrite)
    return 0
