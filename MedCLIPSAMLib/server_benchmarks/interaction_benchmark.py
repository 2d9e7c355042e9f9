"""`medclipsam benchmark-server --interactions`: how long a correction takes through the server.

A real ``medclipsam serve`` child process on 127.0.0.1 (LiteMedSAM), the bundled sample volume. On one
slice, after its first (encoding) box: clicks and boxes alternate, each timed from the client (request,
decoder pass, answer of the changed slice) and by the engine; the same interactions in-process on the
same machine are the baseline (decoder only). Then propagation from that slice, per slice reached,
against one encoder plus one decoder pass measured in-process.
"""
from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from .benchmark_engine import SAMPLE, tiny_engine

SLICE = 12
BOX = (60, 60, 140, 140)
"""A box on the sample's slice 12 (its tumour region is near; what SAM finds does not change the timing)."""
CLICKS = [(100, 100, False), (150, 100, True), (90, 130, False), (70, 70, True)]


def run_interaction_benchmark(repeats: int = 20, python: str = sys.executable) -> dict[str, Any]:
    from ..imageio import read_volume
    from ..interactive.session import InteractionSession
    from ..models.sam import load_sam

    volume = read_volume(SAMPLE)
    sam = load_sam("litemedsam", None, "cpu")
    local = InteractionSession(sam, volume, axis=0)
    start = time.perf_counter()
    local.cache.get(SLICE)
    encode_ms = 1000 * (time.perf_counter() - start)
    local.box(SLICE, BOX)  # as the server session below: clicks follow a first box
    in_process = [_time(lambda i=i: _interaction(local, i)) for i in range(repeats)]
    with tiny_engine(python) as client:
        upload = client.prepare(volume)
        client.upload(upload)
        session = client.open_session(upload.id, axis=0)["session"]
        first = _time(lambda: client.session_box(session, SLICE, BOX))
        through, engine_s = [], []
        for i in range(repeats):
            answer = None

            def act(i=i):
                nonlocal answer
                answer = _interaction_remote(client, session, i)

            through.append(_time(act))
            engine_s.append(1000 * answer.seconds)
        start = time.perf_counter()
        propagated = client.session_propagate(session, SLICE, "both")
        propagate_ms = 1000 * (time.perf_counter() - start)
        client.close_session(session)
    decoded = len(propagated.slices) + propagated.message.count("on slice")
    median = statistics.median
    decode_ms = median(in_process)
    return {"sample": SAMPLE.name, "shape": list(volume.array.shape), "sam": "litemedsam", "device": "cpu",
            "repeats": repeats, "first_interaction_ms": first, "interaction_ms": through, "engine_ms": engine_s,
            "interaction_ms_median": median(through), "engine_ms_median": median(engine_s),
            "in_process_ms_median": decode_ms, "encode_ms": encode_ms,
            "propagate_ms": propagate_ms, "propagated_slices": len(propagated.slices), "decoded_slices": decoded,
            "propagate_ms_per_slice": propagate_ms / max(decoded, 1),
            "one_encoder_plus_decoder_ms": encode_ms + decode_ms, "propagate_message": propagated.message}


def _interaction(session, i: int):
    if i % 2:
        return session.box(SLICE, BOX)
    return session.click(SLICE, *CLICKS[(i // 2) % len(CLICKS)])


def _interaction_remote(client, session: str, i: int):
    if i % 2:
        return client.session_box(session, SLICE, BOX)
    return client.session_clicks(session, SLICE, [CLICKS[(i // 2) % len(CLICKS)]])


def _time(function) -> float:
    start = time.perf_counter()
    function()
    return 1000 * (time.perf_counter() - start)


def format_interaction_report(report: dict[str, Any]) -> str:
    return "\n".join([
        f"{report['sample']} {report['shape']}, SAM {report['sam']}, {report['device']}, slice {SLICE}, "
        f"{report['repeats']} interactions (clicks and boxes alternating)",
        f"first box (encodes the slice): {report['first_interaction_ms']:.0f} ms; one encoder pass in-process "
        f"{report['encode_ms']:.0f} ms",
        f"interaction on the encoded slice through the server: median {report['interaction_ms_median']:.0f} ms "
        f"(engine {report['engine_ms_median']:.0f} ms; the same in-process {report['in_process_ms_median']:.0f} ms)",
        f"propagation: {report['propagate_ms']:.0f} ms for {report['decoded_slices']} slices decoded "
        f"({report['propagated_slices']} kept) = {report['propagate_ms_per_slice']:.0f} ms per slice "
        f"(one encoder + one decoder pass: {report['one_encoder_plus_decoder_ms']:.0f} ms); "
        f"{report['propagate_message']}"])
