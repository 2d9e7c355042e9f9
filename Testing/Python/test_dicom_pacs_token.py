"""A PACS that needs a bearer token: a real Orthanc (DICOMweb plugin) behind its Python plugin's request filter
(``orthanc_token_filter.py``), which lets in only ``Authorization: Bearer <token>`` for its tokens (a write token,
and a read token that may not STOW). ``label URL --pacs-token-file`` and ``web --dicomweb`` get through with the
right token; a wrong or missing token is one error line naming the HTTP status and --pacs-token-file, with
nothing written; a bad token file is refused before any request; no token is ever printed or written."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
import requests

from dicom_builders import sample_volume, write_series
from orthanc import TOKENS, free_port, orthanc_with_tokens  # noqa: F401 (the fixture)
from web_apps import make_app
from MedCLIPSAMLib.cli import main
from MedCLIPSAMLib.dicom import dicomweb
from MedCLIPSAMLib.errors import MedCLIPSAMError

TINY = ["--steps", "1", "--samples", "1", "--sam", "litemedsam", "--device", "cpu", "--runtime", "torch",
        "--faithfulness-slices", "0", "--refine-rounds", "0", "--quiet"]
WRITER = next(t for t, scope in TOKENS.items() if scope == "write")
READER = next(t for t, scope in TOKENS.items() if scope == "read")
WRONG = "not-a-token-31d8"
SECRETS = (WRITER, READER, WRONG)


def token_file(folder: Path, token: str, name: str = "token.txt") -> Path:
    path = folder / name
    path.write_text(f"{token}\n")
    return path


def label_args(url: str, raw: Path, *extra: str) -> list[str]:
    return ["label", url, "-p", "brain tumor", "--raw", str(raw), "--dataset-id", "8", "--name", "Token",
            "--pacs-modality", "MR", *extra]


def assert_no_secret(texts=(), folder: Path | None = None) -> None:
    """No token in what the command printed, nor in any file it wrote (records, labels.csv, dataset.json)."""
    for text in texts:
        assert not any(secret in text for secret in SECRETS), text
    for path in (folder.rglob("*") if folder is not None and folder.exists() else []):
        if path.is_file():
            data = path.read_bytes()
            assert not any(secret.encode() in data for secret in SECRETS), path


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def upload_study(server, folder: Path, patient: str = "T1") -> list[Path]:
    """Three slices of the sample's tumour (LiteMedSAM on CPU costs seconds per slice)."""
    files = write_series(sample_volume(slices=(12, 15)), folder, patient=patient)
    server.upload(files)
    return files


def test_label_with_a_token_labels_and_only_a_write_token_stores(orthanc_with_tokens, tmp_path, tiny_clip_folder,
                                                                  capsys, caplog):
    caplog.set_level(logging.DEBUG)  # what dicomweb-client, requests and urllib3 log: no token either
    server = orthanc_with_tokens
    files = upload_study(server, tmp_path / "up")
    source = pydicom.dcmread(files[0])
    assert requests.get(f"{server.dicomweb}/studies", timeout=10).status_code == 403  # the server does check
    raw = tmp_path / "raw"
    dataset = raw / "Dataset008_Token"

    # a read-only token: retrieved and labelled, but the server refuses the SEG (STOW-RS is a POST)
    reader = token_file(tmp_path, READER, "reader.txt")
    args = label_args(server.dicomweb, raw, "--study", source.StudyInstanceUID, "--pacs-token-file", str(reader),
                      "--stow", "--clip-model", str(tiny_clip_folder), *TINY)
    assert main(args) == 3
    first = capsys.readouterr()
    assert "1 labelled" in first.out and "stored 0 SEG(s)" in first.out, first
    assert "1 SEG(s) not stored" in first.err and "HTTP 403" in first.err
    assert "did not accept the token; check the token in --pacs-token-file and that it may store objects" in first.err
    [label] = (dataset / "labelsTr").glob("*.nii.gz")
    assert label.name.startswith("T1_")
    [record] = [json.loads(p.read_text()) for p in (dataset / "medclipsam_labels").glob("*.json")]
    assert record["status"] == "added" and not record.get("stowed")
    assert [s["Modality"] for s in server.series_of(source.StudyInstanceUID)] == ["MR"]

    # the write token: nothing retrieved or labelled again, the SEG stored through the token-checking server
    writer = token_file(tmp_path, WRITER, "writer.txt")
    args[args.index(str(reader))] = str(writer)
    assert main(args) == 0
    second = capsys.readouterr()
    assert "0 labelled" in second.out and "stored 1 SEG(s)" in second.out, second
    segs = [s for s in server.series_of(source.StudyInstanceUID) if s["Modality"] == "SEG"]
    assert len(segs) == 1
    [stored] = dicomweb.connect(server.dicomweb, reader).retrieve_series(source.StudyInstanceUID,
                                                                          segs[0]["SeriesInstanceUID"])
    seg = hd.seg.Segmentation.from_dataset(stored)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert seg.get_segment_description(1).segment_label == "brain tumor"
    record = json.loads(next((dataset / "medclipsam_labels").glob("*.json")).read_text())
    assert record["stowed"] is True
    assert_no_secret([first.out, first.err, second.out, second.err, caplog.text], raw)
    assert "GET /dicom-web/studies/" in caplog.text and "POST /dicom-web/studies" in caplog.text  # the debug log was on: the requests are in it


