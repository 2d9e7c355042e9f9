"""A PACS as a cohort's source and store for ``medclipsam label URL``.

The series a QIDO-RS search finds (``--study``, ``--modality``) are retrieved into a cache (``dicom.dicomweb``:
resumable, never half-written) and their headers checked (``dicom.series``) before any model loads. A series
that cannot be retrieved or is not a regular image series is skipped with its reason, and the run goes on with
the others; each remaining series is one case of the nnU-Net dataset, labelled as a folder's cases are. With
``--stow`` each added case's DICOM SEG goes back to the server (STOW-RS), and its record notes that it did, so
a re-run stores only what is not stored yet.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..dicom import dicomweb
from ..dicom.series import NOT_IMAGES, check_series
from ..errors import MedCLIPSAMError

CACHE_FOLDER = "medclipsam_dicom"
"""Default cache inside the dataset folder (nnU-Net reads only imagesTr/labelsTr)."""


@dataclass(frozen=True)
class Skipped:
    study_uid: str
    series_uid: str
    reason: str

    def line(self) -> str:
        return f"study {self.study_uid}, series {self.series_uid}: {self.reason}"


def pacs_series(client, cache: Path, study: str | None = None, modality: str | None = None,
                progress: Callable[[str, int, int], None] | None = None) -> tuple[list[tuple[str, Path]], list[Skipped]]:
    """The server's image series as (case id, series folder) (retrieved into ``cache`` and checked), and the
    series skipped."""
    series = [s for s in dicomweb.list_series(client, study, modality) if s.modality.upper() not in NOT_IMAGES]
    if not series:
        filters = ", ".join(f for f in (study and f"study {study}", modality and f"modality {modality}") if f)
        raise MedCLIPSAMError(f"The DICOMweb server at {client.base_url} lists no image series"
                              f"{' for ' + filters if filters else ''}; check --study / --modality.")
    cases, skipped = [], []
    for done, item in enumerate(series):
        try:
            folder = dicomweb.fetch_series(client, item, cache)
            check_series(sorted(str(p) for p in folder.glob("*.dcm")), folder)
            cases.append((item.case_id, folder))
        except MedCLIPSAMError as exc:
            skipped.append(Skipped(item.study_uid, item.series_uid, str(exc).splitlines()[0]))
        if progress is not None:
            progress("retrieve", done + 1, len(series))
    return cases, skipped


def stow_files(client, segs: list[tuple[str, Path]]) -> tuple[list[str], list[str]]:
    """Store each case's SEG file on the server; returns (case ids stored, failure lines)."""
    stored, failures = [], []
    for case_id, path in segs:
        if not path.is_file():
            failures.append(f"{case_id}: no SEG at {path} (relabel it with --overwrite)")
            continue
        try:
            dicomweb.store(client, [path])
            stored.append(case_id)
        except MedCLIPSAMError as exc:
            failures.append(f"{case_id}: {str(exc).splitlines()[0]}")
    return stored, failures


def report(skipped: list[Skipped], stow_failures: list[str]) -> int:
    """Print what was skipped or not stored; the exit code: 3 when anything was, else 0."""
    if skipped:
        print(f"skipped {len(skipped)} series (bad or unavailable study):", file=sys.stderr)
        for item in skipped:
            print(f"  {item.line()}", file=sys.stderr)
    if stow_failures:
        print(f"{len(stow_failures)} SEG(s) not stored on the server:", file=sys.stderr)
        for line in stow_failures:
            print(f"  {line}", file=sys.stderr)
    return 3 if skipped or stow_failures else 0
