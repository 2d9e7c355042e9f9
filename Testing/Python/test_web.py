"""`medclipsam web`'s parts that need no browser: prompts, options, refusals before anything starts, loading and
exporting on slicer-core MRML (trame-slicer's SlicerApp, no server)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from MedCLIPSAMLib.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "Resources" / "Samples" / "brain1_image.nrrd"


def test_several_prompts_one_per_line_or_semicolon():
    from MedCLIPSAMLib.web.logic import split_prompts

    assert split_prompts("brain tumor\n  lungs ; \n\nBrain  Tumor;liver") == ["brain tumor", "lungs", "liver"]
    assert split_prompts(" \n ; ") == []


def test_model_options_split_into_engine_and_job_options():
    from MedCLIPSAMLib.web.cli import split_options

    args = build_parser().parse_args(["web", str(SAMPLE), "--clip-model", "/m", "--sam", "litemedsam", "--device",
                                      "cpu", "--beta", "2", "--slices", "11-13", "--fast"])
    engine, job = split_options(args)
    assert engine == ["--clip-model", "/m", "--device", "cpu", "--sam", "litemedsam"]
    assert job["beta"] == 2.0 and job["slice_range"] == (11, 13) and job["sam_backend"] == "litemedsam"
    assert "clip_model" not in job and "device" not in job
    assert args.port == 8080 and args.host == "127.0.0.1"


def test_refusals_are_one_line_before_anything_starts(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("MEDCLIPSAM_TOKEN", raising=False)
    assert main(["web", "--host", "0.0.0.0"]) != 0
    assert "Refusing to listen on 0.0.0.0 without a token" in capsys.readouterr().err
    assert main(["web", str(tmp_path / "missing.nii.gz")]) != 0
    assert "does not exist" in capsys.readouterr().err
    assert main(["web", "--engine", "not a url"]) != 0
    assert "is not an engine address" in capsys.readouterr().err
    assert main(["web", "--engine", "http://127.0.0.1:8765"]) != 0
    assert "--engine needs the server's token" in capsys.readouterr().err
    token = tmp_path / "token"
    token.write_text("x" * 40)
    assert main(["web", "--engine", "http://127.0.0.1:8765", "--token-file", str(token), "--device", "cpu"]) != 0
    assert "--device cannot be used with --engine" in capsys.readouterr().err


@pytest.fixture
def workspace():
    pytest.importorskip("trame_slicer")
    from trame_slicer.core import SlicerApp

    from MedCLIPSAMLib.web.workspace import Workspace

    return Workspace(SlicerApp())


def test_load_segment_rows_and_export_round_trip(workspace, tmp_path):
    import SimpleITK as sitk

    from MedCLIPSAMLib.slicer.mrml import apply_result
    from MedCLIPSAMLib.web.export import export_segmentation
    from MedCLIPSAMLib.web.loading import read_into_scene

    volume = read_into_scene(workspace.scene, SAMPLE)
    workspace.volume_node = volume
    assert volume.GetName() == "brain1_image" and volume.GetImageData().GetDimensions() == (256, 256, 25)
    node = workspace.editor.create_empty_segmentation_node()
    workspace.editor.set_active_segmentation(node, volume)
    mask = np.zeros((25, 256, 256), np.uint8)
    mask[11:14, 100:140, 90:150] = 1
    record = apply_result(workspace.scene, volume, {"brain tumor": mask}, node)
    workspace.note(record.segment_ids[0], "brain tumor", 0.001)
    (row,) = workspace.rows()
    assert row.name == "brain tumor" and row.color == "#90ee90" and row.faithfulness == "0.001"
    assert "does not look more like the prompt" in row.warning
    nifti, seg_nrrd = export_segmentation(workspace, tmp_path)
    label = sitk.ReadImage(str(nifti))
    assert np.array_equal(sitk.GetArrayFromImage(label), mask)
    assert np.allclose(label.GetOrigin(), sitk.ReadImage(str(SAMPLE)).GetOrigin())
    assert int(sitk.GetArrayFromImage(sitk.ReadImage(str(seg_nrrd))).sum()) == int(mask.sum())
    again = export_segmentation(workspace, tmp_path)
    assert [p.name for p in again] == ["brain1_image_segments-2.nii.gz", "brain1_image-2.seg.nrrd"]
    assert nifti.is_file() and seg_nrrd.is_file()


def test_unreadable_and_too_large_uploads_are_refused(workspace):
    from MedCLIPSAMLib.errors import InputError
    from MedCLIPSAMLib.web.loading import read_uploads

    with pytest.raises(InputError, match="Cannot read 'scan.nii.gz'|scan.nii.gz"):
        read_uploads(workspace.scene, [{"name": "scan.nii.gz", "content": b"junk" * 100}], 10)
    with pytest.raises(InputError, match="over the page's limit of 1 MB"):
        read_uploads(workspace.scene, [{"name": "big.nrrd", "content": SAMPLE.read_bytes()}], 1)
    assert workspace.scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 0
    loaded = read_uploads(workspace.scene, [{"name": "../../brain1_image.nrrd", "content": SAMPLE.read_bytes()}], 10)
    assert loaded.GetName() == "brain1_image"


def test_export_without_segments_says_what_to_do(workspace, tmp_path):
    from MedCLIPSAMLib.errors import InputError
    from MedCLIPSAMLib.web.export import export_segmentation
    from MedCLIPSAMLib.web.loading import read_into_scene

    with pytest.raises(InputError, match="Load an image or volume first"):
        export_segmentation(workspace, tmp_path)
    workspace.volume_node = read_into_scene(workspace.scene, SAMPLE)
    with pytest.raises(InputError, match="no segments to save yet"):
        export_segmentation(workspace, tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.fixture
def web_app(tmp_path):
    """The page's app built (views, panel, logic) but not served; no engine is started."""
    pytest.importorskip("trame_slicer")
    from trame.app import get_server

    from MedCLIPSAMLib.web.app import WebApp, WebConfig
    from MedCLIPSAMLib.web.engine import EngineHolder

    server = get_server(name=f"web-test-{tmp_path.name}", client_type="vue3")
    return WebApp(WebConfig(EngineHolder(local_args=["--device", "cpu"]), input_path=str(SAMPLE)), server)


