"""The engine server under hostile but fair input: every refusal is a one-line 4xx, memory follows bytes sent.

The session's real engine server (uvicorn on 127.0.0.1, tiny CLIP, LiteMedSAM; upload limit 5 MB)
answers raw HTTP built here, so malformed requests reach it exactly as sent.
"""
from __future__ import annotations

import gc
import http.client
import io
import json
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from MedCLIPSAMLib.client import EngineClient, EngineError, Upload
from MedCLIPSAMLib import wire
from conftest import ENGINE_MAX_UPLOAD as MAX_UPLOAD, ENGINE_TOKEN as TOKEN


def send(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
         token: str | None = f"Bearer {TOKEN}") -> tuple[int, dict, dict]:
    """(status, JSON answer or {}, headers) of one raw request on its own connection."""
    connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=60)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        if token is not None:
            connection.putheader("Authorization", token)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        if body is not None and "Transfer-Encoding" not in (headers or {}):
            connection.putheader("Content-Length", str(len(body)))
        try:
            connection.endheaders(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered (e.g. 413) and closed before the whole body was sent: read its answer
        answer = connection.getresponse()
        raw = answer.read()
        return answer.status, json.loads(raw) if raw else {}, {k.lower(): v for k, v in answer.getheaders()}
    finally:
        connection.close()


def one_line(answer: dict) -> str:
    detail = answer["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail
    return detail


def begin(server, upload: Upload, part_size: int) -> str:
    code, answer, _ = send(server, "POST", "/uploads", json.dumps(
        {"volume": upload.id, "size": len(upload.payload), "part_size": part_size}).encode())
    assert code == 201, answer
    return answer["upload"]


def small_upload(seed: int = 0) -> Upload:
    return Upload.of(np.random.default_rng(seed).integers(0, 255, (2, 40, 40)).astype(np.uint8), (1.0, 1.0, 1.0))


@pytest.mark.parametrize("index, message", [
    ("%C2%B2", "is not a whole number"),  # superscript two: str.isdigit says yes, int() says no
    ("%D9%A3", "is not a whole number"),  # Arabic-Indic three
    ("9" * 5000, "is not a whole number"),
    ("-1", "is not a whole number"),
    ("7", "outside this upload's"),
])
def test_part_indexes_are_ascii_digits_within_range(engine_server, index, message):
    upload = small_upload(1)
    upload_id = begin(engine_server, upload, 2000)
    code, answer, _ = send(engine_server, "PUT", f"/uploads/{upload_id}/parts/{index}", b"\0" * 10)
    assert code == 400 and message in one_line(answer)


@pytest.mark.parametrize("body, message", [
    (b"[" * 1000 + b"]" * 1000, "nested deeper than 32 levels"),
    (b'{"volume": ' + b"[" * 40 + b"]" * 40 + b"}", "nested deeper than 32 levels"),
    (b'{"volume": "a", "prompts": ["x"], "settings": {"beta": NaN}}', "not JSON (NaN is not a number)"),
    (b'{"volume": "a", "prompts": ["x"], "settings": {"seed": ' + b"9" * 5000 + b"}}", "not JSON"),
    (b"\xff\xfe{", "not JSON"),
    (b"", "not JSON"),
])
def test_json_a_decoder_chokes_on_is_a_one_line_400(engine_server, body, message):
    code, answer, _ = send(engine_server, "POST", "/jobs", body, {"Content-Type": "application/json"})
    assert code == 400 and message in one_line(answer)
    assert EngineClient(engine_server.url, TOKEN).info()["version"]


def test_every_json_body_is_limited_declared_or_streamed(engine_server):
    big = b'{"volume": "' + b"a" * 1_100_000 + b'"}'
    for path in ("/jobs", "/uploads", "/no/such/route"):
        code, answer, _ = send(engine_server, "POST", path, big)
        assert code == 413 and "over this server's limit of 1000000 bytes" in one_line(answer)
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in (big[i:i + 65536]
                                                                          for i in range(0, len(big), 65536)))
    code, answer, _ = send(engine_server, "POST", "/jobs", chunked + b"0\r\n\r\n", {"Transfer-Encoding": "chunked"})
    assert code == 413 and "limit of 1000000 bytes" in one_line(answer)


def test_degenerate_spacing_and_compressed_archives_are_refused_before_decoding(engine_server):
    array = np.zeros((2, 40, 40), np.uint8)
    for spacing in ((1e-300, 1.0, 1.0), (1e300, 1.0, 1.0)):
        upload = Upload.of(array, spacing)
        code, answer, _ = send(engine_server, "PUT", f"/volumes/{upload.id}", upload.payload)
        assert code == 400 and "outside 1e-06-1e+06 mm" in one_line(answer)
    bomb = io.BytesIO()
    np.savez_compressed(bomb, array=np.zeros((60, 512, 512), np.uint8), spacing=np.ones(3))  # 15.7 MB in 16 KB
    payload = bomb.getvalue()
    assert len(payload) < 50_000
    code, answer, _ = send(engine_server, "PUT", f"/volumes/{wire.volume_id(payload)}", payload)
    assert code == 413 and "expands to 16 MB, over this server's limit of 5 MB" in one_line(answer)
    small = io.BytesIO()
    np.savez_compressed(small, array=array, spacing=np.ones(3))
    code, answer, _ = send(engine_server, "PUT", f"/volumes/{wire.volume_id(small.getvalue())}", small.getvalue())
    assert code == 400 and "compressed; send it uncompressed" in one_line(answer)


def test_an_archive_whose_array_header_claims_more_than_it_holds_is_refused():
    payload = bytearray(wire.encode_volume(np.zeros((2, 8, 8), np.uint8), (1.0, 1.0, 1.0)))
    at = payload.index(b"(2, 8, 8)")
    payload[at:at + 9] = b"(9, 9, 9)"  # same length; the zip's CRC is checked only after the header
    with pytest.raises(wire.InputError, match="not a MedCLIP-SAM volume"):
        wire.decode_volume(bytes(payload))


def test_bytes_after_a_deflate_stream_are_refused(engine_server):
    upload = small_upload(2)
    upload_id = begin(engine_server, upload, 4000)
    part = zlib.compress(upload.payload[:4000]) + b"extra"
    code, answer, _ = send(engine_server, "PUT", f"/uploads/{upload_id}/parts/0", part,
                           {"Content-Encoding": "deflate"})
    assert code == 400 and "5 bytes after its compressed data" in one_line(answer)


def test_405_lists_every_method_and_the_bearer_scheme_is_case_insensitive(engine_server):
    code, _, headers = send(engine_server, "POST", "/jobs/abc")
    assert code == 405 and headers["allow"] == "DELETE, GET"
    code, _, headers = send(engine_server, "PATCH", "/volumes/abc")
    assert code == 405 and headers["allow"] == "HEAD, PUT"
    for scheme in ("bearer", "BEARER", "Bearer"):
        assert send(engine_server, "GET", "/info", token=f"{scheme} {TOKEN}")[0] == 200
    assert send(engine_server, "GET", "/info", token=f"Basic {TOKEN}")[0] == 401
    assert send(engine_server, "GET", "/info", token=f"Bearer {TOKEN}x")[0] == 401


def test_the_openapi_schema_is_for_token_holders_and_documents_the_real_codes(engine_server):
    assert send(engine_server, "GET", "/openapi.json", token=None)[0] == 401
    code, schema, _ = send(engine_server, "GET", "/openapi.json")
    assert code == 200 and schema["openapi"].startswith("3.")
    begin_upload = schema["paths"]["/uploads"]["post"]
    assert {"201", "400", "401", "413", "503"} <= set(begin_upload["responses"]) and "422" not in begin_upload["responses"]
    assert set(schema["paths"]["/jobs/{job_id}/result"]["get"]["responses"]) >= {"200", "404", "409"}
    assert "requestBody" in schema["paths"]["/jobs"]["post"]


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_beginning_a_2_gb_upload_holds_no_memory_and_parts_go_to_a_file():
    from MedCLIPSAMLib.server.uploads import PartialUploads

    uploads = PartialUploads(ttl=60, max_bytes=4_000_000_000)
    gc.collect()
    before = rss_bytes()
    upload = uploads.begin("a" * 64, 2_000_000_000, 8_000_000)
    uploads.put_part(upload.id, 3, b"\1" * 8_000_000)
    grown = rss_bytes() - before
    assert grown < 50e6, f"RSS grew {grown / 1e6:.0f} MB"
    assert upload.read(3 * 8_000_000, 4) == b"\1\1\1\1" and upload.received_parts == 1
    uploads.discard(upload.id)
    assert upload.file.closed


def test_a_volume_larger_than_the_store_is_refused_with_413(engine_server):
    from MedCLIPSAMLib.imageio import as_volume
    from MedCLIPSAMLib.server.store import VolumeStore, held_bytes

    volume = as_volume(np.zeros((4, 100, 100), np.float32))
    assert held_bytes(volume) == 4 * 100 * 100 * 5  # the float32 array and the uint8 geometry image
    store = VolumeStore(max_bytes=150_000)
    with pytest.raises(wire.TooLarge, match="needs 0 MB in the server's memory, over its store") as refused:
        store.put("a", volume)
    assert refused.value.status == 413 and len(store) == 0


def test_a_volume_the_store_could_never_keep_is_refused_before_any_part_is_sent(tiny_clip_folder):
    """A store smaller than the upload limit (--max-stored-mb below --max-upload-mb): /info says so, the client
    refuses before uploading and the server answers 413 at begin, not after every part arrived."""
    from conftest import LiveServer
    from MedCLIPSAMLib.server.app import Limits, create_app
    from MedCLIPSAMLib.server.engine import Engine, EngineConfig

    live = LiveServer(create_app(Engine(EngineConfig(clip_model=str(tiny_clip_folder), device="cpu")), TOKEN,
                                 Limits(max_upload_bytes=5_000_000, max_stored_bytes=1_000_000)))
    try:
        client = EngineClient(live.url, TOKEN)
        assert client.info()["max_stored_bytes"] == 1_000_000
        fits = Upload.of(np.zeros((4, 256, 256), np.int16))  # 0.5 MB of payload: kept
        small_enough = client.start_upload(fits)
        assert small_enough is not None
        small_enough.cancel()
        too_big = Upload.of(np.zeros((4, 512, 512), np.int16))  # 2 MB: under the upload limit, over the store
        with pytest.raises(EngineError, match="over the server's memory for volumes of 1 MB.*--max-stored-mb") as no:
            client.start_upload(too_big)
        assert no.value.status == 413
        code, answer, _headers = send(live, "POST", "/uploads", json.dumps(
            {"volume": too_big.id, "size": len(too_big.payload), "part_size": 500_000}).encode())
        assert code == 413 and "larger than this server keeps in memory" in answer["detail"]
    finally:
        live.stop()


def test_expiry_runs_on_a_timer_without_requests():
    from MedCLIPSAMLib.imageio import as_volume
    from MedCLIPSAMLib.server.store import VolumeStore
    from MedCLIPSAMLib.server.sweeper import Sweeper
    from MedCLIPSAMLib.server.uploads import PartialUploads

    store, uploads = VolumeStore(ttl=0.2), PartialUploads(ttl=0.2)
    store.put("a", as_volume(np.zeros((2, 16, 16), np.float32)))
    upload = uploads.begin("b" * 64, 100, 10)
    sweeper = Sweeper((store.expire, uploads.expire), Sweeper.interval_for(0.2)).start()
    try:
        time.sleep(0.5)
        assert store.held_bytes() == 0 and upload.file.closed  # nobody asked: the timer dropped them
    finally:
        sweeper.stop()
