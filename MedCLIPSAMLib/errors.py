"""User-facing errors.

Every problem a user can fix (bad file, bad option, missing weights) is raised as
``MedCLIPSAMError`` with a message that names the problem and what to do. The command
line prints the message and exits with ``exit_code``; Slicer shows it in a dialog.
Anything else reaching the user is a bug.
"""
from __future__ import annotations


class MedCLIPSAMError(Exception):
    """A problem the user can fix; ``str(error)`` says what and how."""

    exit_code = 2


class InputError(MedCLIPSAMError):
    """The image, volume or prompt cannot be used."""

    exit_code = 3


class ModelError(MedCLIPSAMError):
    """Model weights are missing, unreachable or do not match."""

    exit_code = 4


class Cancelled(MedCLIPSAMError):
    """The user cancelled a run; nothing was written."""

    exit_code = 130
