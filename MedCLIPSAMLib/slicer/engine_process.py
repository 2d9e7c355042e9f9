"""The engine server as a child process of Slicer ("This computer"), or the address of one elsewhere.

Slicer's main thread holds Python's GIL while Qt runs, so heavy work cannot run in a Python
thread there; the engine runs as ``python -m MedCLIPSAMLib.server`` instead, started once and
reused. Nothing here blocks: ``ready()`` and ``failure()`` read the process's log file, so a Qt
timer can poll them. Standard library only.
"""
from __future__ import annotations

import os
import re
import secrets
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..client import EngineClient
from ..errors import MedCLIPSAMError
from ..wire import READY_LINE, TOKEN_ENV
from ..server.startup import last_loading
from .process_tree import TreeStopper, group_alive, group_popen_options

ENGINE_PARENT = Path(__file__).resolve().parents[2]
"""The folder holding the MedCLIPSAMLib package, put on the child's PYTHONPATH."""
URL_PATTERN = re.compile(re.escape(READY_LINE) + r" (http://[^\s/]+)")
STOP_WAIT_S = 0.5
"""How long stopping waits for the engine at each step (after asking it to exit, after SIGTERM): Slicer's main thread
does it (changing the device or SAM model, Stop the engine), and a killed engine loses nothing (it keeps no state
that matters), so at most ~2 s of frozen window instead of 11 s. ``stop_soon`` waits for nothing at all."""
STOP_GRACE_S = 3.0
"""``stop_soon``: how long the engine gets to end its jobs on SIGTERM before SIGKILL (polled, nobody waits)."""


class LocalEngine:
    """``medclipsam serve --port 0`` on this computer, with a fresh token, stopped with ``stop()``."""

    def __init__(self, python: str, args: Sequence[str] = (), log_folder: str | os.PathLike | None = None):
        self.python, self.args = python, list(args)
        self.log_path = Path(tempfile.mkdtemp(prefix="medclipsam-engine-", dir=log_folder)) / "engine.log"
        self.token = secrets.token_urlsafe(32)
        self.url: str | None = None
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(os.environ)
        env[TOKEN_ENV] = self.token
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ENGINE_PARENT), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        command = [self.python, "-m", "MedCLIPSAMLib.server", "--host", "127.0.0.1", "--port", "0",
                   "--parent-pid", str(os.getpid()), *self.args]
        with open(self.log_path, "wb") as log:
            # Own process group: Slicer's PythonSlicer is a launcher that does not pass signals on to the Python
            # it starts, so stopping means stopping the whole group (taskkill /T on Windows); no console window.
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=env, **group_popen_options())

    def ready(self) -> bool:
        """True once the server accepts connections (it printed its address)."""
        if self.url is None and self.process is not None and self.process.poll() is None:
            match = URL_PATTERN.search(self._log())
            if match:
                self.url = match.group(1)
        return self.url is not None and self.running()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def failure(self) -> str | None:
        """Why the process ended (its last 'error:' line, or the log's tail), or None while it runs."""
        if self.process is None or self.process.poll() is None:
            return None
        log = self._log()
        errors = [line[len("error: "):] for line in log.splitlines() if line.startswith("error: ")]
        if errors:
            return errors[-1]
        return (f"The MedCLIP-SAM engine stopped (exit code {self.process.returncode}) before it was ready. "
                f"Its log: {self.log_path}\n{self.log_tail()}")

    def startup_progress(self) -> tuple[str, int, int] | None:
        """(stage, bytes done, bytes total) of the model download the starting engine reports, else None."""
        if self.url is not None:
            return None
        return last_loading(self._log())

    def log_tail(self, lines: int = 8) -> str:
        return "\n".join(self._log().splitlines()[-lines:])

    def stop(self, wait: float = STOP_WAIT_S) -> None:
        """Ask the server to exit, then end the launcher and the Python it started (the whole process group)."""
        process = self.process
        if process is not None and process.poll() is None and self.url is not None:
            try:
                EngineClient(self.url, self.token, timeout=1.0)._json("POST", "/shutdown", {})
                process.wait(wait)
            except (MedCLIPSAMError, subprocess.TimeoutExpired):
                pass
        if process is not None:
            self._kill_tree(process, wait)
        self.url = None

    def stop_soon(self) -> TreeStopper | None:
        """Stop without waiting (Slicer's main thread): SIGTERM to the whole group now (the server ends its jobs as
        on /shutdown), SIGKILL after ``STOP_GRACE_S`` when the returned stopper is polled; None: nothing ran."""
        process, self.url = self.process, None
        if process is None or not group_alive(process):
            return None
        stopper = TreeStopper(process, STOP_GRACE_S)
        stopper.begin()
        return stopper

    @staticmethod
    def _kill_tree(process: subprocess.Popen, wait: float) -> None:
        """SIGTERM to the whole group, SIGKILL after ``wait`` s, at most ``2 * wait`` s in all."""
        stopper = TreeStopper(process, grace=wait)
        stopper.begin()
        stopper.wait(2 * wait)

    def _log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class RemoteEngine:
    """A server someone started elsewhere (a GPU workstation, often through an SSH tunnel)."""

    url: str
    token: str

    def ready(self) -> bool:
        return True

    def failure(self) -> str | None:
        return None

    def stop(self) -> None:
        """Not ours to stop."""


class EngineChoice:
    """The engine the panel asks for, reusing the running local process while its options stay the same.

    ``python``: the interpreter path, or a function returning it (asked only when a local engine starts,
    so a Slicer without its launcher can still use a remote server)."""

    def __init__(self, python: str | Callable[[], str], log_folder: str | os.PathLike | None = None,
                 background_stop: bool = False):
        self.python, self.log_folder = python, log_folder
        self.local: LocalEngine | None = None
        self.background_stop = background_stop
        """Stop a replaced engine without waiting (``LocalEngine.stop_soon``); ``reap()`` finishes the stops."""
        self.stopping: list[TreeStopper] = []

    def get(self, mode: str, local_args: Sequence[str] = (), url: str = "", token: str = ""):
        """``mode``: "local" (start or reuse the child process) or "remote" (``url`` + ``token``)."""
        from ..errors import InputError

        if mode == "remote":
            from ..client import is_server_url

            if not is_server_url(url):
                raise InputError(f"Server address '{url}' is not a URL: write it like http://127.0.0.1:8765.")
            if not token.strip():
                raise InputError("Enter the server's token (printed by 'medclipsam serve', or its --token-file).")
            return RemoteEngine(url.strip().rstrip("/"), token.strip())
        self.reap()
        if self.local is not None and (list(local_args) != self.local.args or self.local.failure() is not None):
            self.stop(wait=not self.background_stop)
        if self.local is None:
            python = self.python() if callable(self.python) else self.python
            self.local = LocalEngine(python, local_args, self.log_folder)
            self.local.start()
        return self.local

    def stop(self, wait: bool = True) -> None:
        """Stop the local engine: waiting (at most ~2 s; Slicer's exit) or not (``reap`` polls it)."""
        if self.local is not None:
            if wait:
                self.local.stop()
            else:
                stopper = self.local.stop_soon()
                if stopper is not None:
                    self.stopping.append(stopper)
            self.local = None
        if wait:
            for stopper in self.stopping:
                stopper.wait(STOP_GRACE_S + 1)
            self.stopping = []

    def reap(self) -> bool:
        """Poll engines being stopped (SIGKILL once their grace is over); True while one still runs."""
        self.stopping = [stopper for stopper in self.stopping if not stopper.poll()]
        return bool(self.stopping)
