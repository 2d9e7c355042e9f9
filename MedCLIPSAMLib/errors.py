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


class OptionError(MedCLIPSAMError):
    """A command-line option has a value that cannot work (exit 2, as argparse's own errors)."""

    exit_code = 2


class InputError(MedCLIPSAMError):
    """The image, volume or prompt cannot be used."""

    exit_code = 3


class SettingError(InputError):
    """A setting has a value that cannot work.

    ``template`` holds ``{name}`` where the setting is named: Python callers and the server see
    ``label`` (default ``'field'``), the command line puts its own option there (``--k`` for
    ``max_components``), so one check serves both without leaking internal names to the CLI.
    It stays an ``InputError`` (the server answers 400), but the command line exits 2 (an option).
    """

    exit_code = 2

    def __init__(self, field: str, template: str, label: str | None = None):
        self.field, self.template = field, template
        super().__init__(template.format(name=label or f"'{field}'"))

    def named(self, name: str) -> str:
        """The message with ``name`` (e.g. ``--k``) for the setting."""
        return self.template.format(name=name)


class ModelError(MedCLIPSAMError):
    """Model weights are missing, unreachable or do not match."""

    exit_code = 4


class Cancelled(MedCLIPSAMError):
    """The user cancelled a run; the message says what was written."""

    exit_code = 130
