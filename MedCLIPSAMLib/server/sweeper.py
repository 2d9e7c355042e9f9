"""A timer that drops expired uploads, volumes and results, so an idle server gives its memory back.

Without it, expiry ran only when the next request touched a store: a server left alone after a
large upload kept the bytes until someone called again.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Sequence

log = logging.getLogger("medclipsam.server")


class Sweeper:
    """Calls each of ``expires`` every ``interval`` seconds on a daemon thread until ``stop``."""

    def __init__(self, expires: Sequence[Callable[[], None]], interval: float):
        self.expires, self.interval = list(expires), interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="medclipsam-sweeper", daemon=True)

    @staticmethod
    def interval_for(ttl: float) -> float:
        """A quarter of the time to live (expiry is at most that late), between 50 ms and 30 s."""
        return min(30.0, max(0.05, ttl / 4))

    def start(self) -> "Sweeper":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for expire in self.expires:
                try:
                    expire()
                except Exception:  # a bug in one store must not stop the others from expiring
                    log.exception("expiry failed")
