"""Every ``medclipsam ...`` command line in README.md and docs/*.md parses under the program's own parser, so
the documentation cannot drift from the command line: a renamed option or subcommand fails here with the file
and line. Nothing is run: the parser is built from ``MedCLIPSAMLib.cli`` and only parses."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from docs_commands import Command, commands_in
from MedCLIPSAMLib.cli import build_parser
from MedCLIPSAMLib.errors import MedCLIPSAMError

ROOT = Path(__file__).resolve().parents[2]


def documents(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def parse_problem(command: Command) -> str | None:
    """None when the command line parses; else ``file:line: message``."""
    try:
        build_parser().parse_args(command.args)
    except MedCLIPSAMError as exc:  # our Parser's one-line error (what the user would read)
        return f"{command.where()}: medclipsam {' '.join(command.args)}\n    {exc}"
    except SystemExit as exc:  # argparse's own exit (--help: 0, anything else: a problem)
        if exc.code not in (0, None):
            return f"{command.where()}: medclipsam {' '.join(command.args)}\n    argparse exited {exc.code}"
    return None


def problems(paths: list[Path]) -> tuple[int, list[str]]:
    commands = [command for path in paths for command in commands_in(path)]
    return len(commands), [p for p in map(parse_problem, commands) if p]


def test_every_documented_command_line_parses():
    count, found = problems(documents())
    assert count >= 20, f"only {count} command lines found: the search is broken"  # README + docs hold many
    assert not found, "documented commands the CLI refuses:\n" + "\n".join(found)


def test_the_main_job_of_the_readme_is_among_them():
    readme = [c.args for c in commands_in(ROOT / "README.md")]
    assert any(args[:1] == ["segment"] and "--prompt" in args for args in readme)


def test_continuations_comments_pipes_and_environment_are_understood(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(textwrap.dedent("""\
        Some text with medclipsam segment --no-such-option outside a block (ignored).

        ```python
        medclipsam = "not a shell line"
        ```

        ```bash
        # a comment line
        python3 -m venv .venv && .venv/bin/medclipsam models   # lists the catalog
        MEDCLIPSAM_TOKEN=$(cat t) medclipsam segment a.nii.gz -p "brain tumor" \\
            --server http://127.0.0.1:8765 -o b.nii.gz | tee log.txt
        medclipsam evaluate DATA --out OUT; echo done
        ```
        """))
    found = commands_in(doc)
    assert [(c.line, c.args[0]) for c in found] == [(9, "models"), (10, "segment"), (12, "evaluate")]
    assert found[1].args == ["segment", "a.nii.gz", "-p", "brain tumor", "--server", "http://127.0.0.1:8765",
                             "-o", "b.nii.gz"]
    assert problems([doc]) == (3, [])


@pytest.mark.parametrize("line, message", [
    ("medclipsam segment scan.nii.gz -p liver --no-such-option 3 -o x.nii.gz", "--no-such-option"),
    ("medclipsam segmnt scan.nii.gz -p liver -o x.nii.gz", "segmnt"),
    ("medclipsam segment scan.nii.gz -p liver", "-o/--output"),
    ("medclipsam evaluate DATA --out OUT --limit zero", "--limit"),
])
def test_a_bad_command_fails_with_its_file_and_line(tmp_path, line, message):
    doc = tmp_path / "bad.md"
    doc.write_text(f"# Title\n\n```bash\nmedclipsam models\n{line}\n```\n")
    count, found = problems([doc])
    assert count == 2 and len(found) == 1
    assert found[0].startswith(f"{doc}:5: ") and message in found[0]


def test_the_readme_test_command_is_what_ci_runs_and_ci_builds_the_docs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    test_line = 'python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest -ra'
    assert test_line in readme and test_line in ci
    assert any(line.startswith(".venv/bin/mkdocs build --strict") for line in ci[ci.index(test_line) + 1:])


def test_the_site_builds_strictly_with_the_generated_cli_reference(tmp_path):
    import os
    import subprocess
    import sys

    mkdocs = Path(sys.executable).with_name("mkdocs")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1", "PYTHONIOENCODING": "utf-8"}
    done = subprocess.run([str(mkdocs), "build", "--strict", "-q", "-d", str(tmp_path / "site")], cwd=ROOT, env=env,
                          capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    reference = (tmp_path / "site" / "cli" / "index.html").read_text(encoding="utf-8")
    parser_commands = build_parser()._subparsers._group_actions[0].choices
    assert all(f'id="{name}"' in reference for name in parser_commands)  # every subcommand has its section
    assert "--saliency-out" in reference and "--simulate-interactions" in reference
