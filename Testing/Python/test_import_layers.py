"""The engine's layers, bottom to top, as an import-linter ``layers`` contract (pyproject.toml,
[tool.importlinter]): a module imports only from its own layer or below, at module level or inside a
function. The contract is exhaustive, so a new top-level module must be given a layer before it passes."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd), "PYTHONIOENCODING": "utf-8"}  # this checkout's package
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", *args], cwd=cwd, env=env, capture_output=True,
                          encoding="utf-8", errors="replace", timeout=600)


def test_every_import_of_the_engine_points_down_its_layers():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 1 kept, 0 broken." in done.stdout


def test_the_contract_fails_on_an_upward_import_even_inside_a_function(tmp_path):
    files = {
        "pkg/__init__.py": "",
        "pkg/low.py": "def helper():\n    from .top import run\n    return run\n",
        "pkg/top.py": "from .low import helper\nrun = 1\n",
        ".importlinter": """\
            [importlinter]
            root_package = pkg

            [importlinter:contract:layers]
            name = layers
            type = layers
            containers = pkg
            layers =
                top
                low
            """,
    }
    for relative, text in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(textwrap.dedent(text))
    done = lint_imports(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "pkg.low -> pkg.top" in done.stdout and "BROKEN" in done.stdout
