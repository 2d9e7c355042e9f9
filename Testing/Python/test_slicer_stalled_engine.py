"""A stalled link (an SSH tunnel that accepts and never answers) costs each timer tick one short wait, never the
old 10 s (runs) per request: requests wait at most REQUEST_TIMEOUT_S, retry-safe ones are asked again on the next
tick, and the run fails with a message only after its patience (real MRML, real engine server, real sockets)."""
import socket
import threading
import time

import pytest

pytest.importorskip("slicer")

from test_mrml import scene, segmentation_converters, volume_node  # noqa: E402,F401  (shared fixtures)
from test_slicer_run import QUICK, drive  # noqa: E402
from MedCLIPSAMLib.slicer.engine_process import RemoteEngine  # noqa: E402
from MedCLIPSAMLib.slicer.patience import REQUEST_TIMEOUT_S, SUBMIT_TIMEOUT_S  # noqa: E402
from MedCLIPSAMLib.slicer.run import APPLIED, FAILED, SegmentRun  # noqa: E402

SLACK_S = 0.4  # a loaded 2-core machine's scheduling, on top of the one wait


class StallingProxy:
    """Forwards to ``target`` (host, port), except the first ``stall`` connections, which it accepts and holds
    without a byte of answer (what a stalled tunnel does)."""

    def __init__(self, target, stall: int):
        self.target, self.stall = target, stall
        self.held = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.stall > 0:
                self.stall -= 1
                self.held.append(client)
                continue
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source, sink) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()
        for held in self.held:
            held.close()


def test_a_run_through_a_tunnel_that_stalls_for_a_while_goes_on_with_short_steps(scene, volume_node, engine_server):
    host, port = engine_server.url.removeprefix("http://").split(":")
    proxy = StallingProxy((host, int(port)), stall=4)
    try:
        run = SegmentRun(RemoteEngine(proxy.url, engine_server.token), scene, volume_node, ["mass"], QUICK)
        seen = drive(run)
        assert run.state == APPLIED, run.error
        assert "Waiting for the engine to answer..." in seen, "the stalled requests were asked again"
        slow = {state: round(s, 2) for state, s in run.step_seconds.items() if state != "running"}
        assert max(slow.values()) < max(REQUEST_TIMEOUT_S, SUBMIT_TIMEOUT_S) + SLACK_S, slow
        assert len(proxy.held) == 4
    finally:
        proxy.close()


def test_a_dead_tunnel_fails_the_run_after_its_patience_with_short_steps_all_along(scene, volume_node):
    proxy = StallingProxy(("127.0.0.1", 9), stall=10_000)
    try:
        run = SegmentRun(RemoteEngine(proxy.url, "token"), scene, volume_node, ["mass"], QUICK, timeout=2.0)
        start = time.monotonic()
        steps = 0
        while not run.finished:
            assert time.monotonic() - start < 20
            run.step()
            steps += 1
        assert run.state == FAILED and run.error.startswith(f"Cannot reach the MedCLIP-SAM engine at {proxy.url}")
        assert steps > 2 and run.longest_step_s < REQUEST_TIMEOUT_S + SLACK_S, run.step_seconds
        assert 2.0 <= time.monotonic() - start < 2.0 + 2 * REQUEST_TIMEOUT_S + 5
    finally:
        proxy.close()


def test_a_correction_through_a_stalling_tunnel_opens_its_session_with_short_steps(scene, volume_node,
                                                                                   engine_server):
    import numpy as np

    from MedCLIPSAMLib.client import EngineClient
    from MedCLIPSAMLib.slicer.correct import IDLE, Correction
    from MedCLIPSAMLib.slicer.mrml import apply_result

    mask = np.zeros((6, 40, 56), np.uint8)
    mask[1, 5:10, 5:10] = 1
    record = apply_result(scene, volume_node, {"tumour": mask})
    host, port = engine_server.url.removeprefix("http://").split(":")
    proxy = StallingProxy((host, int(port)), stall=3)
    try:
        client = EngineClient(proxy.url, engine_server.token, timeout=REQUEST_TIMEOUT_S, patience=30.0)
        correction = Correction(client, scene, volume_node, scene.GetNodeByID(record.segmentation_node_id),
                                record.segment_ids[0], axis=0)
        correction.wait(timeout=60)
        assert correction.state == IDLE and correction.session and not correction.error, correction.error
        assert len(proxy.held) == 3 and correction.longest_step_s < REQUEST_TIMEOUT_S + SLACK_S
        correction.close()
    finally:
        proxy.close()
