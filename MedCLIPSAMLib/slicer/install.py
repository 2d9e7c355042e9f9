"""Installing the local engine's packages into Slicer's Python: planned offline, run as child processes.

``plan_install`` says what an install would add and about how much disk it takes before the user
agrees, from the metadata of what is installed and the table in ``Resources/install_sizes.json``
(no network). Every package Slicer already has, plus torch, torchvision and requests, is pinned
in a private constraints file, so pip can add packages but never replace Slicer's own (or the
CUDA build of PyTorch that light-the-torch chose by a CPU one). ``InstallProcess`` runs the steps
(light-the-torch for PyTorch, then pip) as child processes of Slicer's Python launcher and is
polled by a timer, so Slicer keeps painting and torch is never imported into Slicer's process.
Standard library only (this runs before anything is installed).
"""
from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..dependencies import REQUIREMENTS
from ..resources import resource_path
from .process_tree import TreeStopper, group_popen_options

ALWAYS_PROTECTED = ("torch", "torchvision", "requests")
"""Pinned whenever installed, even when a requirement would like another version."""
TORCH_STEP = ("light-the-torch>=0.5", "torch", "torchvision")
"""PyTorch the way Slicer's PyTorch extension installs it: light-the-torch picks the build for this GPU driver."""


def canonical(name: str) -> str:
    """A distribution name as pip compares them (case, '-', '_' and '.' do not matter)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_distributions() -> dict[str, str]:
    """canonical name -> version of every package in this Python (metadata only, nothing imported)."""
    found = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata is not None else None
        if name:
            found.setdefault(canonical(name), dist.version)
    return found


@dataclass
class PlannedPackage:
    name: str
    size_mb: float | None
    """Installed size measured for the table (None: not in it)."""
    wanted_by: str


@dataclass
class InstallPlan:
    torch: bool
    """PyTorch is missing: it comes first, through light-the-torch."""
    requirements: list[str]
    """What pip is asked for (the engine's requirements that cannot be imported yet)."""
    packages: list[PlannedPackage]
    """Every package that would be added, dependencies included, as far as the table knows."""
    pins: list[str]
    """``name==version`` for every package already installed: pip may not replace them."""
    notes: list[str] = field(default_factory=list)

    @property
    def nothing_to_do(self) -> bool:
        return not self.torch and not self.requirements

    @property
    def total_mb(self) -> float:
        return sum(p.size_mb or 0.0 for p in self.packages)

    def describe(self, limit: int = 12) -> str:
        """The lines the confirmation dialog shows: largest packages first, the total, what stays as it is."""
        ordered = sorted(self.packages, key=lambda p: -(p.size_mb or 0.0))
        lines = [f"  {p.name} ({_size(p.size_mb)})" for p in ordered[:limit]]
        if len(ordered) > limit:
            rest = ordered[limit:]
            lines.append(f"  and {len(rest)} smaller packages ({_size(sum(p.size_mb or 0.0 for p in rest))})")
        protected = sorted(name for name in ALWAYS_PROTECTED if any(pin.startswith(name + "==") for pin in self.pins))
        text = [f"{len(self.packages)} packages, about {_size(self.total_mb)} on disk:", *lines,
                f"The {len(self.pins)} packages Slicer already has stay as they are"
                + (f" (including {', '.join(protected)})." if protected else ".")]
        return "\n".join(text + self.notes)


def _size(mb: float | None) -> str:
    if mb is None:
        return "size unknown"
    return f"{mb / 1000:.1f} GB" if mb >= 1000 else f"{mb:.0f} MB"


def size_table() -> dict:
    return json.loads(resource_path("install_sizes.json").read_text())


def plan_install(find_spec: Callable = importlib.util.find_spec, installed: dict[str, str] | None = None,
                 table: dict | None = None, machine: tuple[str, str] | None = None) -> InstallPlan:
    """What an install would do here, without the network (see the module docstring)."""
    importlib.invalidate_caches()  # after an install in a child process, this process must see the new files
    installed = installed_distributions() if installed is None else {canonical(k): v for k, v in installed.items()}
    table = size_table() if table is None else table
    system, arch = machine or (sys.platform, platform.machine())
    torch = find_spec("torch") is None
    requirements = [req for name, req in REQUIREMENTS.items() if find_spec(name) is None]
    roots = (["torch", "torchvision"] if torch else []) + [canonical(re.match(r"[A-Za-z0-9._-]+", r).group(0))
                                                           for r in requirements]
    packages, seen = [], set(installed)
    for root in roots:
        for name in table["requires"].get(root, [root]):
            if name not in seen:
                seen.add(name)
                packages.append(PlannedPackage(name, table["installed_mb"].get(name), root))
    pins = [f"{name}=={version}" for name, version in sorted(installed.items())]
    notes = []
    if torch:
        notes.append("PyTorch comes first, through light-the-torch (as Slicer's PyTorch extension installs it); "
                     "with an NVIDIA GPU its CUDA build adds several GB of NVIDIA libraries.")
    if system == "darwin" and arch == "x86_64" and torch:
        notes.append("On an Intel Mac the newest PyTorch is 2.2, built for numpy 1: if Slicer's numpy is 2 or "
                     "newer, use a server (Engine: Server) instead of this computer.")
    return InstallPlan(torch, requirements, packages, pins, notes)


def write_private_constraints(pins: Iterable[str]) -> Path:
    """A constraints file of our own (a fresh name in the temp folder, not shared with anyone)."""
    handle, path = tempfile.mkstemp(prefix="medclipsam-constraints-", suffix=".txt")
    with os.fdopen(handle, "w") as file:
        file.write("\n".join(pins) + "\n")
    return Path(path)


@dataclass
class Step:
    label: str
    argv: Callable[[], list[str]]
    """Built when the step starts, so a later step's pins include what an earlier one installed (torch)."""


def install_steps(python: str, plan: InstallPlan, constraints: Callable[[], Path]) -> list[Step]:
    """The child processes an install runs, in order; ``constraints()`` writes the pins as they are then."""
    steps = []
    if plan.torch:
        ltt, *torch = TORCH_STEP
        steps.append(Step("Installing light-the-torch", lambda: [python, "-m", "pip", "install", ltt,
                                                                "-c", str(constraints())]))
        # ``ltt install`` takes pip's options (it runs pip with its own index choice): the same pins as every step
        steps.append(Step("Installing PyTorch (light-the-torch picks the build for this computer)",
                          lambda: [python, "-m", "light_the_torch", "install", *torch, "-c", str(constraints())]))
    if plan.requirements:
        steps.append(Step(f"Installing {len(plan.requirements)} packages and their dependencies",
                          lambda: [python, "-m", "pip", "install", *plan.requirements, "-c", str(constraints())]))
    return steps


def current_constraints() -> Path:
    """Pins of everything installed right now (torch included once light-the-torch installed it)."""
    importlib.invalidate_caches()
    return write_private_constraints(f"{n}=={v}" for n, v in sorted(installed_distributions().items()))


STOP_GRACE_S = 1.0
"""After SIGTERM, how long pip's process group gets before SIGKILL (pip stops on SIGTERM at once)."""


class InstallProcess:
    """Runs install steps one after another as child processes; ``poll()`` never blocks (a Qt timer calls it).

    Each step runs in a process group of its own, so ``cancel`` stops the launcher *and* the Python and pip it
    started (PythonSlicer passes no signal on); the install is ``finished`` only once none of them runs."""

    def __init__(self, steps: list[Step], env: dict[str, str] | None = None):
        self.steps, self.env = list(steps), env
        self.index = -1
        self.process: subprocess.Popen | None = None
        self.log_path = Path(tempfile.mkdtemp(prefix="medclipsam-install-")) / "install.log"
        self.log_path.touch()
        self.returncode: int | None = None
        self.cancelled = False
        self._files: list[Path] = []
        self._stopper: TreeStopper | None = None
        self.before = installed_distributions()
        """What this Python had when the install began (``site_packages_report`` compares with it)."""

    @property
    def finished(self) -> bool:
        return self.returncode is not None

    @property
    def stopping(self) -> bool:
        """Cancelled, and pip's processes are still being stopped (``poll`` goes on until they are gone)."""
        return self.cancelled and not self.finished

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0 and not self.cancelled

    @property
    def label(self) -> str:
        return self.steps[self.index].label if 0 <= self.index < len(self.steps) else ""

    def poll(self) -> str:
        """Start the next step when the current one is done; returns the newest output line."""
        if self.finished:
            return self.last_line()
        if self._stopper is not None:
            if self._stopper.poll():
                self._stopped()
            return self.last_line()
        if self.process is not None:
            code = self.process.poll()
            if code is None:
                return self.last_line()
            if code != 0:
                self.returncode = code
                return self.last_line()
        self.index += 1
        if self.index >= len(self.steps):
            self.returncode = 0
            return self.last_line()
        argv = self.steps[self.index].argv()
        self._files += [Path(a) for a in argv if a.endswith(".txt") and "medclipsam-constraints-" in a]
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=self.env, **group_popen_options())
        return self.last_line()

    def cancel(self, wait: float = 2 * STOP_GRACE_S) -> None:
        """Stop the running step's whole process group (pip leaves what it finished installed; nothing of Slicer's
        is replaced, everything is pinned). Waits at most ``wait`` s; with ``wait=0`` it returns at once and
        ``poll()`` finishes the stop (SIGKILL after ``STOP_GRACE_S``), so Slicer's main thread never waits."""
        if self.finished:
            return
        self.cancelled = True
        if self.process is None:
            self._stopped()
            return
        if self._stopper is None:
            self._stopper = TreeStopper(self.process, STOP_GRACE_S)
            self._stopper.begin()
        if wait > 0:
            self._stopper.wait(wait)
        if self._stopper.poll():
            self._stopped()

    def _stopped(self) -> None:
        self.returncode = -1
        self.cleanup()

    def cleanup(self) -> None:
        for path in self._files:
            path.unlink(missing_ok=True)

    def site_packages_report(self) -> str:
        """After a cancel or a failure: what pip left in Slicer's Python (one short paragraph for the panel)."""
        return describe_site_packages(self.before, installed_distributions(), leftover_pip_folders(),
                                      still_running=self.process is not None and self._stopper is not None
                                      and not self._stopper.poll())

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def last_line(self) -> str:
        lines = [line.strip() for line in self.log().splitlines() if line.strip()]
        return lines[-1] if lines else ""


