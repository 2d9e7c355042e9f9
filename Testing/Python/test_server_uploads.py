"""Volumes uploaded in parts, for real: the session's engine server on 127.0.0.1 (HTTP, no mocks)."""
from __future__ import annotations

import http.client
import json
import time
import urllib.request
import zlib

import numpy as np
import pytest

from MedCLIPSAMLib.client import EngineClient, EngineError, Upload
from MedCLIPSAMLib.server.uploads import PartialUploads, UploadError, decode_part
from conftest import ENGINE_MAX_UPLOAD as MAX_UPLOAD, ENGINE_TOKEN as TOKEN


@pytest.fixture
def client(engine_server) -> EngineClient:
    return EngineClient(engine_server.url, TOKEN)


def ct_like(shape=(8, 128, 128), seed=0) -> np.ndarray:
    """int16 air around a noisy body: compresses about 2x, like a CT."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[1], :shape[2]]
    body = (yy - shape[1] / 2) ** 2 + (xx - shape[2] / 2) ** 2 < (shape[1] / 3) ** 2
    array = np.full(shape, -1024, np.int16)
    array[:, body] = np.round(40 + 15 * rng.standard_normal((shape[0], int(body.sum())))).astype(np.int16)
    return array


def call(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(server.url + path, data=body, method=method)
    request.add_header("Authorization", f"Bearer {TOKEN}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def begin(server, upload: Upload, part_size: int) -> tuple[str, int]:
    code, answer = call(server, "POST", "/uploads", json.dumps(
        {"volume": upload.id, "size": len(upload.payload), "part_size": part_size}).encode())
    assert code == 201, answer
    return answer["upload"], answer["parts"]


def part(upload: Upload, index: int, part_size: int) -> bytes:
    return upload.payload[index * part_size:(index + 1) * part_size]


def test_a_volume_sent_in_parts_is_stored_under_the_same_id_as_one_sent_whole(engine_server, client):
    array = ct_like(seed=1)
    upload = Upload.of(array, (2.5, 0.8, 0.8))
    sending = client.start_upload(upload, part_bytes=60_000, compress=False)
    steps = []
    while not sending.finished:
        steps.append(sending.send_next())
    assert len(steps) == sending.parts + 1 == -(-len(upload.payload) // 60_000) + 1  # the parts, then the commit
    assert [done for done, _ in steps] == sorted(done for done, _ in steps) and steps[-1] == (len(upload.payload),) * 2
    assert sending.wire_bytes == len(upload.payload) and client.volume_bytes_sent == len(upload.payload)
    assert client.has_volume(upload.id) and client.start_upload(upload) is None  # held: nothing to send again

    by_parts = client.segment(array, "mass", {"slice_range": [3, 3], "m2ib_steps": 1, "m2ib_samples": 1,
                                              "refine_rounds": 0}, spacing=(2.5, 0.8, 0.8))
    whole = EngineClient(engine_server.url, TOKEN)
    other = Upload.of(array + 1, (2.5, 0.8, 0.8))  # a new volume for the single-request path
    assert whole.upload(other) and whole.has_volume(other.id)
    stored = engine_server.server.config.app.state.volumes
    np.testing.assert_array_equal(stored.get(upload.id).array, array.astype(stored.get(upload.id).array.dtype))
    np.testing.assert_array_equal(stored.get(other.id).array - 1, stored.get(upload.id).array)
    assert stored.get(upload.id).spacing_zyx == pytest.approx((2.5, 0.8, 0.8))
    assert by_parts.labels.shape == array.shape


def test_compressed_and_raw_parts_store_the_same_volume_and_deflate_sends_less(engine_server, client):
    upload = Upload.of(ct_like(seed=2), (1.0, 1.0, 1.0))
    sending = client.start_upload(upload, part_bytes=100_000, compress=True)
    while not sending.finished:
        sending.send_next()
    assert sending.wire_bytes < len(upload.payload) / 1.5
    stored = engine_server.server.config.app.state.volumes
    deflated = stored.get(upload.id).array.copy()
    # the same volume again, raw, by hand (the store would answer 'held' to the client)
    upload_id, parts = begin(engine_server, upload, 100_000)
    for index in range(parts):
        assert call(engine_server, "PUT", f"/uploads/{upload_id}/parts/{index}", part(upload, index, 100_000))[0] == 200
    code, answer = call(engine_server, "POST", f"/uploads/{upload_id}/commit")
    assert code == 201 and answer["volume"] == upload.id and answer["dtype"] == str(deflated.dtype)
    np.testing.assert_array_equal(stored.get(upload.id).array, deflated)


def test_parts_in_any_order_and_repeated_give_the_volume_and_a_missing_part_is_named_at_commit(engine_server, client):
    upload = Upload.of(ct_like(seed=3), (1.0, 1.0, 1.0))
    upload_id, parts = begin(engine_server, upload, 50_000)
    assert parts >= 4
    order = list(reversed(range(parts)))
    order.remove(2)
    for index in order + [0, 0]:
        code, answer = call(engine_server, "PUT", f"/uploads/{upload_id}/parts/{index}", part(upload, index, 50_000))
        assert code == 200
    assert answer == {"upload": upload_id, "received": parts - 1, "parts": parts}
    code, answer = call(engine_server, "POST", f"/uploads/{upload_id}/commit")
    assert code == 400 and f"1 of {parts} parts are missing (index 2)" in answer["detail"]
    assert not client.has_volume(upload.id), "a partial upload is not a stored volume"
    deflated = zlib.compress(part(upload, 2, 50_000))
    code, _ = call(engine_server, "PUT", f"/uploads/{upload_id}/parts/2", deflated, {"Content-Encoding": "deflate"})
    assert code == 200
    code, answer = call(engine_server, "POST", f"/uploads/{upload_id}/commit")
    assert code == 201 and client.has_volume(upload.id)
    code, answer = call(engine_server, "POST", f"/uploads/{upload_id}/commit")
    assert code == 404 and "No upload" in answer["detail"], "a committed upload is gone"


def test_bad_parts_and_a_hash_mismatch_get_one_line_4xx_and_the_server_keeps_running(engine_server, client):
    upload = Upload.of(ct_like(seed=4), (1.0, 1.0, 1.0))
    upload_id, parts = begin(engine_server, upload, 50_000)
    cases = [
        (f"/uploads/{upload_id}/parts/{parts}", b"x", {}, 400, f"outside this upload's {parts} parts"),
        (f"/uploads/{upload_id}/parts/-1", b"x", {}, 400, "not a whole number"),
        (f"/uploads/{upload_id}/parts/0", b"x" * 50_001, {}, 413, "this part of the upload has only 50000"),
        (f"/uploads/{upload_id}/parts/0", b"x" * 10, {}, 400, "holds 10 bytes; this part of the upload has 50000"),
        (f"/uploads/{upload_id}/parts/0", b"not zlib", {"Content-Encoding": "deflate"}, 400, "not valid deflate"),
        (f"/uploads/{upload_id}/parts/0", zlib.compress(b"\0" * 60_000), {"Content-Encoding": "deflate"}, 400,
         "does not inflate to its 50000 bytes"),
        (f"/uploads/{upload_id}/parts/0", b"x", {"Content-Encoding": "br"}, 415, "not accepted"),
        ("/uploads/nope/parts/0", b"x", {}, 404, "No upload 'nope'"),
    ]
    for path, body, headers, status, words in cases:
        code, answer = call(engine_server, "PUT", path, body, headers)
        assert (code, words in answer["detail"], "\n" in answer["detail"]) == (status, True, False), (path, answer)
    for fields, words in [({"volume": "abc", "size": 10, "part_size": 5}, "64 lowercase hex"),
                          ({"volume": upload.id, "size": 0, "part_size": 5}, "'size' must be a whole number"),
                          ({"volume": upload.id, "size": 10, "part_size": True}, "'part_size' must be"),
                          ({"volume": upload.id, "size": 10 ** 6, "part_size": 1}, "too many"),
                          ({"volume": upload.id, "size": 10, "part_size": 5, "colour": 1}, "Unknown upload field")]:
        code, answer = call(engine_server, "POST", "/uploads", json.dumps(fields).encode())
        assert (code, words in answer["detail"]) == (400, True), (fields, answer)

    damaged = bytearray(upload.payload)
    damaged[-100] ^= 1
    for index in range(parts):
        call(engine_server, "PUT", f"/uploads/{upload_id}/parts/{index}", bytes(damaged[index * 50_000:][:50_000]))
    code, answer = call(engine_server, "POST", f"/uploads/{upload_id}/commit")
    assert code == 400 and "sha256 does not match" in answer["detail"]
    assert not client.has_volume(upload.id)
    assert call(engine_server, "POST", f"/uploads/{upload_id}/commit")[0] == 404, "a damaged upload is dropped"
    assert client.info()["version"]


def test_a_part_changed_after_it_was_hashed_is_hashed_again(engine_server, client):
    upload = Upload.of(ct_like(seed=5), (1.0, 1.0, 1.0))
    upload_id, parts = begin(engine_server, upload, 50_000)
    call(engine_server, "PUT", f"/uploads/{upload_id}/parts/0", b"\0" * 50_000)
    for index in range(parts):
        call(engine_server, "PUT", f"/uploads/{upload_id}/parts/{index}", part(upload, index, 50_000))
    assert call(engine_server, "POST", f"/uploads/{upload_id}/commit")[0] == 201


def test_an_upload_over_the_limit_is_refused_with_413_on_its_declared_size(engine_server, client):
    big = Upload.of(np.zeros((6, 512, 512), dtype=np.float32))
    assert len(big.payload) > MAX_UPLOAD
    with pytest.raises(EngineError) as refused:
        client.start_upload(big)
    assert refused.value.status == 413 and "upload limit" in str(refused.value)
    code, answer = call(engine_server, "POST", "/uploads", json.dumps(
        {"volume": big.id, "size": len(big.payload), "part_size": 1_000_000}).encode())
    assert code == 413 and "over this server's limit" in answer["detail"]
    # a part whose declared length is over its share is refused before its body is read
    small = Upload.of(ct_like(seed=6), (1.0, 1.0, 1.0))
    upload_id, _ = begin(engine_server, small, 50_000)
    connection = http.client.HTTPConnection(engine_server.url.removeprefix("http://"), timeout=30)
    connection.putrequest("PUT", f"/uploads/{upload_id}/parts/0")
    connection.putheader("Authorization", f"Bearer {TOKEN}")
    connection.putheader("Content-Length", str(MAX_UPLOAD))
    connection.endheaders()
    answer = connection.getresponse()
    assert answer.status == 413 and "has only 50000" in json.loads(answer.read())["detail"]
    connection.close()


def test_cancel_drops_the_parts_and_segment_can_be_cancelled_during_the_upload(engine_server, client):
    upload = Upload.of(ct_like(seed=7), (1.0, 1.0, 1.0))
    sending = client.start_upload(upload, part_bytes=50_000)
    sending.send_next()
    sending.cancel()
    assert sending.send_next() == (50_000, len(upload.payload)) and not sending.finished
    code, answer = call(engine_server, "PUT", f"/uploads/{sending.id}/parts/1", part(upload, 1, 50_000))
    assert code == 404 and not client.has_volume(upload.id)
    from MedCLIPSAMLib.errors import Cancelled

    with pytest.raises(Cancelled, match="during the upload"):
        client.segment(ct_like(seed=8), "mass", cancel=lambda: True)
    assert not client.has_volume(Upload.of(ct_like(seed=8)).id)


def test_unfinished_uploads_expire_after_the_ttl_and_share_a_byte_cap():
    uploads = PartialUploads(ttl=0.1, max_bytes=1000)
    first = uploads.begin("a" * 64, 600, 100)
    uploads.put_part(first.id, 0, b"\1" * 100)
    with pytest.raises(UploadError, match="receiving other uploads") as full:
        uploads.begin("b" * 64, 600, 100)
    assert full.value.status == 503
    time.sleep(0.15)
    with pytest.raises(UploadError, match="No upload") as gone:
        uploads.put_part(first.id, 1, b"\1" * 100)
    assert gone.value.status == 404 and len(uploads) == 0
    assert uploads.begin("b" * 64, 600, 100).parts == 6, "an expired upload no longer holds its bytes"


def test_decode_part_accepts_raw_and_deflate_of_exactly_the_part_length():
    data = bytes(range(256)) * 4
    assert decode_part(data, "identity", 1024) == data
    assert decode_part(zlib.compress(data, 1), "deflate", 1024) == data
    with pytest.raises(UploadError, match="does not inflate"):
        decode_part(zlib.compress(data)[:-3], "deflate", 1024)


def test_auto_compression_deflates_on_a_slow_link_and_not_on_a_fast_one_or_for_noise():
    from MedCLIPSAMLib.client import PartUpload

    sending = PartUpload(EngineClient("http://127.0.0.1:9", TOKEN), Upload(b"\0" * 10, "0" * 64), "u", 4)
    assert sending.should_compress(), "the first part is deflated to learn ratio and speed"
    sending._ratio, sending._deflate_speed = 2.3, 57e6  # the CT-like volume at level 1 (README)
    sending._link_speed = 20e6  # an SSH tunnel over the internet
    assert sending.should_compress()
    sending._link_speed = 200e6  # loopback or a fast LAN
    assert not sending.should_compress()
    sending._ratio, sending._link_speed = 1.1, 1e6  # noise hardly shrinks: never worth it
    assert not sending.should_compress()
    assert PartUpload(sending.client, sending.upload, "u", 4, compress=False).should_compress() is False
