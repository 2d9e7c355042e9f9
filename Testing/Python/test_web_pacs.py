"""`medclipsam web --dicomweb URL`: the page lists a real PACS's studies and series (Orthanc + DICOMweb plugin,
started here), opens a series into the cache, and its Export writes a DICOM SEG that highdicom reads back to the
exported NIfTI's voxels: AUTOMATIC for a draft, SEMIAUTOMATIC once the segment was corrected in the page."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from dicom_builders import sample_volume, write_series
from orthanc import orthanc  # noqa: F401 (the fixture)
from web_apps import make_app

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "Resources" / "Samples" / "brain1_image.nrrd"


def run_result(app, masks: dict[str, np.ndarray]):
    """A run's result written as the page writes an engine's result (``SegmentLogic`` -> ``_applied``)."""
    from MedCLIPSAMLib.slicer.mrml import apply_result

    ws = app.workspace
    record = apply_result(ws.scene, ws.volume_node, masks, ws.segmentation_node)
    app._applied(SimpleNamespace(record=record))
    return record


def read_seg(path: Path, source_files):
    import highdicom as hd
    import pydicom

    seg = hd.seg.segread(str(path))
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in source_files]
    labels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True, relabel=False)
    kinds = [str(d.SegmentAlgorithmType) for d in seg.SegmentSequence]
    return seg, labels, kinds


def test_pacs_studies_open_series_and_export_dicom_seg(orthanc, tmp_path):
    import pydicom
    import SimpleITK as sitk

    from MedCLIPSAMLib.slicer.segment_slices import write_slices

    first = write_series(sample_volume(), tmp_path / "up1", patient="P1")
    second = write_series(sample_volume(box=(130, 70, 80, 80)), tmp_path / "up2", patient="P2")
    orthanc.upload(first + second)
    cache = tmp_path / "cache"
    app = make_app(tmp_path, "ok", dicomweb_url=orthanc.dicomweb, pacs_cache=str(cache),
                   export_folder=str(tmp_path / "out"))
    panel = app.panel
    assert len(panel.pacs_studies) == 2 and "2 studies on the PACS" in panel.message
    study_uid = pydicom.dcmread(second[0]).StudyInstanceUID
    series_uid = pydicom.dcmread(second[0]).SeriesInstanceUID
    app.pacs.select_study(study_uid)
    assert [row.series_uid for row in panel.pacs_series] == [series_uid]
    assert panel.pacs_selected_series == series_uid and "MR" in panel.pacs_series[0].title
    app.pacs.open_series()
    folder = cache / study_uid / series_uid
    assert len(list(folder.glob("*.dcm"))) == len(second)
    assert panel.volume_name.startswith("P2_") and "Loaded" in panel.message
    shape = sitk.GetArrayFromImage(sitk.ReadImage([str(p) for p in second])).shape
    assert app.workspace.volume_node.GetImageData().GetDimensions() == shape[::-1]

    tumour = np.zeros(shape, np.uint8)
    tumour[2:5, 20:40, 30:60] = 1
    lungs = np.zeros(shape, np.uint8)
    lungs[1:3, 50:70, 10:30] = 1
    record = run_result(app, {"brain tumor": tumour, "lungs": lungs})
    app.export()
    nifti, _, seg_path = (Path(p) for p in panel.exported[:3])
    assert seg_path.name == f"{panel.volume_name}_seg.dcm" and "No DICOM SEG" not in panel.message
    exported = sitk.GetArrayFromImage(sitk.ReadImage(str(nifti)))
    source_files = app.workspace.source.dicom_files  # the reader's slice order (the array's)
    assert sorted(Path(f).name for f in source_files) == sorted(p.name for p in folder.glob("*.dcm"))
    seg, labels, kinds = read_seg(seg_path, source_files)
    assert np.array_equal(labels, exported) and int((labels == 1).sum()) == int(tumour.sum())
    assert kinds == ["AUTOMATIC", "AUTOMATIC"]
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["brain tumor", "lungs"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid

    # a correction in the page (the slice writer the box/click corrections use): that segment only turns
    # SEMIAUTOMATIC
    ws = app.workspace
    edited = tumour[3].copy()
    edited[20:40, 60:70] = 1
    write_slices(ws.segmentation_node, record.segment_ids[0], ws.volume_node, 0, {3: edited})
    app.export()
    nifti2, _, seg2 = (Path(p) for p in panel.exported[:3])
    assert seg2 != seg_path and seg_path.is_file()  # nothing overwritten
    _, labels2, kinds2 = read_seg(seg2, source_files)
    assert kinds2 == ["SEMIAUTOMATIC", "AUTOMATIC"]
    assert np.array_equal(labels2, sitk.GetArrayFromImage(sitk.ReadImage(str(nifti2))))
    assert int((labels2 == 1).sum()) == int(tumour.sum()) + 20 * 10


def test_export_of_a_non_dicom_volume_says_no_seg(tmp_path):
    app = make_app(tmp_path, "nifti", input_path=str(SAMPLE), export_folder=str(tmp_path / "out"))
    mask = np.zeros((25, 256, 256), np.uint8)
    mask[12, 100:120, 100:130] = 1
    run_result(app, {"brain tumor": mask})
    app.export()
    assert "No DICOM SEG: the volume was not loaded from DICOM (a folder, an upload or the PACS)" in app.panel.message
    assert sorted(p.suffix for p in (tmp_path / "out").iterdir()) == [".gz", ".nrrd"]


def test_pacs_errors_are_one_line_in_the_page(orthanc, tmp_path):
    from orthanc import free_port

    app = make_app(tmp_path, "down", dicomweb_url=f"http://127.0.0.1:{free_port()}/dicom-web")
    assert app.panel.message.startswith("Cannot reach the DICOMweb server") and "\n" not in app.panel.message
    assert app.panel.message_kind == "error" and app.panel.pacs_studies == []
    bad = tmp_path / "token"
    bad.write_text("two words\n")
    app = make_app(tmp_path, "token", dicomweb_url=orthanc.dicomweb, pacs_token_file=str(bad))
    assert "must hold one token" in app.panel.message and app.panel.message_kind == "error"
    app = make_app(tmp_path, "missing", dicomweb_url=orthanc.dicomweb, pacs_token_file=str(tmp_path / "nope"))
    assert "nope" in app.panel.message and app.panel.message_kind == "error"
    app = make_app(tmp_path, "empty", dicomweb_url=orthanc.dicomweb)
    assert "holds no studies" in app.panel.message
    from MedCLIPSAMLib.web.app import guarded

    guarded(app.panel, lambda: None, app.pacs.open_series)()
    assert "Choose a series in PACS series first" in app.panel.message


def test_pacs_in_the_browser_lists_and_opens_a_series(orthanc, tmp_path, tiny_clip_folder):
    """The same in Debian's chromium: the controls found by their accessible names, Open series loads it."""
    pytest.importorskip("trame_slicer")
    pytest.importorskip("playwright")
    from MedCLIPSAMLib.web.browser import browser_page, chromium_path, wait_for_message, web_process

    if chromium_path() is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    paths = write_series(sample_volume(), tmp_path / "up", patient="P7")
    orthanc.upload(paths)
    args = ["--dicomweb", orthanc.dicomweb, "--pacs-cache", str(tmp_path / "cache"), "--clip-model",
            str(tiny_clip_folder), "--device", "cpu"]
    with web_process(args, tmp_path / "web.log") as url, browser_page(url) as page:
        studies = page.get_by_role("combobox", name="PACS studies")
        studies.wait_for()
        page.get_by_text("Test^P7", exact=False).first.wait_for()  # the chosen study's title
        page.get_by_role("button", name="Open series").click()
        wait_for_message(page, "^Loaded 'P7_", 120)
        assert page.get_by_label("Loaded volume", exact=True).inner_text().startswith("P7_")
    assert len(list((tmp_path / "cache").rglob("*.dcm"))) == len(paths)
