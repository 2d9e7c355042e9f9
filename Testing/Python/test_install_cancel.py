"""Cancelling an install stops the launcher *and* what it started (a real process tree), and says what pip left.

PythonSlicer is a launcher that runs the real Python as its child and passes no signal on: the tests build the
same shape (a launcher process that starts a grandchild and waits), so terminating only the launcher would leave
the grandchild, like pip, running."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from MedCLIPSAMLib.slicer.install import (STOP_GRACE_S, InstallProcess, Step, describe_site_packages,
                                          leftover_pip_folders, run_slicer_pip_install, write_private_constraints)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX process groups, read from /proc")

LAUNCHER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", {grandchild!r}])
open(sys.argv[1], "w").write(str(child.pid))
child.wait()
"""
SLEEPER = "import time; time.sleep(120)"
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"


def running(pid: int) -> bool:
    """Alive and not a zombie (a container's first process may never reap an orphan)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def started_tree(tmp_path: Path, grandchild: str) -> tuple[InstallProcess, int]:
    pid_file = tmp_path / "grandchild.pid"
    install = InstallProcess([Step("pip", lambda: [sys.executable, "-c", LAUNCHER.format(grandchild=grandchild),
                                                   str(pid_file)])])
    install.poll()
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.monotonic() < deadline, "the launcher never started its child"
        time.sleep(0.02)
    return install, int(pid_file.read_text())


def test_cancel_stops_the_grandchild_that_the_launcher_started(tmp_path):
    install, grandchild = started_tree(tmp_path, SLEEPER)
    assert running(grandchild)
    start = time.monotonic()
    install.cancel(wait=0)  # what the panel does: no wait on Slicer's main thread
    assert time.monotonic() - start < 0.2
    deadline = time.monotonic() + 10
    while not install.finished:
        assert time.monotonic() < deadline
        install.poll()
        time.sleep(0.02)
    assert not running(grandchild), "pip (the launcher's child) must not survive a cancel"
    assert install.cancelled and not install.succeeded and install.returncode == -1
    assert install.process.poll() is not None


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path):
    install, grandchild = started_tree(tmp_path, STUBBORN)
    time.sleep(0.3)  # the grandchild has set its SIGTERM handler
    start = time.monotonic()
    install.cancel(wait=10)
    elapsed = time.monotonic() - start
    assert install.finished and not running(grandchild)
    assert STOP_GRACE_S - 0.1 <= elapsed < STOP_GRACE_S + 5, elapsed


def test_terminating_only_the_launcher_would_leave_the_grandchild(tmp_path):
    """The defect the process group fixes, shown on the same tree: SIGTERM to the launcher alone."""
    install, grandchild = started_tree(tmp_path, SLEEPER)
    install.process.terminate()
    install.process.wait(10)
    try:
        assert running(grandchild)
    finally:
        os.kill(grandchild, signal.SIGKILL)
        install.cancel()


def test_the_report_says_what_pip_added_changed_and_left_behind(tmp_path):
    before = {"numpy": "1.26.4", "requests": "2.32.3"}
    assert describe_site_packages(before, dict(before), []) == (
        "pip had not installed anything yet. No package Slicer already had was changed.")
    after = dict(before, filelock="3.16.1", sympy="1.13.1", requests="2.31.0")
    (tmp_path / "~orch").mkdir()
    (tmp_path / "numpy").mkdir()
    leftovers = leftover_pip_folders([tmp_path])
    assert leftovers == ["~orch"]
    text = describe_site_packages(before, after, leftovers, still_running=True)
    assert text.startswith("pip is still stopping;")
    assert "pip had installed 2 package(s) before it stopped (filelock, sympy)" in text
    assert "Changed: requests 2.32.3 -> 2.31.0." in text
    assert "unfinished folders in site-packages (~orch)" in text


def test_a_finished_cancel_reports_the_state_of_this_python(tmp_path):
    install, _ = started_tree(tmp_path, SLEEPER)
    install.cancel()
    assert install.finished
    assert install.site_packages_report().startswith("pip had not installed anything yet.")


# slicer.packaging.pip_install (Slicer main) as Base/Python/slicer/packaging.py behaves, branch by branch
def slicer_status_bar_mode(requirements, constraints, blocking, show_progress, requester, completedCallback):
    assert not blocking and show_progress and requester == "MedCLIP-SAM" and Path(constraints).exists()
    completedCallback(0)


def slicer_another_install_runs(requirements, **kwargs):
    raise RuntimeError("A non-blocking pip_install is already in progress. Wait for it to complete or use "
                       "blocking=True.")


def slicer_testing_mode_fails(requirements, **kwargs):
    raise subprocess.CalledProcessError(2, "pip install")


def slicer_testing_mode_succeeds(requirements, **kwargs):
    return None  # blocked until pip ended; the callback is never called


@pytest.mark.parametrize("pip_install, testing, code, says", [
    (slicer_status_bar_mode, False, 0, ""),
    (slicer_another_install_runs, False, -1, "Slicer is installing other Python packages right now"),
    (slicer_testing_mode_fails, True, 2, ""),
    (slicer_testing_mode_succeeds, True, 0, ""),
])
def test_slicer_packaging_always_completes_once_and_never_leaks_the_pins(pip_install, testing, code, says):
    constraints = write_private_constraints(["numpy==1.26.4"])
    calls = []
    run_slicer_pip_install(pip_install, ["open_clip_torch>=2.24"], constraints, testing,
                           lambda c, message: calls.append((c, message)))
    assert len(calls) == 1 and calls[0][0] == code and calls[0][1].startswith(says)
    assert not constraints.exists()


def test_a_non_blocking_install_keeps_the_pins_until_pip_ends():
    constraints = write_private_constraints(["numpy==1.26.4"])
    later, calls = [], []
    run_slicer_pip_install(lambda requirements, completedCallback, **kwargs: later.append(completedCallback),
                           ["timm"], constraints, False, lambda c, m: calls.append(c))
    assert constraints.exists() and calls == []
    later[0](1)
    later[0](1)  # a second call changes nothing
    assert calls == [1] and not constraints.exists()
