"""A real PACS for tests: Orthanc with its DICOMweb plugin on 127.0.0.1, free ports, a temporary storage folder.

Debian's packages (``orthanc``, ``orthanc-dicomweb``; .ci/run installs them) may also start a system service:
this instance has its own configuration, ports and storage, so it never touches that one.

With ``tokens`` ({token: "read" or "write"}) the instance also loads Orthanc's Python plugin (Debian's
``orthanc-python``) with ``orthanc_token_filter.py``: it then accepts only ``Authorization: Bearer <token>``
requests, so a PACS that needs a token is a real server too. The helpers below send the write token.
"""
from __future__ import annotations

import glob
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

PLUGIN_GLOBS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so*", "/usr/lib/orthanc/libOrthancDicomWeb.so*",
                "/usr/lib/*/orthanc/plugins/libOrthancDicomWeb.so*", "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so*")
PYTHON_PLUGIN_GLOBS = tuple(p.replace("DicomWeb", "Python") for p in PLUGIN_GLOBS)
TOKEN_FILTER = Path(__file__).with_name("orthanc_token_filter.py")


def find_plugin(patterns) -> str | None:
    return next((p for pattern in patterns for p in sorted(glob.glob(pattern))), None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Orthanc:
    """One Orthanc process; ``url`` is its REST root, ``dicomweb`` its DICOMweb root."""

    def __init__(self, folder: Path, tokens: dict[str, str] | None = None):
        binary = shutil.which("Orthanc") or next(iter(glob.glob("/usr/sbin/Orthanc")), None)
        plugin = find_plugin(PLUGIN_GLOBS)
        if binary is None or plugin is None:
            pytest.skip("Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)")
        plugins, extra = [plugin], {}
        if tokens:
            python_plugin = find_plugin(PYTHON_PLUGIN_GLOBS)
            if python_plugin is None:
                pytest.skip("Orthanc's Python plugin is not installed (apt-get install orthanc-python)")
            plugins.append(python_plugin)
            extra = {"PythonScript": str(TOKEN_FILTER), "MedCLIPSAMBearerTokens": tokens}
        writer = next((t for t, scope in (tokens or {}).items() if scope == "write"), None)
        self.headers = {"Authorization": f"Bearer {writer}"} if writer else {}
        self.http_port = free_port()
        config = {"Name": "medclipsam-test", "StorageDirectory": str(folder / "storage"),
                  "IndexDirectory": str(folder / "storage"), "HttpPort": self.http_port, "DicomPort": free_port(),
                  "DicomServerEnabled": False, "HttpBindAddress": "127.0.0.1", "RemoteAccessAllowed": False,
                  "AuthenticationEnabled": False, "Plugins": plugins,
                  "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, **extra}
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = (folder / "orthanc.log").open("w")
        self.process = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=self.log,
                                        stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = f"{self.url}/dicom-web"
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{self.dicomweb}/studies", headers=self.headers, timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Orthanc did not start; see {folder / 'orthanc.log'}")
            time.sleep(0.2)

    def upload(self, paths) -> None:
        """Files into Orthanc through its own REST API (not the code under test)."""
        for path in paths:
            response = requests.post(f"{self.url}/instances", data=Path(path).read_bytes(), headers=self.headers,
                                     timeout=30)
            response.raise_for_status()

    def series_of(self, study_uid: str) -> list[dict]:
        """Orthanc's own view of a study's series (its REST API): their main DICOM tags."""
        found = requests.post(f"{self.url}/tools/find", json={"Level": "Series", "Query": {"StudyInstanceUID": study_uid},
                                                               "Expand": True}, headers=self.headers, timeout=30).json()
        return [item["MainDicomTags"] for item in found]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture
def orthanc(tmp_path_factory):
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()


TOKENS = {"write-token-5f2c": "write", "read-token-9a7e": "read"}
"""The token-checking PACS's tokens: one may read and store, one may only read."""


@pytest.fixture(scope="module")
def orthanc_with_tokens(tmp_path_factory):
    """An Orthanc that refuses every request without one of ``TOKENS`` (HTTP 403); one per test module (each
    stop costs Orthanc's HTTP server seconds), so tests there upload their own patients and filter by study."""
    server = Orthanc(tmp_path_factory.mktemp("orthanc-token"), TOKENS)
    yield server
    server.stop()
