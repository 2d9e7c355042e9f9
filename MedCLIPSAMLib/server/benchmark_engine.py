"""What the server benchmarks share: the sample volume they send and waiting for the child engine."""
from __future__ import annotations

import time

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
