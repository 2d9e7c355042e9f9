"""Install planning without the network, and install steps as real child processes (never in Slicer's Python)."""
import sys
import time

from MedCLIPSAMLib.dependencies import REQUIREMENTS
from MedCLIPSAMLib.slicer.install import (InstallProcess, Step, install_steps, installed_distributions, plan_install,
                                          size_table, write_private_constraints)

SLICER_LIKE = {"numpy": "1.26.4", "SimpleITK": "2.4.0", "requests": "2.32.3", "scipy": "1.14.1", "packaging": "24.1"}


def test_a_fresh_slicer_gets_a_plan_with_sizes_and_its_own_packages_pinned():
    plan = plan_install(find_spec=lambda name: None, installed=SLICER_LIKE)
    assert plan.torch and plan.requirements == list(REQUIREMENTS.values())
    names = [p.name for p in plan.packages]
    assert {"torch", "torchvision", "open-clip-torch", "timm", "transformers", "fastapi"} <= set(names)
    assert len(names) == len(set(names)), "each package once"
    assert not {"numpy", "scipy", "requests", "packaging"} & set(names), "Slicer's own are not installed again"
    assert plan.pins == ["numpy==1.26.4", "packaging==24.1", "requests==2.32.3", "scipy==1.14.1", "simpleitk==2.4.0"]
    table = size_table()
    assert plan.total_mb == sum(table["installed_mb"].get(n, 0) for n in names) > 1000
    text = plan.describe()
    assert text.startswith(f"{len(names)} packages, about ") and "GB on disk:" in text.splitlines()[0]
    assert "  torch (" in text and "light-the-torch" in text
    assert "The 5 packages Slicer already has stay as they are (including requests)." in text


def test_only_what_is_missing_is_planned_and_torch_is_pinned_when_present():
    present = dict(SLICER_LIKE, torch="2.5.1+cu124", torchvision="0.20.1+cu124")
    plan = plan_install(find_spec=lambda name: None if name == "open_clip" else object(), installed=present)
    assert not plan.torch and plan.requirements == [REQUIREMENTS["open_clip"]]
    assert "torch==2.5.1+cu124" in plan.pins and "torchvision==0.20.1+cu124" in plan.pins
    assert "torch" not in [p.name for p in plan.packages] and "open-clip-torch" in [p.name for p in plan.packages]
    assert "(including requests, torch, torchvision)" in plan.describe()
    assert plan_install().nothing_to_do, "this environment has the engine installed"


def test_an_intel_mac_is_told_about_numpy_before_it_agrees():
    plan = plan_install(find_spec=lambda name: None, installed=SLICER_LIKE, machine=("darwin", "x86_64"))
    assert any("Intel Mac" in note and "numpy 1" in note for note in plan.notes)
    assert not any("Intel Mac" in n for n in plan_install(lambda n: None, SLICER_LIKE, machine=("darwin", "arm64")).notes)


def test_constraints_files_are_private_and_pin_everything_installed():
    first, second = write_private_constraints(["numpy==1.26.4"]), write_private_constraints(["torch==2.5.1"])
    try:
        assert first != second and first.name.startswith("medclipsam-constraints-")
        assert first.read_text() == "numpy==1.26.4\n" and oct(first.stat().st_mode & 0o777) == "0o600"
    finally:
        first.unlink()
        second.unlink()
    assert "numpy" in installed_distributions()


def test_steps_run_light_the_torch_then_pip_with_pins_written_when_each_step_starts():
    plan = plan_install(find_spec=lambda name: None, installed=SLICER_LIKE)
    written = []

    def constraints():
        written.append(len(written))
        return write_private_constraints([f"pins-{len(written)}"])

    steps = install_steps("/opt/Slicer/bin/PythonSlicer", plan, constraints)
    assert [s.label.split()[1] for s in steps] == ["light-the-torch", "PyTorch", str(len(REQUIREMENTS))]
    assert written == [], "nothing is written before a step starts"
    torch_argv = steps[1].argv()
    assert torch_argv[:6] == ["/opt/Slicer/bin/PythonSlicer", "-m", "light_the_torch", "install", "torch", "torchvision"]
    assert torch_argv[6] == "-c" and torch_argv[7].endswith(".txt"), "PyTorch's dependencies obey the pins too"
    pip_argv = steps[2].argv()
    assert pip_argv[:4] == ["/opt/Slicer/bin/PythonSlicer", "-m", "pip", "install"]
    assert pip_argv[-2] == "-c" and pip_argv[-1].endswith(".txt") and written == [0, 1]


def wait(process: InstallProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not process.finished:
        assert time.monotonic() < deadline
        process.poll()
        time.sleep(0.02)


def test_install_process_runs_steps_in_order_and_stops_at_the_first_failure():
    python = sys.executable
    good = InstallProcess([Step("one", lambda: [python, "-c", "print('first')"]),
                           Step("two", lambda: [python, "-c", "print('second')"])])
    wait(good)
    assert good.succeeded and good.last_line() == "second" and "first" in good.log()
    bad = InstallProcess([Step("fails", lambda: [python, "-c", "import sys; print('no network'); sys.exit(3)"]),
                          Step("never", lambda: [python, "-c", "print('ran')"])])
    wait(bad)
    assert bad.returncode == 3 and not bad.succeeded and "ran" not in bad.log() and bad.last_line() == "no network"


def test_a_cancelled_install_stops_its_child_at_once():
    slow = InstallProcess([Step("sleeps", lambda: [sys.executable, "-c", "import time; time.sleep(60)"])])
    slow.poll()
    start = time.monotonic()
    slow.cancel()
    assert slow.finished and not slow.succeeded and time.monotonic() - start < 10
    assert slow.process.poll() is not None
