"""`medclipsam benchmark-server --uploads`: what uploading in parts costs, raw and deflated.

A real ``medclipsam serve`` child process on 127.0.0.1 (as Slicer starts it) receives the bundled
sample and a CT-like int16 volume (~105 MB: air at -1024 around a noisy body) in parts, as the
Slicer module sends them, one ``send_next()`` per step. Reported per volume and mode: bytes on the
wire, total time, per-part times and the longest single step, which bounds how long Slicer's GUI
waits in one timer tick. Each upload is a slightly different volume, so the server never already holds it.
"""
from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import numpy as np

MODES = {"raw": False, "deflate": True, "auto": None}


def ct_like(shape: tuple[int, int, int] = (200, 512, 512), seed: int = 0) -> np.ndarray:
    """int16 like a CT: -1024 outside the reconstruction circle, noisy air, soft tissue and a bone ring."""
    rng = np.random.default_rng(seed)
    _, height, width = shape
    yy, xx = np.mgrid[:height, :width]
    outside = ((yy - height / 2) / (height / 2)) ** 2 + ((xx - width / 2) / (width / 2)) ** 2 > 1
    body = ((yy - height / 2) / (height * 0.33)) ** 2 + ((xx - width / 2) / (width * 0.42)) ** 2
    base = np.full((height, width), -1000.0)
    base[body <= 1] = 40
    base[(body > 0.85) & (body <= 1)] = 700
    array = np.empty(shape, np.int16)
    for index in range(shape[0]):
        slice_ = base + rng.normal(0, 15, (height, width))
        slice_[outside] = -1024
        array[index] = np.round(slice_)
    return array


def time_upload(client, array: np.ndarray, spacing, part_bytes: int, compress: bool | None) -> dict[str, Any]:
    from ..client import Upload

    start = time.perf_counter()
    upload = Upload.of(array, spacing)
    encoded = time.perf_counter()
    sending = client.start_upload(upload, part_bytes, compress)
    begun = time.perf_counter()
    steps = []
    while not sending.finished:
        step = time.perf_counter()
        sending.send_next()
        steps.append(time.perf_counter() - step)
    end = time.perf_counter()
    return {"payload_bytes": sending.total, "wire_bytes": sending.wire_bytes, "parts": sending.parts,
            "encode_s": encoded - start, "begin_s": begun - encoded, "upload_s": end - encoded,
            "part_median_s": statistics.median(steps[:-1]), "part_max_s": max(steps[:-1]), "commit_s": steps[-1],
            "longest_step_s": max([begun - encoded, *steps]), "mb_per_s": sending.total / 1e6 / (end - encoded)}


def run_upload_benchmark(part_bytes: int, repeats: int = 2, ct_shape=(200, 512, 512),
                         python: str = sys.executable) -> dict[str, Any]:
    from ..imageio import read_volume
    from .benchmark_engine import SAMPLE, tiny_engine

    volumes = {SAMPLE.name: (read_volume(SAMPLE).array, (1.0, 1.0, 1.0)), "ct_like": (ct_like(ct_shape), (1.0, 0.7, 0.7))}
    runs: list[dict[str, Any]] = []
    with tiny_engine(python) as client:
        serial = 0
        for name, (array, spacing) in volumes.items():
            for repeat in range(repeats):
                for mode, compress in MODES.items():
                    serial += 1
                    changed = array.copy()
                    changed.flat[0] += serial  # a new volume id each time
                    runs.append({"volume": name, "shape": list(array.shape), "mode": mode, "repeat": repeat,
                                 **time_upload(client, changed, spacing, part_bytes, compress)})
    return {"part_bytes": part_bytes, "repeats": repeats, "runs": runs}


def format_upload_report(report: dict[str, Any]) -> str:
    lines = [f"uploads in parts of {report['part_bytes'] / 1e6:g} MB to a medclipsam serve child on 127.0.0.1 "
             f"({report['repeats']} runs each; median part / longest step = the GUI's longest wait in one tick)",
             "volume              mode     payload MB  wire MB   total s   MB/s  part ms (median/max)  commit ms  "
             "longest step ms  encode ms"]
    for run in report["runs"]:
        lines.append(f"{run['volume']:<19} {run['mode']:<8} {run['payload_bytes'] / 1e6:10.1f} {run['wire_bytes'] / 1e6:8.1f} "
                     f"{run['upload_s']:9.2f} {run['mb_per_s']:6.0f}  {1000 * run['part_median_s']:8.0f}/"
                     f"{1000 * run['part_max_s']:<8.0f}  {1000 * run['commit_s']:13.0f} {1000 * run['longest_step_s']:14.0f}"
                     f" {1000 * run['encode_s']:10.0f}")
    return "\n".join(lines)