@pytest.mark.parametrize("token", [WRONG, None], ids=["wrong-token", "no-token-file"])
def test_a_refused_token_is_one_line_and_writes_nothing(orthanc_with_tokens, tmp_path, tiny_clip_folder, capsys,
                                                        token):
    server = orthanc_with_tokens
    upload_study(server, tmp_path / "up", patient="R1")
    raw = tmp_path / "raw"
    extra = ["--pacs-token-file", str(token_file(tmp_path, token))] if token else []
    code = main(label_args(server.dicomweb, raw, *extra, "--stow", "--clip-model", str(tiny_clip_folder), *TINY))
    captured = capsys.readouterr()
    assert code == MedCLIPSAMError.exit_code and captured.out == ""
    line = one_error_line(captured.err)
    assert f"The DICOMweb server at {server.dicomweb} refused the series search (HTTP 403)" in line
    assert ("did not accept the token; check the token in --pacs-token-file" if token
            else "it needs a token; give it in a file with --pacs-token-file") in line
    assert not raw.exists() or not any(raw.iterdir())  # no dataset, no cache, no half case
    assert_no_secret([captured.err])


@pytest.mark.parametrize("content, expected", [
    (None, "does not exist"), ("", "must hold one token"), ("  \n\n", "must hold one token"),
    ("two tokens\n", "must hold one token"), (b"\xff\xfe\x00bad", "is not UTF-8 text"), ("folder", "it is a folder")])
def test_a_bad_token_file_is_refused_before_any_request(tmp_path, capsys, content, expected):
    nothing_there = f"http://127.0.0.1:{free_port()}/dicom-web"  # a request would say "Cannot reach"
    path = tmp_path / "token.txt"
    if content == "folder":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    raw = tmp_path / "raw"
    code = main(label_args(nothing_there, raw, "--pacs-token-file", str(path)))
    line = one_error_line(capsys.readouterr().err)
    assert code != 0 and expected in line and "token.txt" in line and "Cannot reach" not in line
    assert not raw.exists() or not any(raw.iterdir())
    # the web command too: refused before the page or its engine starts
    assert main(["web", "--dicomweb", nothing_there, "--pacs-token-file", str(path), "--port", "0"]) != 0
    line = one_error_line(capsys.readouterr().err)
    assert expected in line and "token.txt" in line


def test_web_token_option_needs_a_pacs(tmp_path, capsys):
    assert main(["web", "--pacs-token-file", str(token_file(tmp_path, WRITER)), "--port", "0"]) == 2
    assert "--pacs-token-file needs --dicomweb URL" in one_error_line(capsys.readouterr().err)


def test_web_lists_and_opens_through_the_token_server_and_says_why_it_cannot(orthanc_with_tokens, tmp_path):
    server = orthanc_with_tokens
    files = upload_study(server, tmp_path / "up", patient="W1")
    cache = tmp_path / "cache"
    app = make_app(tmp_path, "token-ok", dicomweb_url=server.dicomweb, pacs_cache=str(cache),
                   pacs_token_file=str(token_file(tmp_path, READER)))
    panel = app.panel
    titles = [row.title.split(" · ")[0] for row in panel.pacs_studies]
    assert "Test^W1" in titles and panel.message == f"{len(titles)} studies on the PACS."
    app.pacs.select_study(pydicom.dcmread(files[0]).StudyInstanceUID)
    app.pacs.open_series()
    assert len(list(cache.rglob("*.dcm"))) == len(files) and panel.volume_name.startswith("W1_")

    for name, token, advice in (("token-wrong", WRONG, "did not accept the token; check the token in "
                                                       "--pacs-token-file"),
                                ("token-none", None, "it needs a token; give it in a file with --pacs-token-file")):
        app = make_app(tmp_path, name, dicomweb_url=server.dicomweb, pacs_cache=str(tmp_path / name),
                       pacs_token_file=str(token_file(tmp_path, token, f"{name}.txt")) if token else None)
        panel = app.panel
        assert panel.message_kind == "error" and panel.pacs_studies == [] and "\n" not in panel.message
        assert panel.message.startswith(f"The DICOMweb server at {server.dicomweb} refused the study search "
                                        "(HTTP 403)") and advice in panel.message
        assert_no_secret([panel.message])
        assert not (tmp_path / name).exists()


def test_the_web_command_lists_studies_through_the_token_server(orthanc_with_tokens, tmp_path, tiny_clip_folder):
    """``medclipsam web --dicomweb URL --pacs-token-file FILE`` as a process, in Debian's chromium: the study is
    listed, and the command's log holds no token."""
    pytest.importorskip("trame_slicer")
    pytest.importorskip("playwright")
    from MedCLIPSAMLib.web.browser import browser_page, chromium_path, wait_for_message, web_process

    if chromium_path() is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    upload_study(orthanc_with_tokens, tmp_path / "up", patient="B1")
    args = ["--dicomweb", orthanc_with_tokens.dicomweb, "--pacs-token-file", str(token_file(tmp_path, READER)),
            "--pacs-cache", str(tmp_path / "cache"), "--clip-model", str(tiny_clip_folder), "--device", "cpu"]
    log = tmp_path / "web.log"
    studies = requests.get(f"{orthanc_with_tokens.url}/studies", headers=orthanc_with_tokens.headers, timeout=10)
    count = len(studies.json())  # Orthanc's own count (its REST API), B1's study among them
    with web_process(args, log) as url, browser_page(url) as page:
        page.get_by_role("combobox", name="PACS studies").wait_for()
        wait_for_message(page, rf"^{count} studies on the PACS\.$", 60)
    assert_no_secret([log.read_text(errors="replace")])
