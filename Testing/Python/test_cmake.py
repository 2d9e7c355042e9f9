"""CMake configures the extension against a Slicer-like build tree (Testing/cmake/SlicerLike) and ships what runs."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SLICER_LIKE = ROOT / "Testing" / "cmake" / "SlicerLike"
pytestmark = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")


def configure(source: Path, build: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["cmake", "-S", str(source), "-B", str(build), f"-DSlicer_DIR={SLICER_LIKE}",
                           "-DBUILD_TESTING=ON"], capture_output=True, text=True, timeout=300)


def test_the_extension_configures_and_its_engine_runs_from_the_build_tree(tmp_path):
    done = configure(ROOT, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    modules = tmp_path / "lib" / "Slicer-5.10" / "qt-scripted-modules"
    for path in ("MedCLIPSAM.py", "Resources/UI/MedCLIPSAM.ui", "MedCLIPSAMLib/slicer/install.py",
                 "MedCLIPSAMLib/server/results.py", "Resources/install_sizes.json"):
        assert (modules / path).is_file(), path
    shipped = subprocess.run([sys.executable, "-c", "from MedCLIPSAMLib.resources import resource_path;"
                              "from MedCLIPSAMLib.slicer.install import plan_install; "
                              "print(resource_path('install_sizes.json')); print(plan_install().nothing_to_do)"],
                             cwd=tmp_path, env={"PYTHONPATH": str(modules), "PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True, timeout=120)
    assert shipped.returncode == 0, shipped.stderr
    resource, _ = shipped.stdout.splitlines()
    assert Path(resource).is_relative_to(modules), "the engine finds its resources in the build tree"


def test_a_file_listed_for_the_build_but_missing_fails_the_configure(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.16)\nproject(Probe NONE)\nfind_package(Slicer REQUIRED)\n"
        "include(${Slicer_USE_FILE})\nslicerMacroBuildScriptedModule(NAME Probe SCRIPTS Probe.py)\n")
    done = configure(source, tmp_path / "build")
    assert done.returncode != 0 and "Listed for the build but missing" in done.stderr
