"""`medclipsam serve` as a real process: memory measured from outside, Schemathesis, the token rule, SIGTERM.

One server (tiny random CLIP, LiteMedSAM, ttl 3 s, a 250 MB store) serves the tests in file order, the last
one stops it with SIGTERM; a second one, with a 4 GB store, takes the declared 2 GB upload. Memory is the server's VmRSS (Linux).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from MedCLIPSAMLib.client import EngineClient, Upload
from MedCLIPSAMLib.errors import Cancelled
from MedCLIPSAMLib import wire
from MedCLIPSAMLib.server.serve import READY_LINE
from MedCLIPSAMLib.settings import WHOLE_NUMBER_RANGES
from test_server_hostile import send

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "serve-process-token-0123456789"
TTL = 3.0
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status; POSIX signals")


class Served:
    def __init__(self, process: subprocess.Popen, url: str, log: Path):
        self.process, self.url, self.log, self.token = process, url, log, TOKEN

    def rss(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")


def start_serve(args: list[str], tmp: Path, env: dict | None = None) -> subprocess.Popen:
    log = (tmp / "serve.log").open("w")
    return subprocess.Popen([sys.executable, "-m", "MedCLIPSAMLib.server", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=log, text=True, env={**os.environ, **(env or {})})


def run_serve(tiny_clip_folder, tmp: Path, *options: str):
    """A ``medclipsam serve`` child with the test token; yields it once it prints its URL, kills it after."""
    (tmp / "token").write_text(TOKEN)
    process = start_serve(["--port", "0", "--clip-model", str(tiny_clip_folder), "--sam", "litemedsam",
                           "--device", "cpu", "--ttl", str(TTL), *options, "--token-file", str(tmp / "token")], tmp)
    url = None
    deadline = time.monotonic() + 240
    while url is None:
        line = process.stdout.readline()
        assert line or process.poll() is None, (tmp / "serve.log").read_text()
        assert time.monotonic() < deadline, "serve did not start"
        if line.startswith(READY_LINE):
            url = line.split()[-1]
    yield Served(process, url, tmp / "serve.log")
    if process.poll() is None:
        process.kill()
    process.wait(30)


@pytest.fixture(scope="module")
def served(tiny_clip_folder, tmp_path_factory):
    yield from run_serve(tiny_clip_folder, tmp_path_factory.mktemp("serve"), "--max-stored-mb", "250")


@pytest.fixture(scope="module")
def roomy(tiny_clip_folder, tmp_path_factory):
    """A server that can keep a 2 GB volume (a smaller store refuses one at begin-upload already)."""
    yield from run_serve(tiny_clip_folder, tmp_path_factory.mktemp("serve_roomy"), "--max-stored-mb", "4000")


def settle(served: Served, seconds: float = 1.0) -> int:
    time.sleep(seconds)
    return served.rss()


@pytest.mark.parametrize("host_token, message", [
    ({"MEDCLIPSAM_TOKEN": "short"}, "The token in $MEDCLIPSAM_TOKEN is shorter than 16 characters, too short for 0.0.0.0"),
    ({"MEDCLIPSAM_TOKEN": ""}, "Refusing to listen on 0.0.0.0 without a token of your choosing"),
])
def test_one_token_rule_for_the_environment_and_the_file(tmp_path, host_token, message):
    refused = subprocess.run([sys.executable, "-m", "MedCLIPSAMLib.server", "--host", "0.0.0.0"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120, env={**os.environ, **host_token})
    assert refused.returncode in (2, 3) and message in refused.stderr and "Traceback" not in refused.stderr
    (tmp_path / "token").write_text("short")
    from_file = subprocess.run([sys.executable, "-m", "MedCLIPSAMLib.server", "--host", "0.0.0.0", "--token-file",
                                str(tmp_path / "token")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert f"The token in '{tmp_path / 'token'}' is shorter than 16 characters" in from_file.stderr


def test_schemathesis_finds_no_server_error_and_no_schema_violation(served, tmp_path):
    pytest.importorskip("schemathesis")
    command = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    assert command, "schemathesis is in the test extra"
    # positive_data_acceptance is left out: a schema cannot say that a volume id is the sha256 of the bytes sent,
    # or that a job's volume was uploaded, so schema-valid requests are rightly refused (400/404) by the server.
    run = subprocess.run([command, "run", f"{served.url}/openapi.json", "-H", f"Authorization: Bearer {TOKEN}",
                          "--max-examples", "50", "--checks", "all", "--exclude-checks", "positive_data_acceptance",
                          "--request-timeout", "60", "--seed", "23"],
                         cwd=tmp_path, capture_output=True, encoding="utf-8", errors="replace", timeout=900)
    summary = run.stdout[-3000:]
    assert run.returncode == 0 and " passed" in summary, summary
    print(summary.strip().splitlines()[-1])
    assert served.process.poll() is None, "the server survived the fuzzing"


def test_beginning_a_declared_2_gb_upload_raises_rss_less_than_50_mb(served, roomy):
    request = json.dumps({"volume": "ab" * 32, "size": 2_000_000_000, "part_size": 8_000_000}).encode()
    code, answer, _ = send(served, "POST", "/uploads", request, token=f"Bearer {TOKEN}")
    assert code == 413 and "--max-stored-mb" in answer["detail"]  # its 250 MB store could never keep it
    before = settle(roomy)
    code, answer, _ = send(roomy, "POST", "/uploads", request, token=f"Bearer {TOKEN}")
    assert code == 201, answer
    grown = settle(roomy) - before
    print(f"begin 2 GB upload: RSS +{grown / 1e6:.1f} MB")
    assert grown < 50e6
    send(roomy, "DELETE", f"/uploads/{answer['upload']}", token=f"Bearer {TOKEN}")


def test_a_300_kb_npz_expanding_past_the_limit_gets_413_and_rss_grows_less_than_50_mb(served):
    bomb = io.BytesIO()
    np.savez_compressed(bomb, array=np.zeros((300, 1000, 1000), np.uint8), spacing=np.ones(3))
    payload = bomb.getvalue()
    assert len(payload) < 400_000
    before = settle(served)
    code, answer, _ = send(served, "PUT", f"/volumes/{wire.volume_id(payload)}", payload, token=f"Bearer {TOKEN}")
    grown = settle(served) - before
    print(f"{len(payload) / 1e3:.0f} KB npz expanding to 300 MB: {code}, RSS +{grown / 1e6:.1f} MB")
    assert code == 413 and "expands to 300 MB, over this server's limit of 250 MB" in answer["detail"]
    assert grown < 50e6


def test_after_the_ttl_with_no_requests_the_memory_of_a_volume_is_given_back(served):
    before = settle(served)
    upload = Upload.of(np.random.default_rng(0).normal(size=(20, 1000, 1000)).astype(np.float32), (1.0, 1.0, 1.0))
    client = EngineClient(served.url, TOKEN)
    client.upload(upload)
    held = settle(served, 0.2) - before
    idle = settle(served, TTL + 2.0) - before  # no request in between: the sweeper expires it
    print(f"80 MB volume stored: RSS +{held / 1e6:.0f} MB; after the TTL with no request: +{idle / 1e6:.1f} MB")
    assert held > 80e6 and idle < 50e6
    assert not client.has_volume(upload.id)


def test_sigterm_cancels_the_running_job_tells_its_client_and_exits_0(served):
    client = EngineClient(served.url, TOKEN)
    largest = {name: high for name, (low, high) in WHOLE_NUMBER_RANGES.items() if name != "bottleneck_layer"}
    outcome: dict = {}

    def segment() -> None:
        try:
            client.segment(np.random.default_rng(1).normal(100, 20, (16, 96, 96)), "mass", largest)
        except Exception as exc:  # the test looks at what the client saw
            outcome["error"] = exc

    thread = threading.Thread(target=segment)
    thread.start()
    deadline = time.monotonic() + 120
    while client.info()["queue"]["running"] == 0:
        assert time.monotonic() < deadline and thread.is_alive(), outcome
        time.sleep(0.1)
    time.sleep(1.0)
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(60) == 0, served.log.read_text()[-2000:]
    thread.join(30)
    error = outcome.get("error")
    assert isinstance(error, Cancelled) and "Cancelled: server shutting down" in str(error), repr(error)
    assert "Traceback" not in served.log.read_text()
