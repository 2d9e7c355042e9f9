"""Child processes that can be stopped as a whole, without a console window on Windows (standard library only).

Slicer's ``PythonSlicer`` is a launcher: it runs the real Python as its own child and does not pass
signals on, so stopping the launcher leaves the Python (and pip, or the engine) running. Each child
started here gets its own process group (a new session on POSIX, ``CREATE_NEW_PROCESS_GROUP`` on
Windows), and ``TreeStopper`` ends the whole group: SIGTERM, then SIGKILL after a grace period
(``taskkill /T /F`` on Windows), polled so that Slicer's main thread never waits for it.

On Windows the console window is hidden the way Slicer's own ``slicer.util.launchConsoleProcess``
does it (a ``STARTUPINFO`` with ``STARTF_USESHOWWINDOW`` and ``SW_HIDE``; Base/Python/slicer/util.py,
5.10.0 and main), plus ``CREATE_NO_WINDOW`` so no console is even created.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

WINDOWS = sys.platform == "win32"


def group_popen_options() -> dict[str, Any]:
    """``subprocess.Popen`` keywords: an own process group, and on Windows no console window."""
    if not WINDOWS:
        return {"start_new_session": True}
    info = subprocess.STARTUPINFO()  # type: ignore[attr-defined]  (Windows only)
    info.dwFlags |= subprocess.STARTF_USESHOWWINDOW  # type: ignore[attr-defined]
    info.wShowWindow = subprocess.SW_HIDE  # type: ignore[attr-defined]
    flags = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW  # type: ignore[attr-defined]
    return {"startupinfo": info, "creationflags": flags}


def _stat_fields(path: str) -> list[bytes]:
    """The fields of a /proc stat file after the command name (state, ppid, pgrp, ...); [] when unreadable."""
    try:
        with open(path, "rb") as file:
            return file.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _running(pid: str) -> bool:
    """Not a zombie; a process whose main thread exited shows 'Z' while its other threads still run."""
    fields = _stat_fields(f"/proc/{pid}/stat")
    if fields and fields[0] not in (b"Z", b"X"):
        return True
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    return any((f := _stat_fields(f"/proc/{pid}/task/{t}/stat")) and f[0] not in (b"Z", b"X") for t in tasks)


def _live_members_linux(group: int) -> bool | None:
    """Whether a process of ``group`` runs, from /proc (None: no /proc). Zombies do not count: in a container
    whose first process reaps nobody, a killed grandchild stays a zombie member of the group for ever."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for entry in entries:
        if entry.isdigit():
            fields = _stat_fields(f"/proc/{entry}/stat")
            if len(fields) > 2 and int(fields[2]) == group and _running(entry):
                return True
    return False


def group_alive(process: subprocess.Popen) -> bool:
    """Whether any process of ``process``'s group is still running (its launcher reaped on the way)."""
    if process.poll() is None:
        return True  # the launcher itself still runs
    if WINDOWS:
        return False
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the group exists (a member changed its user): still alive
        return True
    if sys.platform.startswith("linux"):
        members = _live_members_linux(process.pid)
        if members is not None:
            return members
    return True


class TreeStopper:
    """Stops a process group in steps a timer can drive: ``begin()`` asks it to stop, ``poll()`` says whether it
    is gone and escalates to SIGKILL after ``grace`` seconds. ``wait()`` does the same in a loop (tests, exit)."""

    def __init__(self, process: subprocess.Popen, grace: float = 1.0):
        self.process, self.grace = process, grace
        self._killed = False
        self._deadline = 0.0

    def begin(self) -> None:
        self._deadline = time.monotonic() + self.grace
        if WINDOWS:
            self._taskkill()
            return
        self._signal(signal.SIGTERM)

    def poll(self) -> bool:
        """True once no process of the group runs any more."""
        if not group_alive(self.process):
            return True
        if not self._killed and time.monotonic() >= self._deadline:
            self._killed = True
            if WINDOWS:
                self._taskkill()
            else:
                self._signal(signal.SIGKILL)
        return False

    def wait(self, timeout: float, interval: float = 0.02) -> bool:
        """Poll until the group is gone or ``timeout`` passed (SIGKILL comes after ``grace``); True: gone."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.poll():
                return True
            time.sleep(interval)
        return self.poll()

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)  # the group outlives a launcher that already exited
        except ProcessLookupError:
            pass

    def _taskkill(self) -> None:
        if self.process.poll() is None:
            subprocess.run(["taskkill", "/T", "/F", "/PID", str(self.process.pid)], capture_output=True,
                           **{k: v for k, v in group_popen_options().items() if k == "startupinfo"})
