"""DICOM uploaded through the page (a .zip of a series, or its .dcm files): read as a series, kept while on screen,
and Export writes a DICOM SEG referring to it that highdicom reads back to the exported NIfTI's voxels; bad zips
(unsafe paths, several series, no DICOM, too large, damaged) are one-line refusals that write nothing outside."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dicom_builders import sample_volume, write_series
from test_web_pacs import SAMPLE, make_app, read_seg, run_result
from MedCLIPSAMLib.errors import InputError
from MedCLIPSAMLib.web.uploads import unpack_series_zip


def zipped(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return buffer.getvalue()


@pytest.fixture
def series(tmp_path) -> list[Path]:
    return write_series(sample_volume(), tmp_path / "written" / "brain")


def upload(app, files: dict[str, bytes]) -> None:
    """As trame-slicer's chunk loader calls the page: the files, then an empty chunk."""
    app.upload_chunk([{"name": name, "content": content} for name, content in files.items()])
    app.upload_chunk([])


def tumour_of(shape) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[2:6, 20:45, 25:60] = 1
    return mask


@pytest.mark.parametrize("how", ["zip", "dcm files"])
def test_an_uploaded_series_exports_a_seg_on_its_files(tmp_path, series, how):
    app = make_app(tmp_path, f"upload-{how.split()[0]}", export_folder=str(tmp_path / "out"))
    if how == "zip":  # a CD-style zip: a media index beside the series folder, macOS leftovers
        upload(app, {"brain.zip": zipped({**{f"study/brain/{p.name}": p.read_bytes() for p in series},
                                         "study/DICOMDIR": series[0].read_bytes(), "__MACOSX/._IM0000.dcm": b"x"})})
    else:
        upload(app, {p.name: p.read_bytes() for p in series})
    panel, ws = app.panel, app.workspace
    assert panel.message_kind != "error", panel.message
    assert panel.volume_name == ("brain" if how == "zip" else "DICOM")
    kept = [Path(f) for f in ws.source.dicom_files]
    assert len(kept) == len(series) and all(f.is_file() and app.upload_store.root in f.parents for f in kept)
    shape = sitk.GetArrayFromImage(sample_volume()).shape
    run_result(app, {"brain tumor": tumour_of(shape)})
    app.export()
    nifti, _, seg_path = (Path(p) for p in panel.exported[:3])
    assert seg_path.suffix == ".dcm" and "No DICOM SEG" not in panel.message
    seg, labels, kinds = read_seg(seg_path, ws.source.dicom_files)
    assert np.array_equal(labels, sitk.GetArrayFromImage(sitk.ReadImage(str(nifti))))
    assert np.array_equal(labels, tumour_of(shape)) and kinds == ["AUTOMATIC"]
    import pydicom
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(series[0]).SeriesInstanceUID

    app.load_path(SAMPLE)  # another volume on screen: the uploaded files go
    assert ws.source is None and not any(f.exists() for f in kept)


def test_a_bad_zip_is_one_line_in_the_page_and_leaves_the_scene_alone(tmp_path, series):
    app = make_app(tmp_path, "upload-bad", input_path=str(SAMPLE))
    before = app.workspace.volume_node
    upload(app, {"two.zip": zipped({"a/1.dcm": series[0].read_bytes(), "b/1.dcm": series[1].read_bytes()})})
    assert app.panel.message_kind == "error"
    assert app.panel.message == ("'two.zip' holds DICOM files in 2 folders ('a', 'b'); upload one series per .zip.")
    assert app.workspace.volume_node is before and list(app.upload_store.root.iterdir()) == []
    upload(app, {"brain.zip": zipped({p.name: p.read_bytes() for p in series}), "extra.dcm": b"x"})
    assert app.panel.message.startswith("'brain.zip' came with other files; upload one .zip of a series alone")


def test_zip_refusals_name_the_problem_and_write_nothing_outside(tmp_path, series):
    out = tmp_path / "unpack" / "here"
    archive = tmp_path / "up.zip"
    cases = {
        "unsafe": ({"ok/IM1.dcm": series[0].read_bytes(), "../../evil.dcm": b"DICM"},
                   r"^'up.zip' holds a file with an unsafe path \('../../evil.dcm'\); zip the series folder again"),
        "absolute": ({"/etc/evil.dcm": b"x"}, r"unsafe path \('/etc/evil.dcm'\)"),
        "no dicom": ({"notes.txt": b"hello", "scan.nii": b"\0" * 400},
                     r"^'up.zip' holds no DICOM file; zip the folder of one DICOM series"),
        "too large": ({"big.dcm": b"\0" * 3_000_000}, r"^'up.zip' unpacks to 3 MB, over the page's limit of 2 MB"),
    }
    for name, (entries, message) in cases.items():
        archive.write_bytes(zipped(entries))
        with pytest.raises(InputError, match=message):
            unpack_series_zip(archive, out / name, 2_000_000)
    assert not (tmp_path / "evil.dcm").exists() and not (tmp_path / "unpack" / "evil.dcm").exists()
    archive.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InputError, match=r"^'up.zip' is not a readable .zip file"):
        unpack_series_zip(archive, out / "damaged", 2_000_000)


def test_a_zip_whose_headers_understate_its_size_is_stopped_while_unpacking(tmp_path):
    archive = tmp_path / "bomb.zip"
    archive.write_bytes(zipped({"a.dcm": b"\0" * 3_000_000}))
    data = bytearray(archive.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # uncompressed size in both headers
        at = data.index(signature)
        data[at + offset:at + offset + 4] = (1000).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"^'bomb.zip' is damaged or encrypted \(a.dcm: Bad CRC-32"):
        unpack_series_zip(archive, tmp_path / "out", 2_000_000)
    written = sum(p.stat().st_size for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert written <= 2_000_000
