"""The ``medclipsam ...`` command lines of the README and the documentation, found in their fenced bash blocks,
so a test can parse each one with the program's own parser (shared by the test and the docs build's checks)."""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
SHELL_LANGUAGES = {"bash", "sh", "shell", "console", "zsh"}
SEPARATORS = {"&&", "||", "|", ";", "&"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
SUBSTITUTION = re.compile(r"\$\([^()]*\)")
"""``$(cat FILE)``: a value computed by the shell, one word here."""


@dataclass(frozen=True)
class Command:
    path: Path
    line: int
    """The 1-based line of the file where the command starts."""
    args: list[str]
    """What follows ``medclipsam``."""

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def shell_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, logical line) of every fenced shell block: ``\\`` continuations joined."""
    lines = text.splitlines()
    found: list[tuple[int, str]] = []
    fence, shell = None, False
    pending, start = "", 0
    for number, line in enumerate(lines, start=1):
        match = FENCE.match(line)
        if fence is None and match:
            fence, shell = match.group(1), match.group(2).lower() in SHELL_LANGUAGES
            continue
        if fence is not None and line.strip().startswith(fence) and line.strip().strip(fence[0]) == "":
            fence, shell = None, False
            continue
        if fence is None or not shell:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        found.append((start, pending + line))
        pending = ""
    return found


def commands_in(path: Path) -> list[Command]:
    """Every ``medclipsam`` (or ``.venv/bin/medclipsam``) invocation in the file's shell blocks, split at
    ``&&``, ``|``, ``;``; environment assignments before it and comments after ``#`` are left out."""
    commands = []
    for line_number, line in shell_lines(path.read_text(encoding="utf-8")):
        line = SUBSTITUTION.sub("VALUE", line.removeprefix("$ ").strip())
        try:
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
            lexer.whitespace_split, lexer.commenters = True, "#"
            tokens = list(lexer)
        except ValueError as exc:
            raise ValueError(f"{path}:{line_number}: cannot split the shell line ({exc}): {line}") from None
        part: list[str] = []
        for token in [*tokens, ";"]:
            if token not in SEPARATORS:
                part.append(token)
                continue
            while part and ENV_ASSIGNMENT.match(part[0]):
                part.pop(0)
            if part and Path(part[0]).name == "medclipsam":
                commands.append(Command(path, line_number, part[1:]))
            part = []
    return commands
