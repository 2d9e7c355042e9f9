"""Where the extension-level resources (model catalog, prompt presets) are found.

One copy lives in the repository's ``Resources/`` folder. A pip install ships it as
``MedCLIPSAMLib/resources`` (pyproject maps the folder); the Slicer build copies it next
to the engine. Either way this is the one place that knows.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CANDIDATES = (PACKAGE_DIR / "resources", PACKAGE_DIR.parent / "Resources")


def resource_path(name: str) -> Path:
    """The path of a resource file; raises FileNotFoundError naming the places searched."""
    for folder in CANDIDATES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{name} not found in {', '.join(str(c) for c in CANDIDATES)}; reinstall MedCLIP-SAM.")