def site_packages_folders() -> list[Path]:
    """Where pip installs in this Python (pure and platform-specific packages; the same folder on most systems)."""
    paths = sysconfig.get_paths()
    return sorted({Path(paths[key]) for key in ("purelib", "platlib") if key in paths})


def leftover_pip_folders(folders: Iterable[Path] | None = None) -> list[str]:
    """Folders pip leaves behind when stopped mid-way: it moves a package it replaces to ``~name`` first."""
    found = []
    for folder in site_packages_folders() if folders is None else folders:
        try:
            found += sorted(entry.name for entry in folder.iterdir() if entry.name.startswith("~"))
        except OSError:
            continue
    return found


def describe_site_packages(before: dict[str, str], after: dict[str, str], leftovers: list[str],
                           still_running: bool = False) -> str:
    """What changed between two ``installed_distributions`` snapshots, in words."""
    added = sorted(name for name in after if name not in before)
    changed = sorted(f"{name} {before[name]} -> {after[name]}" for name in after
                     if name in before and before[name] != after[name])
    removed = sorted(name for name in before if name not in after)
    lines = []
    if still_running:
        lines.append("pip is still stopping; do not start another install until it has.")
    if added:
        lines.append(f"pip had installed {len(added)} package(s) before it stopped ({', '.join(added[:8])}"
                     + (", ..." if len(added) > 8 else "") + "); they stay, and the next install reuses them.")
    else:
        lines.append("pip had not installed anything yet.")
    if changed or removed:
        lines.append("Changed: " + ", ".join(changed + [f"{name} removed" for name in removed])
                     + ". Run the install again to complete it.")
    else:
        lines.append("No package Slicer already had was changed.")
    if leftovers:
        lines.append(f"pip left unfinished folders in site-packages ({', '.join(leftovers[:5])}); the next install "
                     "replaces them.")
    return " ".join(lines)


