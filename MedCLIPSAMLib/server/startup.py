"""Model loading as the engine reports it while it starts: one machine-readable line per update.

The server prints ``MedCLIP-SAM loading: <done> <total> <stage>`` on stderr while it loads (and
downloads) its models, before it listens; Slicer's module reads the newest such line from the
engine's log and shows it like a job's progress (bytes of a download). Standard library only.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

LOADING_PREFIX = "MedCLIP-SAM loading:"


def loading_reporter(stream: TextIO | None = None, every_s: float = 0.5) -> Callable[[str, int, int], None]:
    """A progress callback that prints a loading line at most every ``every_s`` seconds, and always the last one."""
    last = [0.0]

    def report(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < every_s:
            return
        last[0] = now
        print(f"{LOADING_PREFIX} {int(done)} {int(total)} {stage}", file=stream or sys.stderr, flush=True)

    return report


def last_loading(log: str) -> tuple[str, int, int] | None:
    """(stage, done, total) of the newest loading line in a log, or None."""
    for line in reversed(log.splitlines()):
        if line.startswith(LOADING_PREFIX):
            parts = line[len(LOADING_PREFIX):].strip().split(" ", 2)
            if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
                return parts[2], int(parts[0]), int(parts[1])
    return None
