"""The one table from a prompt to its SNOMED CT category/type codes and colour (Resources/terminology.json).

Slicer segments (``slicer.mrml.segment_style``) and DICOM SEG segments (``dicom.seg``) are both coded from
here, so a structure gets the same code whichever way it leaves the engine. Plain Python (no torch, no VTK):
Slicer's own interpreter imports it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

from .resources import resource_path

Code = tuple[str, str, str]
"""(coding scheme designator, code value, code meaning), e.g. ("SCT", "39607008", "Lung")."""
GENERAL_ANATOMY_LIST = "Segmentation category and type - 3D Slicer General Anatomy list"
"""The Slicer terminology list an entry's codes are in unless its 'list' says otherwise."""
TISSUE: Code = ("SCT", "85756007", "Tissue")
"""Category and type for a prompt the table does not know (what Slicer and dcmqi use for an uncoded segment)."""


@dataclass(frozen=True)
class Term:
    category: Code
    type: Code
    color: tuple[float, float, float]
    slicer_list: str | None
    """The Slicer terminology list holding the code; None: in no list Slicer ships (only the colour is set)."""
    known: bool = True
    """False for the generic Tissue/Tissue fallback of a prompt the table does not know."""


@lru_cache(maxsize=1)
def _table() -> dict[str, dict]:
    table = json.loads(resource_path("terminology.json").read_text(encoding="utf-8"))
    return {key: value for key, value in table.items() if not key.startswith("_")}


def find_term(prompt: str) -> Term | None:
    """The table's entry for a prompt (case and surrounding spaces ignored), or None."""
    entry = _table().get(prompt.strip().lower())
    if entry is None:
        return None
    return Term(tuple(entry["category"]), tuple(entry["type"]), tuple(entry["color"]),
                entry.get("list", GENERAL_ANATOMY_LIST))


def term_for(prompt: str) -> Term:
    """The prompt's entry, else Tissue/Tissue (a DICOM segment must be coded; its label still names the prompt)."""
    return find_term(prompt) or Term(TISSUE, TISSUE, (0.5, 0.5, 0.5), None, known=False)
