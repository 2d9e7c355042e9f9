"""Results as Slicer reads them: only what it shows, in byte ranges, dropped by the server once fetched.

A real uvicorn server on 127.0.0.1 (tiny random CLIP, LiteMedSAM); nothing is mocked.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from MedCLIPSAMLib.client import EngineClient, EngineError, Upload
from MedCLIPSAMLib import wire
from MedCLIPSAMLib.server.results import byte_range
from conftest import ENGINE_TOKEN as TOKEN

QUICK = {"m2ib_steps": 2, "m2ib_samples": 2, "refine_rounds": 1}


def finished_job(client: EngineClient, **submit) -> str:
    rng = np.random.default_rng(3)
    volume = (rng.random((4, 48, 64)) * 100).astype(np.int16)
    volume[:, 15:30, 20:40] += 400
    upload = Upload.of(volume, (2.0, 0.8, 0.8))
    client.upload(upload)
    job = client.submit(upload.id, ["mass"], QUICK, **submit)
    deadline = time.monotonic() + 120
    while (state := client.status(job["id"])["state"]) not in ("done", "failed", "cancelled"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert state == "done"
    return job["id"]


@pytest.fixture
def client(engine_server) -> EngineClient:
    return EngineClient(engine_server.url, TOKEN)


def test_the_result_arrives_in_parts_without_labels_with_8_bit_saliency_and_is_then_dropped(client):
    job_id = finished_job(client, labels=False, saliency_bits=8)
    download = client.start_result(job_id)
    download.part_bytes = download.SMALLEST_PART = 4000  # several parts of this small result even on loopback
    download.target_seconds = 0.0
    parts = []
    while not download.finished:
        parts.append(download.receive_next())
    assert len(parts) >= 2 and parts[-1][0] == parts[-1][1] == download.total
    assert [done for done, _ in parts] == sorted(done for done, _ in parts)
    result = download.result(raw_saliency=True, rebuild_labels=False)
    assert result.masks["mass"].shape == (4, 48, 64) and result.labels.size == 0
    assert result.saliency["mass"].dtype == np.uint8 and result.saliency["mass"].max() > 0
    with pytest.raises(EngineError, match="already fetched") as gone:
        client.result(job_id)
    assert gone.value.status == 410
    assert client.status(job_id)["state"] == "done", "the job's status stays"


def test_a_whole_fetch_still_works_and_rebuilds_labels_when_they_were_not_sent(client):
    full = client.result(finished_job(client))
    slim = client.start_result(finished_job(client, labels=False, saliency_bits=8))
    while not slim.finished:
        slim.receive_next()
    rebuilt = slim.result()
    np.testing.assert_array_equal(rebuilt.labels, full.labels)
    assert np.abs(rebuilt.saliency["mass"] - full.saliency["mass"]).max() <= 0.5 / 255 + 1e-6
    assert len(wire.encode_result(full, labels=False, saliency_bits=8)) < len(wire.encode_result(full)) / 2


def test_bad_result_requests_get_4xx_and_the_server_keeps_serving(client):
    upload = Upload.of(np.zeros((2, 16, 16), np.int16), (1.0, 1.0, 1.0))
    client.upload(upload)
    with pytest.raises(EngineError, match="'saliency_bits' must be 8 or 16") as bad:
        client.submit(upload.id, ["mass"], saliency_bits=12)
    assert bad.value.status == 400
    job_id = finished_job(client)
    with pytest.raises(EngineError, match="lies outside") as outside:
        client._request("GET", f"/jobs/{job_id}/result", headers={"Range": "bytes=999999999-"})
    assert outside.value.status == 416
    with pytest.raises(EngineError, match="not understood"):
        client._request("GET", f"/jobs/{job_id}/result", headers={"Range": "lines=1-2"})
    assert client.result(job_id).names == ["mass"]


def test_byte_range_reads_open_and_clipped_ranges():
    assert byte_range(None, 10) is None
    assert byte_range("bytes=0-3", 10) == (0, 4)
    assert byte_range("bytes=6-", 10) == (6, 10)
    assert byte_range("bytes=6-100", 10) == (6, 10)


def test_a_commit_that_outlasts_its_wait_is_followed_up_without_holding_the_caller(client):
    followed_up = 0
    for seed in range(4, 9):  # a fresh volume each try: storing 4 MB takes a few ms, rarely under the 1 ms wait
        rng = np.random.default_rng(seed)
        upload = Upload.of((rng.random((20, 256, 390)) * 1000).astype(np.int16), (2.0, 0.8, 0.8))  # 4 MB
        sending = client.start_upload(upload, part_bytes=2_000_000, compress=False)
        sending.commit_wait = 0.001  # shorter than storing 4 MB takes: the answer comes after the wait
        steps = 0
        while not sending.finished:
            sending.send_next()
            steps += 1
            assert steps < 10_000
        assert client.has_volume(upload.id)
        if steps >= sending.parts + 2:  # parts, the commit that timed out, then at least one HEAD
            followed_up += 1
            break
    assert followed_up, "no commit outlasted its 1 ms wait in five tries"
    job = client.submit(upload.id, ["mass"], QUICK | {"slice_range": [10, 10]})
    assert job["state"] in ("queued", "running")
    client.cancel(job["id"])
