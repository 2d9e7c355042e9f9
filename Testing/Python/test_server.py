"""The engine server, for real: uvicorn on 127.0.0.1 in this process, the tiny CLIP and LiteMedSAM.

Every test talks HTTP through ``EngineClient`` (or urllib for malformed requests); nothing is mocked.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from MedCLIPSAMLib.client import EngineClient, EngineError, Upload
from MedCLIPSAMLib.errors import Cancelled, InputError
from conftest import ENGINE_MAX_UPLOAD as MAX_UPLOAD, ENGINE_TOKEN as TOKEN

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "Resources" / "Samples" / "brain1_image.nrrd"
QUICK = {"m2ib_steps": 2, "m2ib_samples": 2, "slice_range": [10, 12], "refine_rounds": 1}


@pytest.fixture(scope="module")
def server(engine_server):
    return engine_server


@pytest.fixture
def client(server) -> EngineClient:
    return EngineClient(server.url, TOKEN)


def wait_for(client: EngineClient, job_id: str, states, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = client.status(job_id)
        if status["state"] in states:
            return status
        assert time.monotonic() < deadline, f"job stuck in {status}"
        time.sleep(0.05)


def test_sample_through_the_server_equals_the_in_process_pipeline(client, tiny_clip_folder):
    from MedCLIPSAMLib.imageio import read_volume
    from MedCLIPSAMLib.pipeline import segment_volume
    from MedCLIPSAMLib.presets import apply_preset
    from MedCLIPSAMLib.settings import Settings, settings_from_dict

    seen = []
    remote = client.segment(str(SAMPLE), "brain tumor", QUICK, progress=lambda *a: seen.append(a))
    base, _ = apply_preset(Settings(clip_model=str(tiny_clip_folder), device="cpu"), "brain tumor", QUICK)
    local = segment_volume(read_volume(SAMPLE), ["brain tumor"], settings_from_dict(QUICK, base))

    assert remote.names == local.names == ["brain tumor"]
    assert remote.labels.shape == (25, 256, 256) and remote.labels.dtype == local.labels.dtype
    np.testing.assert_array_equal(remote.labels, local.labels)
    np.testing.assert_array_equal(remote.masks["brain tumor"], local.masks["brain tumor"])
    np.testing.assert_allclose(remote.saliency["brain tumor"], local.saliency["brain tumor"], atol=1e-5)
    assert remote.boxes == local.boxes and remote.scores == pytest.approx(local.scores)
    assert remote.axis == local.axis and remote.saliency_slices == local.saliency_slices == 3
    assert remote.labels[10:13].any() and not remote.labels[:10].any(), "only the asked slices are labelled"
    stages = {stage for stage, _, _ in seen}
    assert {"saliency", "sam"} <= stages and all(done <= total for _, done, total in seen)
    assert seen[-1][0] == "sam" and seen[-1][1] == seen[-1][2], "the last bar ends full, as in a local run"
    assert set(remote.timings) >= {"m2ib", "sam_encoder", "total"}


def test_a_second_prompt_on_the_same_volume_uploads_nothing(client):
    array = np.random.default_rng(1).normal(100, 20, (4, 64, 64)).astype(np.float32)
    client.segment(array, "lesion", QUICK | {"slice_range": [1, 1]}, spacing=(3.0, 1.0, 1.0))
    sent = client.bytes_sent
    assert sent > array.nbytes
    second = client.segment(array, "edema", QUICK | {"slice_range": [1, 1]}, spacing=(3.0, 1.0, 1.0))
    assert client.bytes_sent - sent < 1024
    assert second.names == ["edema"] and second.labels.shape == array.shape


def test_cancel_mid_run_gives_no_result_and_the_next_job_runs(client):
    upload = Upload.of(np.random.default_rng(2).normal(100, 20, (12, 96, 96)).astype(np.float32), (2.0, 1.0, 1.0))
    client.upload(upload)
    job = client.submit(upload.id, ["mass"], {"m2ib_steps": 3, "m2ib_samples": 2, "clip_batch_size": 1,
                                             "slice_range": None})
    running = wait_for(client, job["id"], ("running",))
    deadline = time.monotonic() + 60
    while not client.status(job["id"])["stage"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    client.cancel(job["id"])
    assert running["state"] == "running"
    final = wait_for(client, job["id"], ("done", "failed", "cancelled"))
    assert final["state"] == "cancelled"
    with pytest.raises(EngineError) as refused:
        client.result(job["id"])
    assert refused.value.status == 409
    after = client.segment(np.zeros((2, 32, 32)) + np.arange(32), "mass", QUICK | {"slice_range": [0, 0]})
    assert after.labels.shape == (2, 32, 32)


def test_cancel_through_segment_raises_cancelled(client):
    cancel = threading.Event()
    timer = threading.Timer(0.5, cancel.set)
    timer.start()
    with pytest.raises(Cancelled):
        client.segment(np.random.default_rng(3).normal(size=(10, 96, 96)), "mass", {"m2ib_steps": 3,
                       "clip_batch_size": 1}, cancel=cancel)
    assert client.info()["queue"] == {"queued": 0, "running": 0} or wait_idle(client)


def wait_idle(client: EngineClient, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while client.info()["queue"]["running"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return True


def test_jobs_of_two_clients_run_one_at_a_time_in_queue_order(server):
    first, second = EngineClient(server.url, TOKEN), EngineClient(server.url, TOKEN)
    upload = Upload.of(np.random.default_rng(4).normal(100, 20, (3, 64, 64)), (1.0, 1.0, 1.0))
    first.upload(upload)
    a = first.submit(upload.id, ["mass"], QUICK | {"slice_range": None})
    b = second.submit(upload.id, ["cyst"], QUICK | {"slice_range": None})
    assert b["state"] == "queued" and b["position"] >= 1
    wait_for(second, b["id"], ("running", "done"))
    assert first.status(a["id"])["state"] == "done", "the second job started before the first finished"
    wait_for(second, b["id"], ("done",))
    assert first.result(a["id"]).names == ["mass"] and second.result(b["id"]).names == ["cyst"]


def test_wrong_or_missing_token_is_401(server):
    with pytest.raises(EngineError) as wrong:
        EngineClient(server.url, "not-the-token").info()
    assert wrong.value.status == 401 and "token" in str(wrong.value)
    request = urllib.request.Request(server.url + "/info")
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(request, timeout=10)
    assert missing.value.code == 401


def raw(server, method: str, path: str, body: bytes | None = None, token: str = TOKEN) -> tuple[int, str]:
    request = urllib.request.Request(server.url + path, data=body, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read().decode())["detail"]


def test_bad_requests_get_4xx_with_a_message_and_the_server_keeps_running(server, client):
    garbage = b"not a volume at all"
    from MedCLIPSAMLib.wire import volume_id

    code, detail = raw(server, "PUT", f"/volumes/{volume_id(garbage)}", garbage)
    assert code == 400 and "not a MedCLIP-SAM volume" in detail
    good = Upload.of(np.ones((2, 16, 16)), (1.0, 1.0, 1.0))
    code, detail = raw(server, "PUT", "/volumes/" + "0" * 64, good.payload)
    assert code == 400 and "sha256 does not match" in detail
    strings = Upload.of(np.array([["a"] * 16] * 16))
    code, detail = raw(server, "PUT", f"/volumes/{strings.id}", strings.payload)
    assert code == 400 and "pixel type" in detail
    import io
    for name, fields in (("text spacing", {"array": np.ones((2, 16, 16)), "spacing": np.array(["a", "b", "c"])}),
                         ("huge header", None)):
        if fields is None:  # a few hundred bytes whose .npy header declares 2**40 elements
            import zipfile
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False,
                                                          "shape": (2 ** 40,)})
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w") as archive:
                archive.writestr("array.npy", header.getvalue())
                archive.writestr("spacing.npy", header.getvalue())
            payload = buffer.getvalue()
        else:
            buffer = io.BytesIO()
            np.savez(buffer, **fields)
            payload = buffer.getvalue()
        code, detail = raw(server, "PUT", f"/volumes/{volume_id(payload)}", payload)
        assert code == 400 and ("spacing" in detail or "larger than the server" in detail or
                                "not a MedCLIP-SAM volume" in detail), (name, code, detail)
        assert "allow_pickle" not in detail
    tiny = Upload.of(np.ones((2, 4, 4)))
    code, detail = raw(server, "PUT", f"/volumes/{tiny.id}", tiny.payload)
    assert code == 400 and "too small" in detail

    client.upload(good)
    cases = [
        ({"volume": good.id, "prompts": [""]}, 400, "prompt is empty"),
        ({"volume": good.id, "prompts": []}, 400, "No prompt"),
        ({"volume": good.id, "prompts": ["x"], "settings": {"beta": "high"}}, 400, "'beta' must be a number"),
        ({"volume": good.id, "prompts": ["x"], "settings": {"max_components": 0}}, 400, "between 1 and 20 (got 0)"),
        ({"volume": good.id, "prompts": ["x"], "settings": {"m2ib_steps": 10 ** 9}}, 400,
         "'m2ib_steps' must be between 1 and 100 (got 1000000000)"),
        ({"volume": good.id, "prompts": ["x"], "settings": {"flavour": 1}}, 400, "Unknown setting 'flavour'"),
        ({"volume": good.id, "prompts": ["x"], "settings": {"clip_model": "/etc/passwd"}}, 400, "chosen when the server"),
        ({"volume": "f" * 64, "prompts": ["x"]}, 404, "does not hold that volume"),
        ({"volume": good.id, "prompts": ["x"], "colour": "red"}, 400, "Unknown job field"),
        ({"volume": good.id, "prompts": ["x"], "settings": "abc"}, 400, "Settings must be an object"),
        ({"volume": good.id, "prompts": ["x"], "settings": [["beta", 2]]}, 400, "Settings must be an object"),
        ({"volume": good.id, "prompts": ["x"], "settings": {"zoom_below": 10 ** 400}}, 400, "too large"),
        ({"volume": good.id, "prompts": ["x"], "settings": {"seed": 2 ** 70}}, 400, "'seed' must be between"),
        ({"volume": good.id, "prompts": ["x"], "presets": "false"}, 400, "'presets' must be true or false"),
        ({"volume": good.id, "prompts": ["x"], "saliency": []}, 400, "'saliency' must be true or false"),
    ]
    for body, status, words in cases:
        code, detail = raw(server, "POST", "/jobs", json.dumps(body).encode())
        assert (code, words in detail) == (status, True), (body, code, detail)
    code, detail = raw(server, "POST", "/jobs", b"{not json")
    assert code == 400 and "not JSON" in detail
    code, detail = raw(server, "GET", "/jobs/nope")
    assert code == 404
    with pytest.raises(InputError, match="Slice range 50-60 is outside"):
        client.segment(np.ones((2, 16, 16)), "x", {"slice_range": [50, 60]}, spacing=(1, 1, 1))
    assert client.info()["version"]


def test_an_oversized_upload_is_refused_with_413(server, client):
    big = Upload.of(np.zeros((6, 512, 512), dtype=np.float32))
    assert len(big.payload) > MAX_UPLOAD
    with pytest.raises(EngineError) as refused:
        client.upload(big)
    assert refused.value.status == 413 and "upload limit" in str(refused.value)
    assert not client.has_volume(big.id)
    # the server itself refuses on the declared size, before reading a byte of the body
    import http.client

    connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=30)
    connection.putrequest("PUT", f"/volumes/{big.id}")
    connection.putheader("Authorization", f"Bearer {TOKEN}")
    connection.putheader("Content-Length", str(len(big.payload)))
    connection.endheaders()
    answer = connection.getresponse()
    assert answer.status == 413 and "over this server's limit" in json.loads(answer.read())["detail"]
    connection.close()
    assert client.info()["volumes"] >= 1


def test_the_client_module_does_not_import_torch():
    code = ("import sys, MedCLIPSAMLib.client; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'fastapi', 'uvicorn', 'SimpleITK')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_segment_command_with_server_writes_what_the_engine_computed(server, client, tmp_path, monkeypatch):
    from MedCLIPSAMLib.cli import main
    import SimpleITK as sitk

    monkeypatch.setenv("MEDCLIPSAM_TOKEN", TOKEN)
    out = tmp_path / "tumour.nii.gz"
    code = main(["segment", str(SAMPLE), "-p", "brain tumor", "--server", server.url, "--slices", "10-12",
                 "--steps", "2", "--samples", "2", "--refine-rounds", "1", "-o", str(out), "-q"])
    assert code == 0
    written = sitk.ReadImage(str(out))
    reference = sitk.ReadImage(str(SAMPLE))
    assert written.GetSpacing() == pytest.approx(reference.GetSpacing())
    assert written.GetOrigin() == pytest.approx(reference.GetOrigin(), abs=1e-4)
    assert written.GetDirection() == pytest.approx(reference.GetDirection(), abs=1e-6)
    direct = client.segment(str(SAMPLE), "brain tumor", QUICK)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), direct.labels)
    assert main(["segment", str(SAMPLE), "-p", "x", "--server", server.url, "--device", "cpu",
                 "-o", str(tmp_path / "b.nii.gz")]) == 2


def test_serve_command_prints_where_it_listens_and_refuses_an_open_host_without_token(tiny_clip_folder, tmp_path):
    refused = subprocess.run([sys.executable, "-m", "MedCLIPSAMLib.server", "--host", "0.0.0.0",
                              "--clip-model", str(tiny_clip_folder)], capture_output=True, text=True, cwd=ROOT,
                             env={**__import__("os").environ, "MEDCLIPSAM_TOKEN": ""}, timeout=120)
    assert refused.returncode == 2 and "Refusing to listen on 0.0.0.0" in refused.stderr
    assert "Traceback" not in refused.stderr
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = subprocess.run([sys.executable, "-m", "MedCLIPSAMLib.server", "--port", str(taken.getsockname()[1]),
                               "--clip-model", str(tiny_clip_folder), "--sam", "litemedsam", "--device", "cpu"],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert busy.returncode == 3 and "Cannot listen on 127.0.0.1" in busy.stderr
    assert "Loading models" not in busy.stderr  # refused before any model loads

    from MedCLIPSAMLib.slicer.engine_process import LocalEngine

    engine = LocalEngine(sys.executable, ["--clip-model", str(tiny_clip_folder), "--sam", "litemedsam",
                                          "--device", "cpu"], log_folder=tmp_path)
    try:
        engine.start()
        deadline = time.monotonic() + 180
        while not engine.ready():
            assert engine.failure() is None, engine.failure()
            assert time.monotonic() < deadline, engine.log_tail()
            time.sleep(0.2)
        assert engine.url.startswith("http://127.0.0.1:")
        info = EngineClient(engine.url, engine.token).info()
        assert info["device"] == "cpu" and info["default_sam"] == "litemedsam"
        assert "FutureWarning" not in engine.log_tail(50), "third-party deprecation noise in the engine log"
    finally:
        engine.stop()
    assert engine.process.poll() is not None


def test_an_engine_that_cannot_start_reports_its_own_error_line(tmp_path):
    from MedCLIPSAMLib.slicer.engine_process import LocalEngine

    engine = LocalEngine(sys.executable, ["--device", "tpu9"], log_folder=tmp_path)
    engine.start()
    engine.process.wait(120)
    assert not engine.ready()
    assert engine.failure() == "Unknown --device 'tpu9': use auto, cpu, cuda or cuda:N."


def test_server_benchmark_reports_overhead_and_sends_no_volume_for_a_second_prompt():
    from MedCLIPSAMLib.server_benchmarks.benchmark import format_report, run_server_benchmark

    report = run_server_benchmark("tiny", "cpu", "litemedsam", {"slice_range": [10, 11], "m2ib_steps": 1,
                                                                 "m2ib_samples": 1, "refine_rounds": 0}, repeats=2)
    first, second = report["server_runs"]
    assert first["uploaded"] and first["volume_bytes_sent"] > 25 * 256 * 256 * 2
    assert not second["uploaded"] and second["volume_bytes_sent"] == 0
    for job in (first, second):
        assert 0 < job["engine_s"] <= job["wall_s"] and job["cpu_s"] > 0
        assert job["overhead_s"] == pytest.approx(job["wall_s"] - job["engine_s"])
        assert set(job["engine_timings"]) >= {"m2ib", "sam_encoder", "total"}
    assert len(report["in_process_runs"]) == 2 and report["in_process_wall_s"] > 0
    text = format_report(report)
    assert "later prompts 0 B" in text and "in-process 2" in text and "server 2" in text


def test_stopping_an_engine_behind_a_launcher_ends_the_python_too(tiny_clip_folder, tmp_path):
    """Slicer's PythonSlicer starts the real Python as a child and does not pass signals on; stopping the
    engine (here while it still loads its models) must end that Python as well."""
    import re

    from MedCLIPSAMLib.server.serve import process_alive
    from MedCLIPSAMLib.slicer.engine_process import LocalEngine

    launcher = tmp_path / "PythonSlicer"
    launcher.write_text(f"#!/bin/sh\n{sys.executable} \"$@\"\necho launcher-done\n")
    launcher.chmod(0o755)
    engine = LocalEngine(str(launcher), ["--clip-model", str(tiny_clip_folder), "--device", "cpu"], log_folder=tmp_path)
    engine.start()
    deadline = time.monotonic() + 120
    while not (match := re.search(r"pid (\d+)\)", engine.log_tail(50))):
        assert time.monotonic() < deadline and engine.failure() is None, engine.log_tail()
        time.sleep(0.05)
    python_pid = int(match.group(1))
    assert python_pid != engine.process.pid and process_alive(python_pid)
    engine.stop()
    deadline = time.monotonic() + 10
    while process_alive(python_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not process_alive(python_pid), "the engine's Python outlived its launcher"
