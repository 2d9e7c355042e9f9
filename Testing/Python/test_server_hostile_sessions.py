"""Correction sessions, job options, result ranges and the protocol header under hostile but fair input.

Raw HTTP to the session's real engine server (uvicorn on 127.0.0.1, tiny CLIP, LiteMedSAM, in this process):
every refusal is a one-line 400 naming the field and what it takes, the session is left as it was, and no
request evicts the loaded SAM or starts a download. Memory: the shared slice store counts its uint8 copies.
"""
from __future__ import annotations

import json
import time
import urllib.request

import numpy as np
import pytest

from MedCLIPSAMLib.client import EngineClient, Upload
from MedCLIPSAMLib.errors import ModelError
from MedCLIPSAMLib.interactive.request_values import MAX_CLICKS
from MedCLIPSAMLib.interactive.session import InteractionSession
from MedCLIPSAMLib.interactive.shared_embeddings import EmbeddingKey, EmbeddingStore
from MedCLIPSAMLib.models import sam as sam_module
from MedCLIPSAMLib.prompts import box_of
from MedCLIPSAMLib.protocol import PROTOCOL_HEADER, parse_protocol
from conftest import ENGINE_TOKEN as TOKEN, LiveServer, disk_mask
from test_server_hostile import one_line, send

QUICK = {"m2ib_steps": 2, "m2ib_samples": 2, "refine_rounds": 1}


from test_server_interactions import client, disk_stack, volume_id  # noqa: E402,F401  (shared fixtures)


