"""`medclipsam benchmark-server`: what the server path costs on top of the same run in-process.

Both paths run the same settings on the bundled sample with the same models (BiomedCLIP's
architecture with random weights, written to a folder the server loads; LiteMedSAM's real
weights). The server is a real ``medclipsam serve`` child process on 127.0.0.1, as Slicer
starts it. The two paths alternate, so the machine's drift hits both; reported per run: wall
and CPU time, the server's own compute time, the transport and polling time (client wall minus
engine time), and the volume bytes sent (the first prompt uploads, later ones send none).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .benchmark_engine import SAMPLE, wait_ready

POLL_SECONDS = 0.2
"""As ``EngineClient.segment`` polls (Slicer's panel polls every 0.25 s)."""


def _timed_job(client, volume, prompt: str, settings: dict[str, Any]) -> dict[str, Any]:
    sent, volume_sent, received = client.bytes_sent, client.volume_bytes_sent, client.bytes_received
    start = time.perf_counter()
    upload = client.prepare(volume)
    prepared = time.perf_counter()
    uploaded = client.upload(upload)
    after_upload = time.perf_counter()
    job = client.submit(upload.id, [prompt], settings)
    while job["state"] not in ("done", "failed", "cancelled"):
        time.sleep(POLL_SECONDS)
        job = client.status(job["id"])
    if job["state"] != "done":
        raise RuntimeError(job["error"])
    fetch = time.perf_counter()
    result = client.result(job["id"])
    end = time.perf_counter()
    return {"wall_s": end - start, "engine_s": job["seconds"], "cpu_s": job["cpu_seconds"],
            "overhead_s": end - start - job["seconds"], "encode_s": prepared - start,
            "upload_s": after_upload - prepared, "result_s": end - fetch, "uploaded": uploaded,
            "sent_bytes": client.bytes_sent - sent, "volume_bytes_sent": client.volume_bytes_sent - volume_sent,
            "received_bytes": client.bytes_received - received, "engine_timings": result.timings}


def run_server_benchmark(clip_size: str = "pubmedbert", device: str = "cpu", sam: str = "litemedsam",
                         settings: dict[str, Any] | None = None, repeats: int = 3,
                         python: str = sys.executable) -> dict[str, Any]:
    """In-process and server runs, alternating ``repeats`` times (the machine's drift hits both alike)."""
    from ..client import EngineClient
    from ..imageio import read_volume
    from ..models.random_clip import make_random_clip
    from ..pipeline import Pipeline
    from ..presets import apply_preset
    from ..settings import Settings, settings_from_dict
    from ..slicer.engine_process import LocalEngine

    settings = dict(settings or {})
    volume = read_volume(SAMPLE)
    local, remote = [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "clip"
        make_random_clip(folder, size=clip_size)
        local_settings, _ = apply_preset(Settings(clip_model=str(folder), device=device, sam_backend=sam),
                                         "brain tumor", settings)
        warm_up = {k: v for k, v in settings.items() if k not in ("slice_range", "axis")}  # on one slice
        pipeline = Pipeline(settings_from_dict(warm_up, local_settings))
        pipeline.run(volume.array[10:11], "brain tumor")  # warm-up, as the server warms up below
        pipeline.settings = settings_from_dict(settings, local_settings)
        engine = LocalEngine(python, ["--clip-model", str(folder), "--sam", sam, "--device", device], tmp)
        engine.start()
        try:
            wait_ready(engine)
            client = EngineClient(engine.url, engine.token, timeout=120)
            _timed_job(client, volume.array[10:11].copy(), "brain tumor", warm_up)
            for _ in range(repeats):
                start, cpu = time.perf_counter(), time.process_time()
                result = pipeline.run(volume, "brain tumor")
                local.append({"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu,
                              "engine_timings": result.timings})
                remote.append(_timed_job(client, volume, "brain tumor", settings))  # uploads the first time only
        finally:
            engine.stop()
    median = statistics.median
    return {"sample": SAMPLE.name, "shape": list(volume.array.shape), "dtype": str(volume.array.dtype),
            "clip": clip_size, "sam": sam, "device": device, "settings": settings, "repeats": repeats,
            "in_process_runs": local, "server_runs": remote,
            "in_process_wall_s": median(r["wall_s"] for r in local), "in_process_cpu_s": median(r["cpu_s"] for r in local),
            "server_wall_s": median(r["wall_s"] for r in remote), "server_cpu_s": median(r["cpu_s"] for r in remote),
            "transport_s": median(r["overhead_s"] for r in remote)}


def format_report(report: dict[str, Any]) -> str:
    first, later = report["server_runs"][0], report["server_runs"][1:]
    lines = [f"{report['sample']} {report['shape']} {report['dtype']}, CLIP {report['clip']} (random weights), "
             f"SAM {report['sam']}, {report['device']}, settings {report['settings']}, {report['repeats']} runs each "
             "(alternating)", "run          wall s   CPU s   (server: engine s, transport ms, volume bytes sent)"]
    for index, (local, remote) in enumerate(zip(report["in_process_runs"], report["server_runs"])):
        lines.append(f"in-process {index + 1} {local['wall_s']:7.2f} {local['cpu_s']:7.2f}")
        lines.append(f"server {index + 1}     {remote['wall_s']:7.2f} {remote['cpu_s']:7.2f}   ({remote['engine_s']:.2f} s, "
                     f"{1000 * remote['overhead_s']:.0f} ms: encode {1000 * remote['encode_s']:.0f}, upload "
                     f"{1000 * remote['upload_s']:.0f}, result {1000 * remote['result_s']:.0f}; "
                     f"{remote['volume_bytes_sent']} B)")
    wall, cpu = report["in_process_wall_s"], report["in_process_cpu_s"]
    lines += [f"median: in-process {wall:.2f} s wall / {cpu:.2f} s CPU; server {report['server_wall_s']:.2f} s wall "
              f"({100 * (report['server_wall_s'] - wall) / wall:+.1f} %) / {report['server_cpu_s']:.2f} s CPU "
              f"({100 * (report['server_cpu_s'] - cpu) / cpu:+.1f} %)",
              f"transport and polling (client wall - engine time): median {1000 * report['transport_s']:.0f} ms "
              f"({100 * report['transport_s'] / wall:.2f} % of an in-process run)",
              f"volume data sent: first prompt {first['volume_bytes_sent']} B, later prompts "
              f"{max((r['volume_bytes_sent'] for r in later), default=0)} B; result received "
              f"{first['received_bytes'] / 1e6:.2f} MB per run"]
    return "\n".join(lines)


def register_cli(sub) -> None:
    from ..options import at_least, number
    from ..outputs import add_output_option, add_overwrite_option

    parser = sub.add_parser("benchmark-server", help="cost of running through 'medclipsam serve' vs in-process")
    parser.add_argument("--clip-size", default="pubmedbert", choices=["pubmedbert", "tiny"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sam", default="litemedsam", choices=["litemedsam", "vit_b", "vit_l", "vit_h"])
    parser.add_argument("--fast", action="store_true", help="the --fast CPU settings (stride 4, 3 samples)")
    parser.add_argument("--steps", type=int, help="M2IB steps")
    parser.add_argument("--samples", type=int, help="M2IB noise samples")
    parser.add_argument("--repeats", type=at_least(1), default=3, help="runs of each path, alternating (default 3)")
    parser.add_argument("--uploads", action="store_true", help="time volume uploads in parts instead (raw, deflate, "
                        "auto; the sample and a ~105 MB CT-like volume)")
    parser.add_argument("--interactions", action="store_true", help="time corrections instead: clicks and boxes on "
                        "an encoded slice through the server, and propagation per slice (LiteMedSAM)")
    parser.add_argument("--part-mb", type=number(0, low_open=True), default=2.0, help="upload part size (MB, default 2)")
    add_output_option(parser, "--json", help="also write the figures to this .json file")
    add_overwrite_option(parser)
    parser.set_defaults(func=cmd_benchmark_server)


def cmd_benchmark_server(args: argparse.Namespace) -> int:
    from ..outputs import check_output, write_json
    from ..pipeline import resolve_device
    from ..settings import FAST_SALIENCY, settings_from_dict

    settings = dict(FAST_SALIENCY) if args.fast else {}
    settings.update({k: v for k, v in {"m2ib_steps": args.steps, "m2ib_samples": args.samples}.items()
                     if v is not None})
    settings_from_dict(settings)  # option errors now, not in the server's log
    resolve_device(args.device)
    if args.json:
        check_output(args.json, "--json", args.overwrite, extensions=(".json",))
    if args.interactions:
        from .interaction_benchmark import format_interaction_report, run_interaction_benchmark

        report = run_interaction_benchmark(max(args.repeats, 10))
        print(format_interaction_report(report))
    elif args.uploads:
        from .upload_benchmark import format_upload_report, run_upload_benchmark

        report = run_upload_benchmark(int(args.part_mb * 1e6), args.repeats)
        print(format_upload_report(report))
    else:
        report = run_server_benchmark(args.clip_size, args.device, args.sam, settings, args.repeats)
        print(format_report(report))
    if args.json:
        write_json(args.json, report, overwrite=args.overwrite)
    return 0
