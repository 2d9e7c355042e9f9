"""`medclipsam web` in a real browser (Debian's chromium driven by playwright): the bundled sample, a random-weight
CLIP and LiteMedSAM; prompt -> Segment -> the segment's colour in the slice view, a box correction changes it,
Undo brings it back, export writes files that read back; bad input gets a message in the page.
Screenshots of every step go to Testing/artifacts/web (ignored by git)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("trame_slicer")
pytest.importorskip("playwright")
from MedCLIPSAMLib.web.browser import (applied_count, browser_page, chromium_path, colour_mask, drag,  # noqa: E402
                                       message, view_pixels, wait_for_message, web_process)

pytestmark = pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed (apt-get install chromium)")

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "Resources" / "Samples" / "brain1_image.nrrd"
ARTIFACTS = ROOT / "Testing" / "artifacts" / "web"
TUMOUR_RGB = json.loads((ROOT / "Resources" / "terminology.json").read_text())["brain tumor"]["color"]
BOX = ((0.35, 0.35), (0.65, 0.6))
"""The correction box, as fractions of the axial view (the sample's middle slice, 12, is shown)."""


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


@pytest.fixture(scope="module")
def page(tiny_clip_folder, tmp_path_factory):
    log = tmp_path_factory.mktemp("web") / "web.log"
    args = [str(SAMPLE), "--clip-model", str(tiny_clip_folder), "--sam", "litemedsam", "--device", "cpu",
            "--slices", "11-13", "--fast", "--max-upload-mb", "1"]
    with web_process(args, log) as url, browser_page(url) as page:
        page.get_by_label("Loaded volume", exact=True).wait_for()
        yield page


def segment_colour(page) -> np.ndarray:
    page.wait_for_timeout(1500)  # the view's next frame
    return colour_mask(view_pixels(page), TUMOUR_RGB)


def test_bad_input_is_a_message_in_the_page(page, tmp_path):
    page.get_by_role("button", name="Segment", exact=True).click()
    assert "Type what to segment in Prompt" in wait_for_message(page, "Prompt")
    junk = tmp_path / "scan.nii.gz"
    junk.write_bytes(b"not an image at all" * 50)
    page.locator("input[type=file]").set_input_files(str(junk))
    assert "scan.nii.gz" in wait_for_message(page, "Cannot read|cannot be read|not a|incomplete")
    page.locator("input[type=file]").set_input_files(str(SAMPLE))  # 2 MB, over this page's 1 MB
    assert "over the page's limit of 1 MB" in wait_for_message(page, "limit")
    assert "brain1_image" in page.get_by_label("Loaded volume", exact=True).inner_text()  # the loaded volume stayed
    shot(page, "0-bad-input")


def test_segment_correct_undo_export(page, tmp_path):
    before = segment_colour(page)
    shot(page, "1-loaded")
    prompt = page.get_by_role("textbox", name="Prompt")
    prompt.fill("brain tumor")
    page.get_by_role("button", name="Segment", exact=True).click()
    page.get_by_role("button", name="Segment", exact=True).click()
    assert "already running" in wait_for_message(page, "already running", 30)
    page.get_by_label("Progress").wait_for(state="visible", timeout=10_000)
    wait_for_message(page, r"^(Done|Check the result)")
    shot(page, "2-segmented")
    assert page.get_by_role("group", name="Segment brain tumor").count() == 1
    assert "faithfulness" in page.get_by_role("group", name="Segment brain tumor").inner_text()
    page.get_by_label("Saliency overlay").uncheck()  # the segment's own colour, without the heat map
    segmented = segment_colour(page)
    shot(page, "3-segment-without-saliency")
    assert before.sum() < 50, "the plain MRI has no segment colour"
    assert segmented.sum() > 200, "the segment's colour appears in the axial view"

    page.get_by_role("button", name="Box").click()
    drag(page, *BOX)
    page.wait_for_function("() => /Corrections applied: [1-9]/.test(document.body.innerText)", timeout=120_000)
    corrected = segment_colour(page)
    shot(page, "4-box-correction")
    assert (corrected != segmented).sum() > 100, "the box correction changed the mask on screen"
    rows, cols = corrected.shape
    (x0, y0), (x1, y1) = BOX
    inside = np.zeros_like(corrected)
    inside[int(y0 * rows) - 5:int(y1 * rows) + 5, int(x0 * cols) - 5:int(x1 * cols) + 5] = True
    assert corrected[inside].sum() > 0.9 * corrected.sum(), "on the corrected slice the segment lies in the box"

    page.get_by_role("button", name="Undo").click()
    page.wait_for_function("() => /undone/.test(document.body.innerText)", timeout=60_000)
    undone = segment_colour(page)
    shot(page, "5-undo")
    assert (undone != segmented).sum() < 0.02 * max(1, segmented.sum()), "Undo brings the segment back"
    assert applied_count(page) >= 1

    folder = tmp_path / "export"
    page.get_by_role("textbox", name="Export folder").fill(str(folder))
    page.get_by_role("button", name="Export NIfTI and .seg.nrrd").click()
    wait_for_message(page, "^Saved")
    shot(page, "6-exported")
    import SimpleITK as sitk

    label = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "brain1_image_segments.nii.gz")))
    reference = sitk.ReadImage(str(SAMPLE))
    assert label.shape == sitk.GetArrayFromImage(reference).shape
    assert set(np.unique(label)) == {0, 1}
    assert not label[:11].any() and not label[14:].any(), "only the segmented slices 11-13 hold the segment"
    assert np.allclose(sitk.ReadImage(str(folder / "brain1_image_segments.nii.gz")).GetOrigin(), reference.GetOrigin())
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "brain1_image.seg.nrrd")))
    assert int((seg > 0).sum()) == int((label > 0).sum())
    page.get_by_role("button", name="Export NIfTI and .seg.nrrd").click()  # again: new names, nothing overwritten
    wait_for_message(page, "brain1_image_segments-2")
    assert (folder / "brain1_image_segments.nii.gz").is_file()


def test_cancel_leaves_the_scene_as_it_was(page):
    segments = page.get_by_role("group").filter(has_text="faithfulness").count()
    page.get_by_role("textbox", name="Prompt").fill("lesion")
    page.get_by_role("button", name="Segment", exact=True).click()
    page.get_by_role("button", name="Cancel").click()
    assert "Cancelled; the scene is as it was" in wait_for_message(page, "Cancelled", 30)
    page.wait_for_timeout(500)
    assert page.get_by_role("group").filter(has_text="faithfulness").count() == segments
    assert page.get_by_role("group", name="Segment lesion").count() == 0
    shot(page, "7-cancelled")


def test_a_zipped_dicom_series_uploads_through_the_browser(page, tmp_path):
    """Last: it replaces the sample the other tests segment. The SEG export of an upload: test_web_upload_dicom."""
    import zipfile

    from dicom_builders import sample_volume, write_series

    files = write_series(sample_volume(), tmp_path / "brain")
    archive = tmp_path / "brain.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
        for path in files:
            handle.write(path, f"brain/{path.name}")
    page.locator("input[type=file]").set_input_files(str(archive))
    assert wait_for_message(page, "Loaded 'brain'\\.|rror|annot|holds|limit", 60) == "Loaded 'brain'."
    assert "brain" in page.get_by_label("Loaded volume", exact=True).inner_text()
    shot(page, "8-dicom-zip")
