"""`medclipsam web` in a real browser (Debian's chromium driven by playwright): the bundled sample, a random-weight
CLIP and LiteMedSAM; prompt -> Segment -> the segment's colour in the slice view, a box correction changes it,
Undo brings it back, export writes files that read back; bad input gets a message in the page.
Screenshots of every step go to Testing/artifacts/web (ignored by git)."""
from __future__ import annotations

import json
import re
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


def wait_for_applied(page, count: int) -> None:
    page.wait_for_function(f"() => {{ const m = /Corrections applied: (\\d+)/.exec(document.body.innerText);"
                           f" return m && Number(m[1]) >= {count} }}", timeout=120_000)


def colour_near(mask: np.ndarray, at: tuple[float, float], radius: int = 2) -> float:
    """The share of segment-coloured pixels around a point given as fractions of the view."""
    row, col = int(at[1] * mask.shape[0]), int(at[0] * mask.shape[1])
    return float(mask[row - radius:row + radius + 1, col - radius:col + radius + 1].mean())


def test_propagate_then_include_and_exclude_clicks_are_honoured(page, tmp_path):
    """After the Segment of the test before: a box on the shown slice, Propagate carries it to slices beyond the text
    run's 11-13 (the status says how far and why it stopped), then an include click beside the segment colours the
    clicked place and an exclude click inside it clears it."""
    from MedCLIPSAMLib.web.browser import click

    page.get_by_role("button", name="Box").click()
    drag(page, *BOX)
    done = applied_count(page) + 1
    wait_for_applied(page, done)
    page.get_by_role("button", name="Navigate").click()
    page.get_by_role("button", name="Propagate").click()
    page.wait_for_function("() => /up: \\d+ slice/.test(document.body.innerText)", timeout=120_000)
    status = page.get_by_label("Correction status", exact=True).inner_text()
    reached = sum(int(n) for n in re.findall(r"(?:up|down): (\d+) slice", status))
    assert reached >= 1, f"Propagate wrote at least one slice: {status!r}"
    folder = tmp_path / "export"
    page.get_by_role("textbox", name="Export folder").fill(str(folder))
    page.get_by_role("button", name="Export NIfTI and .seg.nrrd").click()
    wait_for_message(page, "^Saved")
    shot(page, "7a-propagated")
    import SimpleITK as sitk

    label = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "brain1_image_segments.nii.gz")))
    written = [z for z in range(label.shape[0]) if label[z].any()]
    assert written[0] <= 12 <= written[-1] and written == list(range(written[0], written[-1] + 1))
    assert written[0] < 11 or written[-1] > 13, f"Propagate reached beyond 11-13 ({status!r}; slices {written})"
    done = applied_count(page)

    mask = segment_colour(page)
    rows, cols = np.nonzero(mask)
    assert rows.size > 200, "the box gave a segment to click on"
    row = int(np.median(rows))
    outside = ((int(cols[rows == row].max()) + 6) / mask.shape[1], row / mask.shape[0])
    assert colour_near(mask, outside) < 0.2, "the include point starts outside the segment"
    page.get_by_role("button", name="Include click").click()
    page.wait_for_timeout(300)  # the tool reaches the server before the click
    click(page, outside)
    done += 1
    wait_for_applied(page, done)
    included = segment_colour(page)
    shot(page, "7b-include-click")
    assert colour_near(included, outside) > 0.5, "after an include click the clicked place is in the segment"

    rows, cols = np.nonzero(included)
    centre = (float(np.median(cols)) / mask.shape[1], float(np.median(rows)) / mask.shape[0])
    assert colour_near(included, centre) > 0.5
    page.get_by_role("button", name="Exclude click").click()
    page.wait_for_timeout(300)
    click(page, centre)
    done += 1
    wait_for_applied(page, done)
    excluded = segment_colour(page)
    shot(page, "7c-exclude-click")
    assert colour_near(excluded, centre) < 0.5, "after an exclude click the clicked place is out of the segment"
    assert excluded.sum() > 50, "an exclude click in the middle leaves a segment (SAM's answer to the new point)"


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
