"""The page's engine: a local ``medclipsam serve`` child process (the default, as the Slicer module starts it) or
a running server given by ``--engine URL --token-file F``; restartable from the page when the local one ended."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Sequence

from ..slicer.engine_process import LocalEngine, RemoteEngine


@dataclass
class EngineHolder:
    """``local_args``: the ``serve`` options of the local engine; ``url`` and ``token`` for a remote one."""

    local_args: Sequence[str] = ()
    url: str = ""
    token: str = ""
    python: str = sys.executable
    engine: LocalEngine | RemoteEngine | None = field(default=None, init=False)

    @property
    def remote(self) -> bool:
        return bool(self.url)

    def get(self):
        """The engine, started on first use (a local one loads its models while the user looks at the volume)."""
        if self.engine is None:
            if self.remote:
                self.engine = RemoteEngine(self.url.rstrip("/"), self.token)
            else:
                self.engine = LocalEngine(self.python, list(self.local_args))
                self.engine.start()
        return self.engine

    def gone(self) -> str | None:
        """Why the local engine is no longer there (its last error line), else None (a remote one is judged by
        its answers)."""
        engine = self.engine
        if isinstance(engine, LocalEngine) and engine.process is not None and not engine.running():
            return engine.failure() or "The engine process ended."
        return None

    def restart(self):
        self.stop()
        return self.get()

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.stop()
            self.engine = None
