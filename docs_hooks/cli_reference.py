"""mkdocs hook: the command-line reference page (``cli.md``), rendered at build time from the program's own
argparse parser (``MedCLIPSAMLib.cli.build_parser``), so it cannot drift from the program. Nothing is written
into docs/: the page is a generated file of the build."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

PAGE = "cli.md"
WIDTH = "100"
"""Help text is wrapped at this many columns, whatever the terminal that builds the site."""


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[str, argparse.ArgumentParser]]:
    """name -> (one-line help, parser) of every subcommand, in the order ``medclipsam --help`` lists them."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
    return {name: (helps.get(name, ""), sub) for name, sub in action.choices.items()}


def _cell(text: str) -> str:
    """Help text as a Markdown table cell."""
    return text.replace("|", "\\|").replace("<", "&lt;")


def render() -> str:
    from MedCLIPSAMLib.cli import build_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        parser = build_parser()
        commands = _subcommands(parser)
        lines = ["# Command-line reference", "",
                 "Generated from the program's own parser when this site is built (`docs_hooks/cli_reference.py`); "
                 "`medclipsam COMMAND --help` prints the same.", "",
                 "| command | what it does |", "|---|---|",
                 *(f"| [`{name}`](#{name}) | {_cell(text)} |" for name, (text, _) in commands.items()), "",
                 "```text", parser.format_help().rstrip(), "```", ""]
        for name, (text, sub) in commands.items():
            lines += [f"## {name}", "", _cell(text[:1].upper() + text[1:]) + ".", "", "```text", sub.format_help().rstrip(),
                      "```", ""]
        return "\n".join(lines)
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous


def on_files(files: Files, config) -> Files:
    root = str(Path(config.config_file_path).resolve().parent)
    if root not in sys.path:
        sys.path.insert(0, root)  # this checkout's package, also when it is not installed
    files.append(File.generated(config, PAGE, content=render()))
    return files