@pytest.fixture(scope="module")
def done_job(client, volume_id) -> str:
    """A finished text job on the session volume whose result was not fetched."""
    job = client.submit(volume_id, ["disk"], QUICK)
    deadline = time.monotonic() + 180
    while (state := client.status(job["id"])["state"]) not in ("done", "failed", "cancelled"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert state == "done"
    return job["id"]


def post(server, path: str, body) -> tuple[int, dict]:
    code, answer, _ = send(server, "POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return code, answer


HUGE = 18446744073709551616  # 2**64: numpy cannot test it for finiteness


@pytest.mark.parametrize("route, body, message", [
    ("box", {"slice": 0, "box": [0, 0, 10 ** 20, 10]}, "A box is four numbers x0, y0, x1, y1 in slice pixels "
                                                        "(each within ±1,000,000), not [0, 0, 1e+20, 10]"),
    ("box", {"slice": 0, "box": [0, 0, 1e308, 10]}, "not [0, 0, 1e+308, 10]"),
    ("box", {"slice": 1, "box": [10, 10, 40, 40], "mode": ["add"]}, "Box mode ['add'] is unknown; use 'replace' or"),
    ("box", {"slice": 10 ** 30, "box": [10, 10, 40, 40]}, "Slice 1e+30 is outside the volume"),
    ("clicks", {"slice": 1, "clicks": [[HUGE, 1, True]]},
     "A click is x, y and true (add) or false (remove), with x, y in slice pixels, not [1.84467e+19, 1, True]"),
    ("clicks", {"slice": 1, "clicks": [[5, 5, True]] * (MAX_CLICKS + 1)},
     f"'clicks' must be a list of 1 to {MAX_CLICKS} clicks [x, y, true|false], not {MAX_CLICKS + 1}"),
    ("propagate", {"slice": 1, "direction": ["up"]}, "Direction ['up'] is unknown; use 'up', 'down' or 'both'"),
    ("propagate", {"slice": 1, "direction": {}}, "Direction {} is unknown"),
])
def test_bad_session_values_are_one_line_400s_and_change_nothing(engine_server, client, volume_id, route, body,
                                                                  message):
    session = client.open_session(volume_id, axis=0)["session"]
    try:
        client.session_box(session, 1, box_of(disk_mask()))
        before = client.session_mask(session).slices
        code, answer = post(engine_server, f"/sessions/{session}/{route}", body)
        detail = one_line(answer)
        assert code == 400 and message in detail and len(detail) < 200, (code, detail)
        after = client.session_mask(session).slices
        assert list(after) == list(before) and all(np.array_equal(after[z], before[z]) for z in before)
    finally:
        client.close_session(session)


@pytest.mark.parametrize("body, message", [
    ({"axis": -1}, "'axis' must be 0, 1, 2 or null, not -1"),
    ({"axis": 10 ** 25}, "'axis' must be 0, 1, 2 or null, not 1e+25"),
    ({"window": ["brain"]}, "'window' must be text, not ['brain']"),
    ({"job": {"id": 1}}, "'job' must be text"),
    ({"mask": [1, 0]}, "'mask' must be text"),
    ({"window": "w" * 100_000}, "Unknown CT window 'wwwww"),
    ({"click_mode": "c" * 100_000}, "Unknown click mode 'ccccc"),
])
def test_bad_session_openings_are_one_line_400s(engine_server, volume_id, body, message):
    code, answer = post(engine_server, "/sessions", {"volume": volume_id, **body})
    assert code == 400 and message in one_line(answer) and len(answer["detail"]) < 200, answer


def test_a_target_that_is_not_text_is_a_400_and_the_job_result_stays(engine_server, client, volume_id, done_job):
    code, answer = post(engine_server, "/sessions", {"volume": volume_id, "job": done_job, "target": [1]})
    assert code == 400 and "'target' must be text, not [1]" in one_line(answer)
    opened = client.open_session(volume_id, axis=0, job=done_job, target="disk")  # the result is still there
    client.close_session(opened["session"])


@pytest.mark.parametrize("bits", [[8], {}, "8", 8.0])
def test_saliency_bits_must_be_the_whole_number_8_or_16(engine_server, volume_id, bits):
    code, answer = post(engine_server, "/jobs", {"volume": volume_id, "prompts": ["disk"], "saliency_bits": bits})
    assert code == 400 and "'saliency_bits' must be 8 or 16" in one_line(answer)


@pytest.mark.parametrize("header", ["bytes=0-" + "9" * 5000, "bytes=" + "1" * 5000 + "-", "bytes=0-\u0661\u0662",
                                    "bytes=\u00b2-4"])
def test_malformed_ranges_are_416_and_keep_the_result(engine_server, client, done_job, header):
    code, answer, headers = send(engine_server, "GET", f"/jobs/{done_job}/result",
                                 headers={"Range": header.encode("utf-8")})
    assert code == 416 and "is not understood: ask for one range" in one_line(answer)
    assert headers["content-range"].startswith("bytes */")
    asked = urllib.request.Request(f"{engine_server.url}/jobs/{done_job}/result",
                                   headers={"Authorization": f"Bearer {TOKEN}", "Range": "bytes=0-9"})
    with urllib.request.urlopen(asked, timeout=60) as part:  # nothing was dropped
        assert part.status == 206 and len(part.read()) == 10


@pytest.mark.parametrize("value", ["\u00b2", "\u00b9", "\u0661", "1" * 5000, "1" * 10, "-1", "1.0"])
def test_a_protocol_header_that_is_not_a_few_ascii_digits_is_a_one_line_400(engine_server, value):
    assert parse_protocol(value) == -1
    code, answer, _ = send(engine_server, "GET", "/info", headers={PROTOCOL_HEADER: value.encode("utf-8")})
    assert code == 400 and f"The {PROTOCOL_HEADER} header must be a whole number" in one_line(answer)
    assert send(engine_server, "GET", "/info", headers={PROTOCOL_HEADER: "1"})[0] == 200


def test_a_session_cannot_evict_the_loaded_sam_nor_start_a_download(engine_server, client, volume_id):
    if sam_module.weights_at_hand("vit_b", None):
        pytest.skip("vit_b weights are in this machine's model cache")
    loaded = dict(sam_module._LOADED)
    code, answer = post(engine_server, "/sessions", {"volume": volume_id, "sam_backend": "vit_b"})
    detail = one_line(answer)
    assert code == 400 and "SAM backend 'vit_b' is not loaded on this server and its weights are not on its disk " \
                           "(a session never downloads a model); use litemedsam" in detail, detail
    assert sam_module._LOADED == loaded  # the same model objects, not reloaded
    opened = client.open_session(volume_id, axis=0)
    assert opened["sam_backend"] == "litemedsam" and sam_module._LOADED == loaded
    client.close_session(opened["session"])


def test_a_job_cannot_make_the_server_download_a_sam_or_swap_its_model(engine_server, client, volume_id):
    if sam_module.weights_at_hand("vit_b", None):
        pytest.skip("vit_b weights are in this machine's model cache")
    loaded = dict(sam_module._LOADED)
    code, answer = post(engine_server, "/jobs", {"volume": volume_id, "prompts": ["disk"],
                                                 "settings": {"sam_backend": "vit_b"}})
    detail = one_line(answer)
    assert code == 400 and "SAM backend 'vit_b' is not loaded on this server" in detail, detail
    assert "(a job never downloads a model); use litemedsam" in detail and sam_module._LOADED == loaded


def test_a_sam_that_fails_to_load_leaves_the_loaded_one_and_answers_one_line_without_paths(tiny_clip_folder,
                                                                                           tmp_path, engine_server):
    from MedCLIPSAMLib.server.app import Limits, create_app
    from MedCLIPSAMLib.server.engine import Engine, EngineConfig

    bad = tmp_path / "private" / "sam_vit_b.pth"
    bad.parent.mkdir()
    bad.write_bytes(b"not a checkpoint")
    loaded = dict(sam_module._LOADED)
    engine = Engine(EngineConfig(clip_model=str(tiny_clip_folder), device="cpu", sam_checkpoint=str(bad)))
    live = LiveServer(create_app(engine, TOKEN, Limits(max_upload_bytes=5_000_000)))
    try:
        upload = Upload.of(disk_stack(), (5.0, 1.0, 1.0))
        EngineClient(live.url, TOKEN).upload(upload)
        code, answer = post(live, "/sessions", {"volume": upload.id, "sam_backend": "vit_b"})
        detail = one_line(answer)
        assert code == 400 and detail.startswith("SAM backend 'vit_b' cannot be loaded on this server: ")
        assert str(tmp_path) not in detail and "private" not in detail
        assert sam_module._LOADED == loaded
    finally:
        live.stop()


def test_a_failed_load_keeps_the_loaded_sam(engine_server, tmp_path):
    loaded = dict(sam_module._LOADED)
    assert loaded, "the engine server preloads LiteMedSAM"
    with pytest.raises(ModelError, match="does not exist"):
        sam_module.load_sam("vit_b", str(tmp_path / "missing.pth"), "cpu")
    assert sam_module._LOADED == loaded


def test_a_missing_catalog_model_has_a_one_line_server_form_without_paths(tmp_path, monkeypatch):
    from MedCLIPSAMLib.models import catalog

    monkeypatch.setenv("MEDCLIPSAM_CACHE", str(tmp_path / "cache"))

    def offline(url, *args, **kwargs):
        raise ModelError(f"Cannot download {url} (no network).")

    monkeypatch.setattr(catalog, "download_file", offline)
    with pytest.raises(ModelError) as caught:
        catalog.ensure_model("vit_b")
    assert "\n" in str(caught.value) and str(tmp_path) in str(caught.value)  # the command line's full help
    short = caught.value.server_detail
    assert "\n" not in short and str(tmp_path) not in short and "http" not in short
    assert short.startswith("SAM ViT-B (Meta, 2023) is not on this server and could not be downloaded")


def test_clicks_kept_per_slice_are_capped_across_requests(litemedsam):
    session = InteractionSession(litemedsam, disk_stack(), axis=0, click_mode="points")
    session.box(1, box_of(disk_mask()))
    rng = np.random.default_rng(0)
    for _ in range(3):
        clicks = [(int(x), int(y), True) for x, y in zip(rng.integers(55, 85, 40), rng.integers(25, 55, 40))]
        session.clicks(1, clicks)
    assert len(session._prompts[1].clicks) == MAX_CLICKS
    assert session._prompts[1].clicks[-1] == clicks[-1]  # the latest are kept
    with pytest.raises(Exception, match=f"send at most {MAX_CLICKS}"):
        session.clicks(1, [(60, 40, True)] * (MAX_CLICKS + 1))


def test_the_slice_copies_of_sessions_count_in_the_store_budget(litemedsam):
    """Each (axis, window) a session opens makes a uint8 copy of the volume; after many opens the store holds at
    most its budget, slices included (the older copies are dropped least recently used first)."""
    volume = np.zeros((20, 64, 64), np.uint8)
    budget = 3 * volume.nbytes
    store = EmbeddingStore(budget_bytes=budget)
    for window in range(18):
        key = EmbeddingKey("v" * 64, window % 3, f"w{window}", "litemedsam", None, 256, "cpu", "torch", "fp32")
        store.cache(key, litemedsam, lambda: volume.copy())
    held = sum(cache.slices.nbytes for cache in store._caches.values())
    assert held <= budget and store.nbytes == held and len(store) == 3


def test_every_session_route_documents_its_json_body_and_codes(engine_server):
    code, schema, _ = send(engine_server, "GET", "/openapi.json")
    assert code == 200
    paths = schema["paths"]
    for path, required in (("/sessions", ["volume"]), ("/sessions/{session_id}/box", ["slice", "box"]),
                           ("/sessions/{session_id}/clicks", ["slice", "clicks"]),
                           ("/sessions/{session_id}/propagate", ["slice"])):
        body = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["type"] == "object" and body["required"] == required and body["additionalProperties"] is False
        assert {"202", "400", "404"} <= set(paths[path]["post"]["responses"])
    clicks = paths["/sessions/{session_id}/clicks"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert clicks["properties"]["clicks"]["maxItems"] == MAX_CLICKS
    for path in ("/sessions/{session_id}/undo", "/sessions/{session_id}/reset"):
        assert {"202", "400", "404"} <= set(paths[path]["post"]["responses"])


ODD_VALUES = [None, True, -1, 0.5, 2 ** 64, -(10 ** 400), 1e308, "", "\u00b2", "x" * 5000, [], [1], [None] * 4,
              [[1, 2, True]] * 3, {}, {"a": 1}, [[2 ** 64, 2 ** 64, True]], [1e308, -1e308, 1e308, 1e308]]


@pytest.mark.parametrize("route, fields, good", [
    ("box", ("slice", "box", "mode"), {"slice": 1, "box": [50, 20, 90, 60], "mode": "replace"}),
    ("clicks", ("slice", "clicks"), {"slice": 1, "clicks": [[70, 40, True]]}),
    ("propagate", ("slice", "direction"), {"slice": 1, "direction": "both"}),
])
def test_any_odd_value_in_any_session_field_is_a_4xx_never_a_500(engine_server, client, volume_id, route, fields,
                                                                  good):
    """Each field of each interaction, in turn, takes every odd JSON value (the others stay valid): the answer is
    a one-line 4xx or a 200, never a 5xx, and the server keeps answering."""
    session = client.open_session(volume_id, axis=0)["session"]
    try:
        client.session_box(session, 1, box_of(disk_mask()))
        for name in fields:
            for value in ODD_VALUES:
                code, answer = post(engine_server, f"/sessions/{session}/{route}", {**good, name: value})
                assert code < 500, (name, value, answer)
                if code >= 400:
                    assert len(one_line(answer)) < 300, (name, answer)
    finally:
        client.close_session(session)


def test_any_odd_value_in_any_opening_field_is_a_4xx_never_a_500(engine_server, client, volume_id, done_job):
    for name in ("volume", "axis", "window", "sam_backend", "click_mode", "job", "target", "mask"):
        for value in ODD_VALUES:
            body = {"volume": volume_id, "axis": 0, name: value}
            if name == "target":
                body["job"] = done_job
            code, answer = post(engine_server, "/sessions", body)
            assert code < 500, (name, value, answer)
            if code == 201:
                client.close_session(answer["session"])
            else:
                assert code >= 400 and len(one_line(answer)) < 300, (name, answer)
