"""A DICOMweb server (a PACS such as Orthanc, dcm4chee or a cloud DICOM store) as a source and a store.

The functions a caller needs, each one request pattern of the standard:

- ``connect(url, token_file)``: a client for the server's DICOMweb root, with a bearer token read from a file;
- ``list_studies`` / ``list_series``: QIDO-RS searches (filters: study UID, modality, patient), as plain records;
- ``fetch_series``: WADO-RS retrieval of one series into a cache folder, resumable and never half-written:
  instances go into a temporary folder beside it that is renamed into place once the series is whole, so a
  series folder in the cache is always complete and a second call returns it without a request;
- ``store``: STOW-RS of DICOM files (a SEG back to the server).

Errors the user can fix (server unreachable, token refused, unknown series) are ``MedCLIPSAMError`` with one line
naming the server and what to do. The web front end and ``medclipsam label URL`` both use these.
"""
from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ..errors import InputError, MedCLIPSAMError, OptionError

# Searches are one request (no offset paging): Orthanc ignores the offset of a filtered study search, so
# dicomweb-client's get_remaining loops forever there; a server caps a page by its own setting.
STUDY_FIELDS = ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "StudyDescription",
                "ModalitiesInStudy", "NumberOfStudyRelatedSeries")
SERIES_FIELDS = ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesDescription", "SeriesNumber",
                 "NumberOfSeriesRelatedInstances", "PatientID")
PARTIAL_PREFIX = ".partial-"
"""Temporary series folders in the cache: never read as a series, removed when a later fetch finds them."""


@dataclass(frozen=True)
class StudySummary:
    study_uid: str
    patient_id: str
    patient_name: str
    date: str
    description: str
    modalities: tuple[str, ...]
    series_count: int | None


@dataclass(frozen=True)
class SeriesSummary:
    study_uid: str
    series_uid: str
    modality: str
    description: str
    number: int | None
    instances: int | None
    patient_id: str

    @property
    def case_id(self) -> str:
        """A stable nnU-Net case id: the patient id (letters, digits, '-' kept) and a hash of the series UID."""
        patient = re.sub(r"[^A-Za-z0-9-]+", "-", self.patient_id).strip("-") or "series"
        return f"{patient[:32]}_{hashlib.sha1(self.series_uid.encode()).hexdigest()[:10]}"


def is_dicomweb_url(text: str) -> bool:
    return bool(re.match(r"https?://", str(text)))


def read_token(token_file: str | os.PathLike | None) -> str | None:
    """The bearer token in a file (surrounding whitespace dropped); None without a file."""
    if token_file is None:
        return None
    from ..inputs import read_text

    token = read_text(token_file, "Token file").strip()
    if not token or any(c.isspace() for c in token):
        raise InputError(f"Token file '{token_file}' must hold one token (no spaces or line breaks inside).")
    return token


def connect(url: str, token_file: str | os.PathLike | None = None, timeout: float = 60.0):
    """A ``dicomweb_client.DICOMwebClient`` for the DICOMweb root ``url`` (e.g. http://pacs:8042/dicom-web),
    sending ``Authorization: Bearer <token>`` when a token file is given."""
    from dicomweb_client import DICOMwebClient

    if not is_dicomweb_url(url):
        raise OptionError(f"'{url}' is not a DICOMweb address; write it like http://127.0.0.1:8042/dicom-web.")
    token = read_token(token_file)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    client = DICOMwebClient(url.rstrip("/"), headers=headers, timeout=timeout)
    # dicomweb-client retries every failed request, refused connections included, 5 times with 2-16 s waits: a
    # mistyped address took 30 s to say so. Three tries 1 and 2 s apart still ride out a busy PACS (429/503).
    client.set_http_retry_params(retry=True, max_attempts=3, wait_exponential_multiplier=500)
    return client


def sends_token(client) -> bool:
    """Whether the client sends a bearer token (``connect`` puts it in the session's headers): a refusal then
    means a wrong token, else a missing one."""
    headers = getattr(getattr(client, "_session", None), "headers", None) or {}
    return "Authorization" in headers


def _value(item: dict[str, Any], keyword: str, default: Any = "") -> Any:
    from pydicom.datadict import tag_for_keyword

    element = item.get(f"{tag_for_keyword(keyword):08X}", {})
    values = element.get("Value") or []
    if not values:
        return default
    value = values[0]
    if isinstance(value, dict):  # a person name
        return value.get("Alphabetic", "")
    return value