def run_slicer_pip_install(pip_install: Callable[..., Any], requirements: list[str], constraints: Path,
                           testing: bool, completed: Callable[[int, str], None], requester: str = "MedCLIP-SAM"
                           ) -> None:
    """The pip step through Slicer's ``slicer.packaging.pip_install`` (Slicer's main branch, after 5.10), as it
    behaves there (Base/Python/slicer/packaging.py on main):

    - ``blocking=False, show_progress=True`` is its status-bar mode: a busy cursor and pip's lines in the status
      bar, no dialog and no Cancel; ``completedCallback(returnCode)`` is called when pip ends;
    - it raises ``RuntimeError`` at once when another non-blocking install runs (or off the main thread);
    - in testing mode (and in PythonSlicer) it blocks, raises ``CalledProcessError`` on failure and never calls
      the callback.

    ``completed(returnCode, message)`` is called exactly once in every case, and ``constraints`` (our private pin
    file) is deleted before it."""
    done = []

    def finish(code: int, message: str = "") -> None:
        if done:
            return
        done.append(code)
        constraints.unlink(missing_ok=True)
        completed(int(code), message)

    try:
        pip_install(requirements, constraints=constraints, blocking=False, show_progress=True, requester=requester,
                    completedCallback=finish)
    except RuntimeError as exc:
        finish(-1, f"Slicer is installing other Python packages right now ({exc}); try again when it is done.")
        return
    except subprocess.CalledProcessError as exc:  # the blocking path (testing mode) failed
        finish(exc.returncode or 1, "")
        return
    if testing:  # the blocking path returned: pip succeeded, and no callback will come
        finish(0)

