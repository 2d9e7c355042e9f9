"""The Extensions Index entry and what the index's checker looks at (their checker itself: see the last test)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENTRY = json.loads((ROOT / "MedCLIPSAM.json").read_text())
CMAKE = (ROOT / "CMakeLists.txt").read_text()


def cmake_value(name: str) -> str:
    return re.search(rf'set\({name} "([^"]*)"\)', CMAKE).group(1)


def test_the_entry_names_the_repository_category_and_pytorch_as_the_index_expects():
    assert ENTRY["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert ENTRY["build_dependencies"] == ["PyTorch"] == cmake_value("EXTENSION_DEPENDS").split()
    assert ENTRY["category"] == cmake_value("EXTENSION_CATEGORY") == "Segmentation"
    repo = ENTRY["scm_url"].rsplit("/", 1)[1].removesuffix(".git")
    assert ENTRY["scm_url"].startswith("https://github.com/") and repo.startswith("Slicer")
    assert re.search(r"^project\(MedCLIPSAM\)", CMAKE, re.M), "the project name is the entry's file name"
    assert (ROOT / "MedCLIPSAM.json").read_bytes().count(b"\r") == 0


def test_icon_and_screenshot_urls_point_at_files_committed_at_those_paths():
    owner_repo = ENTRY["scm_url"].split("github.com/", 1)[1].removesuffix(".git")
    prefix = f"https://raw.githubusercontent.com/{owner_repo}/{ENTRY['scm_revision']}/"
    urls = [cmake_value("EXTENSION_ICONURL"), *cmake_value("EXTENSION_SCREENSHOTURLS").split()]
    assert len(urls) >= 2
    for url in urls:
        assert url.startswith(prefix), url
        path = ROOT / url[len(prefix):]
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", url
    assert cmake_value("EXTENSION_HOMEPAGE").startswith(f"https://github.com/{owner_repo}")


def test_license_is_apache_2_as_the_pyproject_says_and_contributors_read_name_org():
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
    assert re.fullmatch(r"[^()]+ \([^()]+\)(, [^()]+ \([^()]+\))*", cmake_value("EXTENSION_CONTRIBUTORS"))


@pytest.mark.skipif(not (os.environ.get("MEDCLIPSAM_EXTENSIONS_INDEX") and os.environ.get("MEDCLIPSAM_SLICER_SOURCE")),
                    reason="set MEDCLIPSAM_EXTENSIONS_INDEX and MEDCLIPSAM_SLICER_SOURCE to checkouts of "
                           "Slicer/ExtensionsIndex and Slicer/Slicer to run the index's own checker")
def test_the_extensions_index_checker_passes():
    done = subprocess.run([sys.executable, str(ROOT / "Testing" / "index" / "check_index_entry.py"),
                           "--index", os.environ["MEDCLIPSAM_EXTENSIONS_INDEX"],
                           "--slicer", os.environ["MEDCLIPSAM_SLICER_SOURCE"]], capture_output=True, text=True,
                          timeout=600, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(":white_check_mark:") >= 12 and ":x:" not in done.stdout
