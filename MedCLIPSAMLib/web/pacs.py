"""The page's PACS browser (``medclipsam web --dicomweb URL``): the DICOMweb server's studies, a study's series,
and Open series, which retrieves the series into the cache (``dicom.dicomweb.fetch_series``: whole or absent)
and loads that folder as a DICOM folder given on the command line is loaded."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from ..dicom import dicomweb
from ..errors import InputError
from .state import PacsSeriesRow, PacsStudyRow, PanelState


def study_title(study: dicomweb.StudySummary) -> str:
    parts = [study.patient_name or study.patient_id or "?", study.date, study.description,
             "/".join(study.modalities)]
    return " · ".join(p for p in parts if p)


def series_title(series: dicomweb.SeriesSummary) -> str:
    parts = [f"#{series.number}" if series.number is not None else "", series.modality, series.description,
             f"{series.instances} images" if series.instances is not None else ""]
    return " · ".join(p for p in parts if p) or series.series_uid


class PacsLogic:
    """Lists and opens; every server call goes through ``dicomweb`` (its errors are one line)."""

    def __init__(self, panel: PanelState, url: str, token_file: str | None, cache: str | None,
                 load_folder: Callable[[Path, str], None]):
        self.panel, self.url, self.token_file = panel, url, token_file
        self.cache = Path(cache) if cache else Path(tempfile.gettempdir()) / "medclipsam-dicomweb"
        self.load_folder = load_folder
        self._client = None
        self._series: dict[str, dicomweb.SeriesSummary] = {}
        panel.pacs_url = url

    def client(self):
        if self._client is None:
            self._client = dicomweb.connect(self.url, self.token_file)
        return self._client

    def refresh(self) -> None:
        """The server's studies (QIDO-RS); the first one's series."""
        studies = dicomweb.list_studies(self.client())
        self.panel.pacs_studies = [PacsStudyRow(s.study_uid, study_title(s)) for s in studies]
        self.panel.pacs_series, self._series = [], {}
        if not studies:
            self.panel.pacs_study = ""
            raise InputError(f"The DICOMweb server at {self.url} holds no studies.")
        uids = [s.study_uid for s in studies]
        self.select_study(self.panel.pacs_study if self.panel.pacs_study in uids else uids[0])
        self.panel.message, self.panel.message_kind = f"{len(studies)} studies on the PACS.", "info"

    def select_study(self, study_uid: str) -> None:
        if not study_uid:
            return
        series = dicomweb.list_series(self.client(), study_uid)
        self.panel.pacs_study = study_uid
        self._series = {s.series_uid: s for s in series if s.modality not in ("SEG", "SR", "PR", "KO")}
        self.panel.pacs_series = [PacsSeriesRow(s.series_uid, series_title(s)) for s in self._series.values()]
        self.panel.pacs_selected_series = next(iter(self._series), "")

    def open_series(self) -> None:
        uid = self.panel.pacs_selected_series
        if uid not in self._series:
            raise InputError("Choose a series in PACS series first (press Refresh PACS to list them).")
        series = self._series[uid]
        folder = dicomweb.fetch_series(self.client(), series, self.cache)
        self.load_folder(folder, series.case_id)  # the volume's (and the exports') name: patient and series
