"""The documentation site builds with ``mkdocs build --strict``, as ``.ci/run`` builds it, so a broken link or
image (one pointing outside ``docs/``, which mkdocs cannot serve) fails in pytest with mkdocs's own warning
instead of only after the whole suite in CI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          cwd=config.parent, env=env, capture_output=True, text=True, timeout=300)


def test_docs_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    done = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "web" / "index.html").is_file()
    assert (tmp_path / "site" / "Screenshots" / "web.png").is_file()


def test_a_link_outside_docs_fails_the_build(tmp_path):
    """The check can fail: the link that broke CI once (``../Resources/...`` from a page) is refused."""
    pytest.importorskip("mkdocs")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# Home\n\n![shot](../Resources/Screenshots/web.png)\n")
    (tmp_path / "mkdocs.yml").write_text("site_name: t\nstrict: true\nvalidation:\n  links:\n    not_found: warn\n")
    done = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0
    assert "../Resources/Screenshots/web.png" in done.stdout + done.stderr
