"""The review state of a dataset: one JSON file inside it, so the queue survives closing Slicer.

``<dataset>/medclipsam_review.json`` maps each reviewed case to its entry (``state`` plus details).
A case without an entry is pending. Intents (``accepting``, ``excluding``) are written before any file
moves, so a crash leaves a case marked as interrupted rather than looking untouched, and ``medclipsam
label`` leaves every case with an entry alone (not even ``--overwrite`` replaces a reviewer's work).
Files kept by the review live in ``<dataset>/medclipsam_review/``, outside imagesTr/labelsTr, where
nnU-Net never looks.
"""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from .errors import InputError
from .inputs import read_json
from .outputs import write_json

STATE_FILE = "medclipsam_review.json"
REVIEW_FOLDER = "medclipsam_review"
ACCEPTING, ACCEPTED, EXCLUDING, EXCLUDED = "accepting", "accepted", "excluding", "excluded"
DONE = (ACCEPTED, EXCLUDED)
INTERRUPTED = (ACCEPTING, EXCLUDING)
STATE_VERSION = 1


def state_path(dataset: Path) -> Path:
    return Path(dataset) / STATE_FILE


def pseudo_path(dataset: Path, case_id: str) -> Path:
    """Where the pseudo-label an accepted label replaced is kept."""
    return Path(dataset) / REVIEW_FOLDER / "pseudo" / f"{case_id}.nii.gz"


def accepted_seg_path(dataset: Path, case_id: str) -> Path:
    """Where Accept writes a DICOM case's accepted label as a SEMIAUTOMATIC DICOM SEG (``review.seg``)."""
    return Path(dataset) / REVIEW_FOLDER / "seg" / f"{case_id}.dcm"


def excluded_paths(dataset: Path, case_id: str) -> tuple[Path, Path]:
    """Where an excluded case's image and label are kept (the same layout as imagesTr/labelsTr)."""
    folder = Path(dataset) / REVIEW_FOLDER / "excluded"
    return folder / "imagesTr" / f"{case_id}_0000.nii.gz", folder / "labelsTr" / f"{case_id}.nii.gz"


def history_folder(dataset: Path) -> Path:
    """Earlier accepted labels a later accept replaced, and files an exclusion found in its way."""
    return Path(dataset) / REVIEW_FOLDER / "history"


def read_states(dataset: Path) -> dict[str, dict[str, Any]]:
    """case -> entry (empty when nothing was reviewed yet); a damaged file is a one-line error."""
    path = state_path(dataset)
    if not path.exists():
        return {}
    content = read_json(path, "The review state")
    if not isinstance(content, dict) or not isinstance(content.get("cases"), dict):
        raise InputError(f"'{path}' is not a MedCLIP-SAM review state (no 'cases' object); restore it from a backup "
                         "or remove it to start the review over.")
    return content["cases"]


def write_states(dataset: Path, states: dict[str, dict[str, Any]]) -> None:
    """The whole state, atomically (a crash leaves the previous file or this one)."""
    write_json(state_path(dataset), {"version": STATE_VERSION, "cases": dict(sorted(states.items()))},
               overwrite=True)


def set_state(dataset: Path, case_id: str, entry: dict[str, Any] | None) -> dict[str, Any] | None:
    """Replace (or with None remove) one case's entry, stamped with the time."""
    states = read_states(dataset)
    if entry is None:
        states.pop(case_id, None)
    else:
        entry = {**entry, "time": datetime.datetime.now().isoformat(timespec="seconds")}
        states[case_id] = entry
    write_states(dataset, states)
    return entry


def review_column(entry: dict[str, Any] | None) -> str:
    """The ``review`` column of labels.csv for a case's entry."""
    if not entry:
        return ""
    state = entry.get("state")
    if state == ACCEPTED:
        return "reviewer-edited" if entry.get("changed") else "reviewer-approved"
    if state == EXCLUDED:
        return "excluded"
    return "interrupted"


def left_alone_note(dataset: Path, case_id: str) -> str | None:
    """Why ``medclipsam label`` must not touch a case (None: it may)."""
    entry = read_states(dataset).get(case_id)
    if entry is None:
        return None
    return (f"{entry.get('state')} in the review queue: left alone, even with --overwrite "
            f"(see {STATE_FILE})")
