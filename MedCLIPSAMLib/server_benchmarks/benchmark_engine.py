"""What the server benchmarks share: the sample volume they send and waiting for the child engine."""
from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..resources import PACKAGE_DIR

SAMPLE = PACKAGE_DIR.parent / "Resources" / "Samples" / "brain1_image.nrrd"
"""The bundled volume every server benchmark sends."""


def wait_ready(engine, timeout: float = 600.0) -> None:
    """Block until a started ``LocalEngine`` answers; its failure or a timeout raises with its log."""
    deadline = time.monotonic() + timeout
    while not engine.ready():
        failure = engine.failure()
        if failure:
            raise RuntimeError(failure)
        if time.monotonic() > deadline:
            raise TimeoutError(f"the engine did not start within {timeout:.0f} s:\n{engine.log_tail()}")
        time.sleep(0.2)


@contextmanager
def tiny_engine(python: str) -> Iterator:
    """A ready ``medclipsam serve`` child (tiny random CLIP, LiteMedSAM, CPU) as an ``EngineClient``; stopped on
    exit. The server benchmarks time transport and corrections, which the CLIP model's size does not change."""
    from ..client import EngineClient
    from ..models.random_clip import make_random_clip
    from ..slicer.engine_process import LocalEngine

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "clip"
        make_random_clip(folder, size="tiny")
        engine = LocalEngine(python, ["--clip-model", str(folder), "--sam", "litemedsam", "--device", "cpu"], tmp)
        engine.start()
        try:
            wait_ready(engine)
            yield EngineClient(engine.url, engine.token, timeout=120)
        finally:
            engine.stop()
