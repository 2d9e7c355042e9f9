"""The server's job queue and volume store on their own (no HTTP, no models)."""
import threading
import time

import numpy as np
import pytest

from MedCLIPSAMLib.errors import InputError
from MedCLIPSAMLib.imageio import as_volume
from MedCLIPSAMLib import wire
from MedCLIPSAMLib.server.jobs import CANCELLED, DONE, FAILED, JobQueue
from MedCLIPSAMLib.server.store import VolumeStore


def wait(job, states=(DONE, FAILED, CANCELLED), timeout=10.0):
    deadline = time.monotonic() + timeout
    while job.state not in states:
        assert time.monotonic() < deadline, job.state
        time.sleep(0.01)
    return job


def test_jobs_run_one_at_a_time_in_order_and_report_progress():
    queue, order, gate = JobQueue(), [], threading.Event()

    def work(name):
        def run(progress, cancel):
            gate.wait(5)
            progress("saliency", 1, 2)
            order.append(name)
            return name
        return run

    jobs = [queue.submit(work(n)) for n in ("a", "b", "c")]
    time.sleep(0.05)
    assert [queue.position(j) for j in jobs] == [0, 1, 2] and jobs[0].state == "running"
    gate.set()
    for job in jobs:
        wait(job)
    assert order == ["a", "b", "c"] and [j.result for j in jobs] == ["a", "b", "c"]
    assert (jobs[0].stage, jobs[0].done, jobs[0].total) == ("saliency", 1, 2) and jobs[0].seconds >= 0
    queue.stop()


def test_a_job_remembers_the_stages_it_left_so_a_slow_poll_still_sees_them():
    queue = JobQueue()

    def run(progress, cancel):
        for stage, done, total in [("saliency", 1, 3), ("saliency", 3, 3), ("sam", 2, 5), ("faithfulness", 1, 2)]:
            progress(stage, done, total)
        return b""

    job = wait(queue.submit(run))
    assert job.finished_stages == [("saliency", 3), ("sam", 5)]
    assert (job.stage, job.done, job.total) == ("faithfulness", 1, 2)
    queue.stop()


def test_cancel_a_queued_job_skips_it_and_a_running_one_stops_at_its_next_check():
    queue, started = JobQueue(), threading.Event()

    def slow(progress, cancel):
        started.set()
        while not cancel.wait(0.01):
            pass
        return "should not count"

    running, waiting = queue.submit(slow), queue.submit(lambda p, c: "never")
    started.wait(5)
    queue.cancel(waiting)
    assert waiting.state == CANCELLED and queue.position(waiting) == 0
    queue.cancel(running)
    assert wait(running).state == CANCELLED and running.result is None
    after = wait(queue.submit(lambda p, c: 42))
    assert after.state == DONE and after.result == 42
    queue.stop()


def test_failures_are_recorded_with_their_kind_and_the_queue_goes_on():
    queue = JobQueue()

    def user_error(p, c):
        raise InputError("Slice range 50-60 is outside the 3 slices.")

    def bug(p, c):
        return {}["missing"]

    first, second, third = queue.submit(user_error), queue.submit(bug), queue.submit(lambda p, c: "ok")
    assert wait(first).state == FAILED and first.error_kind == "InputError" and "outside" in first.error
    assert wait(second).state == FAILED and second.error.startswith("Internal engine error (KeyError")
    assert wait(third).result == "ok"
    queue.stop()


def test_finished_jobs_expire_after_the_ttl():
    queue = JobQueue(ttl=0.05)
    job = wait(queue.submit(lambda p, c: 1))
    assert queue.get(job.id) is job
    time.sleep(0.1)
    assert queue.get(job.id) is None
    queue.stop()


def test_volumes_expire_when_idle_and_the_oldest_go_first_over_the_byte_cap():
    volume = as_volume(np.zeros((2, 16, 16), np.float32))  # 2 KB
    store = VolumeStore(ttl=0.1, max_bytes=6000)  # 2.5 KB each: array and uint8 geometry image
    store.put("a", volume)
    store.put("b", volume)
    assert store.get("a") is volume  # a used last now
    store.put("c", volume)  # 7.5 KB > cap: the least recently used (b) goes
    assert store.get("b") is None and store.get("a") is volume and store.get("c") is volume
    time.sleep(0.15)
    assert store.get("a") is None and len(store) == 0


def test_wire_round_trip_and_refusals():
    array = np.arange(2 * 9 * 10, dtype=np.int16).reshape(2, 9, 10)
    payload = wire.encode_volume(array, (2.5, 0.7, 0.8))
    decoded, spacing = wire.decode_volume(payload)
    np.testing.assert_array_equal(decoded, array)
    assert decoded.dtype == np.int16 and spacing == (2.5, 0.7, 0.8)
    assert wire.volume_id(payload) == wire.volume_id(wire.encode_volume(array, (2.5, 0.7, 0.8)))
    assert wire.volume_id(payload) != wire.volume_id(wire.encode_volume(array, (2.5, 0.7, 0.9)))
    with pytest.raises(InputError, match="one positive spacing per axis"):
        wire.decode_volume(wire.encode_volume(array, (1.0, 1.0)))
    with pytest.raises(InputError, match="one positive spacing per axis"):
        wire.decode_volume(wire.encode_volume(array, (1.0, -1.0, 1.0)))
    with pytest.raises(InputError, match="not a MedCLIP-SAM volume"):
        wire.decode_volume(payload[: len(payload) // 2])


def test_a_model_error_on_the_server_says_the_fix_is_on_the_server():
    from MedCLIPSAMLib.client import job_error
    from MedCLIPSAMLib.errors import InputError, ModelError

    error = job_error({"state": "failed", "error": "SAM vit_b weights are missing; pass --sam-checkpoint FILE.",
                       "error_kind": "ModelError"})
    assert isinstance(error, ModelError) and "on the server" in str(error) and "medclipsam serve" in str(error)
    local = job_error({"state": "failed", "error": "Weights are missing.", "error_kind": "ModelError"}, remote=False)
    assert str(local) == "Weights are missing."  # Slicer's own engine: the panel's model files fix it
    plain = job_error({"state": "failed", "error": "Slice range 5-9 is outside.", "error_kind": "InputError"})
    assert isinstance(plain, InputError) and str(plain) == "Slice range 5-9 is outside."
