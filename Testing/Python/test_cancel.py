"""Cancel reaches inside the long loops: M2IB steps and SAM batches stop within a layer, not a batch.

The settings are the largest the settings allow, so one M2IB step (32 slices x 20 noise samples)
or one SAM encoder batch (16 slices) takes far longer on this CPU than the time a cancel may take.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from MedCLIPSAMLib.client import EngineClient, Upload
from MedCLIPSAMLib.errors import Cancelled
from MedCLIPSAMLib.models.interrupt import Interrupt
from MedCLIPSAMLib.settings import WHOLE_NUMBER_RANGES
from conftest import ENGINE_TOKEN

LARGEST = {name: high for name, (low, high) in WHOLE_NUMBER_RANGES.items() if name != "bottleneck_layer"}


def test_an_interrupt_calls_the_current_runs_check_and_nothing_between_runs():
    interrupt, calls = Interrupt(), []
    interrupt()  # no run: nothing to check
    with interrupt.checking(lambda: calls.append("outer")):
        with interrupt.checking(lambda: calls.append("inner")):
            interrupt()
        interrupt()
    interrupt()
    assert calls == ["inner", "outer"]


def test_a_job_with_the_largest_settings_is_cancelled_within_5_s_of_delete(engine_server):
    client = EngineClient(engine_server.url, ENGINE_TOKEN)
    upload = Upload.of(np.random.default_rng(5).normal(100, 20, (40, 96, 96)).astype(np.float32), (2.0, 1.0, 1.0))
    client.upload(upload)
    job = client.submit(upload.id, ["mass"], LARGEST | {"slice_range": None})
    deadline = time.monotonic() + 120
    while client.status(job["id"])["stage"] != "saliency":
        assert time.monotonic() < deadline, client.status(job["id"])
        time.sleep(0.05)
    time.sleep(1.0)  # inside the first M2IB step (tens of seconds at these settings)
    asked = time.monotonic()
    client.cancel(job["id"])
    while (status := client.status(job["id"]))["state"] not in ("done", "failed", "cancelled"):
        assert time.monotonic() - asked < 30, status
        time.sleep(0.02)
    took = time.monotonic() - asked
    print(f"server job at the largest settings: cancelled {took:.2f} s after DELETE (stage {status['stage']})")
    assert status["state"] == "cancelled" and status["error"] == "Segmentation cancelled; nothing was changed."
    assert took < 5.0, f"cancel took {took:.1f} s"


def test_a_sam_batch_of_the_largest_size_stops_within_5_s(litemedsam, fast_settings):
    from MedCLIPSAMLib.pipeline import Pipeline

    volume = np.random.default_rng(6).normal(100, 20, (32, 128, 128)).astype(np.float32)
    saliency = np.zeros(volume.shape, np.float32)
    saliency[:, 40:90, 40:90] = 1.0  # a target on every slice: SAM on all 32, in batches of 16
    settings = fast_settings.replace(sam_batch_size=16, refine_rounds=5, refine_min_shrink=0.0)
    cancel, asked = threading.Event(), []

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "sam" and not asked:
            asked.append(time.monotonic() + 1.0)
            threading.Timer(1.0, cancel.set).start()  # inside the first encoder batch

    with pytest.raises(Cancelled):
        Pipeline(settings, sam=litemedsam).run(volume, "mass", progress, cancel, saliency=[saliency])
    took = time.monotonic() - asked[0]
    print(f"SAM batch of 16 slices: stopped {took:.2f} s after cancel")
    assert took < 5.0, f"cancel took {took:.1f} s"
    litemedsam.encode(np.zeros((1, 64, 64), np.uint8))  # the next run of the shared model is not cancelled