def test_review_queue_in_the_page_open_accept_exclude_next(web_app, tmp_path):
    from review_cases import make_dataset, read_label

    folder = make_dataset(tmp_path)
    panel = web_app.panel
    panel.review_folder = str(folder)
    web_app.review.open(panel.review_folder)
    cases = [row.case for row in panel.review_rows]
    assert cases == [item.case for item in web_app.review.session.queue()]  # the queue's order (by uncertainty)
    assert any(row.uncertainty.startswith(("score", "faithfulness")) for row in panel.review_rows)
    web_app.review.next_case()
    first = panel.review_case
    assert first in cases and panel.volume_name == first
    segment_id = panel.selected_segment
    assert segment_id in web_app.workspace.segment_ids()
    mask = web_app.workspace.segment_mask(segment_id)
    web_app.review.accept()
    assert np.array_equal(read_label(folder, first) > 0, mask)
    assert next(row for row in panel.review_rows if row.case == first).status == "accepted"
    web_app.review.next_case()
    assert panel.review_case != first
    web_app.review.exclude()
    assert next(row for row in panel.review_rows if row.case == panel.review_case).status == "excluded"


def test_segment_refusals_and_nnunet_export_from_the_page(web_app, tmp_path):
    from MedCLIPSAMLib.slicer.mrml import apply_result

    panel = web_app.panel
    assert panel.volume_name == "brain1_image"
    panel.prompt = "  \n ; "
    web_app.runs.segment()
    assert "Type what to segment in Prompt" in panel.message and not panel.running
    web_app.add_preset("brain tumor")
    web_app.add_preset("lungs")
    web_app.add_preset("brain tumor")
    assert panel.prompt == "brain tumor\nlungs"
    mask = np.zeros((25, 256, 256), np.uint8)
    mask[12, 100:120, 100:130] = 1
    ws = web_app.workspace
    apply_result(ws.scene, ws.volume_node, {"brain tumor": mask}, ws.segmentation_node)
    web_app._segments_changed()
    panel.dataset_folder, panel.dataset_name = str(tmp_path / "nnUNet_raw"), "Brain"
    web_app.export_dataset()
    web_app.export_dataset()
    labels = sorted((tmp_path / "nnUNet_raw" / "Dataset001_Brain" / "labelsTr").iterdir())
    assert [p.name for p in labels] == ["Brain_0001.nii.gz", "Brain_0002.nii.gz"]
    import SimpleITK as sitk

    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(labels[0]))), mask)


def test_engine_gone_is_a_message_with_a_restart(tmp_path):
    pytest.importorskip("trame_slicer")
    import time

    from trame.app import get_server

    from MedCLIPSAMLib.web.app import WebApp, WebConfig
    from MedCLIPSAMLib.web.engine import EngineHolder

    engine = EngineHolder(local_args=["--sam", "no-such-sam"])  # the engine process exits at once
    app = WebApp(WebConfig(engine, input_path=str(SAMPLE)), get_server(name="web-test-gone", client_type="vue3"))
    engine.get()
    deadline = time.monotonic() + 60
    while engine.engine.running() and time.monotonic() < deadline:
        time.sleep(0.1)
    app.panel.prompt = "brain tumor"
    app.runs.segment()
    assert app.panel.engine_gone and not app.panel.running
    assert "The engine is not running" in app.panel.message and "Restart the engine" in app.panel.message
    engine.local_args = ["--device", "cpu"]
    app.restart_engine()
    try:
        assert not app.panel.engine_gone and engine.engine.running()
    finally:
        engine.stop()
