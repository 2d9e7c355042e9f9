"""The client/server version handshake against a real server on 127.0.0.1 (uvicorn in this process)."""
from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest

from MedCLIPSAMLib import __version__, protocol
from MedCLIPSAMLib.client import EngineClient, EngineError
from conftest import ENGINE_TOKEN as TOKEN, LiveServer


@pytest.fixture(scope="module")
def server(tiny_clip_folder):
    """A server without preloaded models: the handshake happens before any model is needed."""
    from MedCLIPSAMLib.server.app import create_app
    from MedCLIPSAMLib.server.engine import Engine, EngineConfig

    live = LiveServer(create_app(Engine(EngineConfig(clip_model=str(tiny_clip_folder), device="cpu")), TOKEN))
    yield live
    live.stop()


class NewerClient(EngineClient):
    protocol = protocol.PROTOCOL_VERSION + 1
    version = "9.0.0"


def test_info_names_the_package_and_protocol_versions(server):
    info = EngineClient(server.url, TOKEN).handshake()
    assert info["version"] == __version__ and info["protocol"] == protocol.PROTOCOL_VERSION
    assert info["min_client_protocol"] == protocol.MIN_CLIENT_PROTOCOL <= protocol.PROTOCOL_VERSION


def test_a_newer_client_gets_one_line_naming_both_versions_and_the_server_keeps_running(server):
    with pytest.raises(EngineError) as refused:
        NewerClient(server.url, TOKEN).segment(np.zeros((1, 64, 64)) + np.arange(64), "mass")
    message = str(refused.value)
    assert refused.value.status == 426 and "\n" not in message
    assert (f"client (MedCLIP-SAM 9.0.0, protocol {protocol.PROTOCOL_VERSION + 1})" in message
            and f"server (MedCLIP-SAM {__version__}, protocol {protocol.PROTOCOL_VERSION}" in message)
    assert "update the engine server" in message and "update this client" not in message
    assert EngineClient(server.url, TOKEN).info()["queue"] == {"queued": 0, "running": 0}


def test_a_client_older_than_the_server_accepts_is_told_to_update_itself(server, monkeypatch):
    monkeypatch.setattr(protocol, "PROTOCOL_VERSION", 3)
    monkeypatch.setattr(protocol, "MIN_CLIENT_PROTOCOL", 2)
    client = EngineClient(server.url, TOKEN)  # protocol 1, as the package was imported
    with pytest.raises(EngineError) as refused:
        client.status("nothing")
    message = str(refused.value)
    assert refused.value.status == 426 and "\n" not in message
    assert f"client (MedCLIP-SAM {__version__}, protocol 1)" in message and "protocol 3" in message
    assert "answers clients of protocol 2-3" in message and "update this client" in message


def test_a_newer_server_keeps_answering_an_older_client_the_protocol_allows(server, monkeypatch):
    monkeypatch.setattr(protocol, "PROTOCOL_VERSION", 2)  # a newer server that still answers protocol 1
    client = EngineClient(server.url, TOKEN)
    assert client.protocol == 1 and client.handshake()["protocol"] == 2
    with pytest.raises(EngineError) as unknown:
        client.status("nothing")
    assert unknown.value.status == 404  # answered, not refused


def test_a_request_without_the_header_is_answered_as_protocol_1(server):
    """Clients from before the handshake send no protocol header."""
    request = urllib.request.Request(server.url + "/info", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert json.loads(answer.read())["protocol"] == protocol.PROTOCOL_VERSION
    request.add_header(protocol.PROTOCOL_HEADER, "one")
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(request, timeout=10)
    assert bad.value.code == 400 and "must be a whole number" in json.loads(bad.value.read())["detail"]


def test_a_server_too_old_for_the_client_is_refused_before_anything_is_sent(server):
    class NeedsNewerServer(EngineClient):
        min_server_protocol = protocol.PROTOCOL_VERSION + 1

    client = NeedsNewerServer(server.url, TOKEN)
    with pytest.raises(EngineError) as refused:
        client.segment(np.zeros((1, 64, 64)) + np.arange(64), "mass")
    message = str(refused.value)
    assert "\n" not in message and f"MedCLIP-SAM {__version__} (protocol {protocol.PROTOCOL_VERSION})" in message
    assert f"needs an engine server of protocol {protocol.PROTOCOL_VERSION + 1}" in message
    assert "update the engine server" in message and client.volume_bytes_sent == 0


def test_the_cli_prints_the_mismatch_as_one_error_line(server, tmp_path, capsys, monkeypatch):
    from MedCLIPSAMLib.cli import main

    image = tmp_path / "image.png"
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray((np.arange(64 * 64) % 251).reshape(64, 64).astype(np.uint8)), str(image))
    monkeypatch.setenv("MEDCLIPSAM_TOKEN", TOKEN)
    monkeypatch.setattr(EngineClient, "protocol", protocol.PROTOCOL_VERSION + 1)
    code = main(["segment", str(image), "-p", "mass", "-o", str(tmp_path / "out.png"), "--server", server.url, "-q"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.count("\n") == 0 and err.startswith("error: Version mismatch")
    assert "update the engine server" in err and not (tmp_path / "out.png").exists()
