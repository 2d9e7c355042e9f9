"""A status poll never holds Slicer's timer tick longer than STATUS_WAIT_S, even when the engine does not answer."""
import socket
import time

import pytest

pytest.importorskip("slicer")

from test_mrml import scene, segmentation_converters, volume_node  # noqa: E402,F401  (shared fixtures)
from MedCLIPSAMLib.client import EngineClient  # noqa: E402
from MedCLIPSAMLib.slicer.engine_process import RemoteEngine  # noqa: E402
from MedCLIPSAMLib.slicer.run import FAILED, RUNNING, STATUS_WAIT_S, SegmentRun  # noqa: E402


def test_an_engine_that_does_not_answer_costs_one_short_wait_per_tick_then_fails_with_a_message(scene, volume_node):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never answers
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    try:
        run = SegmentRun(RemoteEngine(url, "token"), scene, volume_node, ["mass"], timeout=1.5)
        run.client, run.job_id, run.state = EngineClient(url, "token"), "job", RUNNING  # as after a submit
        start = time.monotonic()
        run.step()
        assert run.state == RUNNING and run.progress.text == "Waiting for the engine to answer..."
        assert run.step_seconds[RUNNING] < STATUS_WAIT_S + 0.4
        while not run.finished:
            assert time.monotonic() - start < 10
            run.step()
        assert run.state == FAILED and run.error.startswith(f"Cannot reach the MedCLIP-SAM engine at {url}")
        assert run.longest_step_s < STATUS_WAIT_S + 0.4
    finally:
        silent.close()
