"""Building blocks of the command-line options shared by every command (argparse types, the server
token), kept below the CLI and the server so either can take them without importing the other."""
from __future__ import annotations

import argparse
import math
import os
import secrets
from pathlib import Path
from typing import Callable

from .errors import InputError


def at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """argparse type: a whole number >= ``low`` (and <= ``high``); an option error (exit 2) names the option."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number.") from None
        if value < low or (high is not None and value > high):
            bound = f"at least {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"must be {bound} (got {value}).")
        return value
    return parse


def number(low: float = -math.inf, high: float = math.inf, low_open: bool = False) -> Callable[[str], float]:
    """argparse type: a finite number in [low, high] (``low_open``: above ``low``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number.") from None
        if not math.isfinite(value) or value < low or value > high or (low_open and value == low):
            bound = f"above {low:g}" if low_open else f"at least {low:g}" if low > -math.inf and high == math.inf \
                else f"between {low:g} and {high:g}" if low > -math.inf else "a finite number"
            raise argparse.ArgumentTypeError(f"must be {bound} (got {text}).")
        return value
    return parse


def read_token(token_file: str | None) -> tuple[str, bool]:
    """(token, chosen by the user): --token-file, else $MEDCLIPSAM_TOKEN, else a fresh random one."""
    from .wire import TOKEN_ENV  # here, so the command line starts without numpy

    if token_file:
        path = Path(token_file)
        if not path.is_file():
            raise InputError(f"Token file '{path}' does not exist; write a long random string into it "
                             "(e.g. python -c \"import secrets; print(secrets.token_urlsafe(32))\" > FILE).")
        return path.read_text().strip(), True  # its length is checked with the address (server/serve.py)
    if os.environ.get(TOKEN_ENV, "").strip():
        return os.environ[TOKEN_ENV].strip(), True
    return secrets.token_urlsafe(24), False