def _number(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


@contextmanager
def _failures(client, what: str, stores: bool = False) -> Iterator[None]:
    """The server's failures during ``what`` as one line saying what to check (``stores``: a STOW-RS, which a
    token that may only read is refused)."""
    import requests

    try:
        yield
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            if sends_token(client):
                advice = "it did not accept the token; check the token in --pacs-token-file"
                advice += " and that it may store objects" if stores else ""
            else:
                advice = "it needs a token; give it in a file with --pacs-token-file"
            raise MedCLIPSAMError(f"The DICOMweb server at {client.base_url} refused {what} (HTTP {status}): "
                                  f"{advice}.") from None
        if status == 404:
            raise InputError(f"The DICOMweb server at {client.base_url} has no such object ({what}, HTTP 404).") from None
        raise MedCLIPSAMError(f"The DICOMweb server at {client.base_url} failed {what} (HTTP {status}).") from None
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise MedCLIPSAMError(f"Cannot reach the DICOMweb server at {client.base_url} ({type(exc).__name__}); check "
                              "the address and that the server runs.") from None


def _request(client, what: str, call, *args, **kwargs):
    with _failures(client, what):
        return call(*args, **kwargs)


def list_studies(client, study_uid: str | None = None, modality: str | None = None,
                 patient_id: str | None = None, limit: int | None = None) -> list[StudySummary]:
    """Studies matching the filters (QIDO-RS), sorted by date then UID."""
    filters = {k: v for k, v in (("StudyInstanceUID", study_uid), ("ModalitiesInStudy", modality),
                                 ("PatientID", patient_id)) if v}
    found = _request(client, "the study search", client.search_for_studies, search_filters=filters,
                     fields=list(STUDY_FIELDS), limit=limit)
    studies = [StudySummary(str(_value(i, "StudyInstanceUID")), str(_value(i, "PatientID")),
                            str(_value(i, "PatientName")), str(_value(i, "StudyDate")),
                            str(_value(i, "StudyDescription")),
                            tuple(str(m) for m in i.get(f"{0x00080061:08X}", {}).get("Value", [])),
                            _number(_value(i, "NumberOfStudyRelatedSeries", None))) for i in found]
    return sorted(studies, key=lambda s: (s.date, s.study_uid))


def list_series(client, study_uid: str | None = None, modality: str | None = None) -> list[SeriesSummary]:
    """Series matching the filters (QIDO-RS; all studies when ``study_uid`` is None), sorted by study, number."""
    filters = {"Modality": modality} if modality else {}
    found = _request(client, "the series search", client.search_for_series, study_instance_uid=study_uid,
                     search_filters=filters, fields=list(SERIES_FIELDS))
    series = [SeriesSummary(str(_value(i, "StudyInstanceUID", study_uid or "")), str(_value(i, "SeriesInstanceUID")),
                            str(_value(i, "Modality")), str(_value(i, "SeriesDescription")),
                            _number(_value(i, "SeriesNumber", None)),
                            _number(_value(i, "NumberOfSeriesRelatedInstances", None)),
                            str(_value(i, "PatientID"))) for i in found]
    return sorted(series, key=lambda s: (s.study_uid, s.number if s.number is not None else -1, s.series_uid))


def series_folder(cache: str | os.PathLike, series: SeriesSummary) -> Path:
    return Path(cache) / series.study_uid / series.series_uid


def fetch_series(client, series: SeriesSummary, cache: str | os.PathLike) -> Path:
    """The series' folder in the cache, retrieved now (WADO-RS) unless it is there already; whole or absent."""
    target = series_folder(cache, series)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f"{PARTIAL_PREFIX}{series.series_uid}-*"):
        shutil.rmtree(stale, ignore_errors=True)  # an earlier fetch that was stopped
    partial = target.parent / f"{PARTIAL_PREFIX}{series.series_uid}-{secrets.token_hex(4)}"
    partial.mkdir()
    try:
        count = 0
        with _failures(client, f"the retrieval of series {series.series_uid}"):
            for ds in client.iter_series(series.study_uid, series.series_uid):
                ds.save_as(partial / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
                count += 1
        if count == 0:
            raise InputError(f"Series {series.series_uid} on {client.base_url} holds no instances.")
        os.replace(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def store(client, paths: Iterable[str | os.PathLike]) -> int:
    """STOW-RS the DICOM files; returns how many the server stored (a failed instance raises, naming it)."""
    import pydicom

    datasets = [pydicom.dcmread(str(path)) for path in paths]
    if not datasets:
        return 0
    with _failures(client, "the upload (STOW-RS)", stores=True):
        response = client.store_instances(datasets)
    failed = getattr(response, "FailedSOPSequence", None) or []
    if failed:
        raise MedCLIPSAMError(f"The DICOMweb server at {client.base_url} refused {len(failed)} of {len(datasets)} "
                              f"uploaded objects (reason code {failed[0].get('FailureReason', '?')}).")
    return len(datasets)


def server_uids(client, series_uid: str, study_uid: str) -> Sequence[str]:
    """SOP instance UIDs the server holds in a series (QIDO-RS): to confirm a store."""
    found = _request(client, "the instance search", client.search_for_instances, study_instance_uid=study_uid,
                     series_instance_uid=series_uid, fields=["SOPInstanceUID"])
    return [str(_value(i, "SOPInstanceUID")) for i in found]
