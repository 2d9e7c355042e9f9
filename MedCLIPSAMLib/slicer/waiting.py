"""What the panel does once something it waits for is there (Qt-free): an install, a starting engine.

An install can be asked for by Segment, by a Correct button or by "Download models now"; when it
succeeds, only the action that asked for it goes on (``Resume``), never a Segment run nobody asked
for. A correction asked for while the local engine is still starting waits for it (``EngineWait``, ticked
by the panel's timer, with the engine's own progress: model download in MB or its newest log line)
instead of failing with "the engine is starting".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .run import Progress, starting_progress

STARTING, READY, FAILED = "starting", "ready", "failed"


@dataclass
class Resume:
    """The one action that asked for something to happen first (an install); ``finish`` hands it back once."""

    action: Callable[[], Any] | None = None
    what: str = ""
    """What the user asked for, in words (the panel's status line names it)."""

    def ask(self, action: Callable[[], Any] | None, what: str = "") -> None:
        self.action, self.what = action, what

    def finish(self, succeeded: bool) -> Callable[[], Any] | None:
        """The action to run now (None: the install failed or was cancelled, or nobody asked)."""
        action, self.action = self.action, None
        return action if succeeded else None


@dataclass
class EngineWait:
    """Waits for ``engine`` to be ready, then runs ``then`` once; ``tick`` never blocks."""

    engine: Any
    then: Callable[[], Any]
    state: str = STARTING
    error: str = ""
    progress: Progress | None = None

    def tick(self) -> str:
        """One timer tick: READY (``then`` was just run), FAILED (``error`` says why) or STARTING (``progress``)."""
        if self.state != STARTING:
            return self.state
        failure = self.engine.failure()
        if failure:
            self.state, self.error = FAILED, failure
        elif self.engine.ready():
            self.state = READY
            self.then()
        else:
            self.progress = starting_progress(self.engine)
        return self.state

    def cancel(self) -> None:
        if self.state == STARTING:
            self.state, self.error = FAILED, "Cancelled."
