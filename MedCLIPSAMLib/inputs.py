"""The user's text inputs (prompt files, pair lists, JSON tables, dataset.json) read with one-line errors.

Python raises ``UnicodeDecodeError`` or ``JSONDecodeError`` with a traceback for a file saved in
another encoding or edited by hand; these say which file, where, and what to do instead.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import InputError


def read_text(path: str | os.PathLike, what: str) -> str:
    """The file as UTF-8 text (a byte-order mark is dropped); ``what`` names it in messages ("Prompt file")."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} '{path}' does not exist" + (" (it is a folder)." if path.is_dir() else "."))
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} '{path}' is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at position "
                         f"{exc.start}); save it as UTF-8.") from None
    except OSError as exc:
        raise InputError(f"{what} '{path}' cannot be read ({exc.strerror}).") from None


def parse_json(text: str, source: str) -> Any:
    """JSON from text; a syntax error names the file and the line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{source} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                         "fix it with a text editor.") from None


def read_json(path: str | os.PathLike, what: str) -> Any:
    return parse_json(read_text(path, what), f"{what} '{path}'")
