"""Bad DICOM is refused with one line naming the problem and what to do, before any pixel is read."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file

from dicom_builders import sample_volume, write_series
from MedCLIPSAMLib.cli import main
from MedCLIPSAMLib.errors import InputError
from MedCLIPSAMLib.imageio import read_volume


def positions(image: sitk.Image) -> list:
    return [list(image.TransformIndexToPhysicalPoint((0, 0, z))) for z in range(image.GetDepth())]


def faulty(kind: str, folder):
    image = sample_volume()
    places = positions(image)
    if kind == "gap":
        files = write_series(image, folder)
        files[4].unlink()
    elif kind == "uneven":
        for z in range(4, len(places)):
            places[z][2] -= 1.0  # the builder's normal is -z: every later slice 1 mm further
        write_series(image, folder, positions=places)
    elif kind == "tilt":
        for z, place in enumerate(places):
            place[1] += z * 6.5 * np.tan(np.radians(15))  # slices shifted along y as the table moves: 15 degrees
        write_series(image, folder, positions=places)
    elif kind == "orientations":
        turned = [[1, 0, 0, 0, -1, 0]] * 7 + [[0, 1, 0, 0, 0, -1]]
        write_series(image, folder, orientations=turned)
    elif kind == "same position":
        places[3] = places[2]
        write_series(image, folder, positions=places)
    elif kind == "multi-frame":
        write_series(image[:, :, :2], folder)
        shutil.copy(get_testdata_file("SC_rgb_rle_2frame.dcm"), folder / "cine.dcm")
        return folder / "cine.dcm"
    return folder


@pytest.mark.parametrize("kind, message", [
    ("gap", "is missing slices: a gap of 13.00 mm"),
    ("uneven", "non-uniform slice spacing"),
    ("tilt", "gantry tilt of 15.0 degrees"),
    ("orientations", "mixes 2 slice orientations"),
    ("same position", "two slices at the same position"),
])
def test_irregular_series_are_refused(tmp_path, kind, message):
    folder = faulty(kind, tmp_path / "series")
    with pytest.raises(InputError, match=message) as error:
        read_volume(folder)
    assert "\n" not in str(error.value)


def test_a_multi_frame_file_in_a_series_folder_is_named(tmp_path):
    faulty("multi-frame", tmp_path / "series")
    folder = tmp_path / "alone"
    folder.mkdir()
    shutil.copy(tmp_path / "series" / "cine.dcm", folder / "cine.dcm")
    write_series(sample_volume()[:, :, :1], folder)  # one more single frame of another series: GDCM splits them
    with pytest.raises(InputError):
        read_volume(folder)
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(get_testdata_file("SC_rgb_rle_2frame.dcm"), lone / "a.dcm")
    shutil.copy(get_testdata_file("SC_rgb_rle_2frame.dcm"), lone / "b.dcm")
    with pytest.raises(InputError, match="multi-frame object"):
        read_volume(lone)


@pytest.mark.parametrize("name, message", [("test-SR.dcm", "structured report"), ("liver_1frame.dcm", "DICOM SEG"),
                                           ("rtdose_1frame.dcm", None)])
def test_non_images_are_refused_by_the_command(tmp_path, name, message, capsys):
    source = tmp_path / name
    shutil.copy(get_testdata_file(name), source)
    code = main(["segment", str(source), "-p", "liver", "-o", str(tmp_path / "out.nii.gz"), "--device", "cpu"])
    err = capsys.readouterr().err
    if message is None:  # an RT dose grid has pixels: it reads (a 3D dose), no SEG/SR message
        assert "not an image" not in err
        return
    assert code == 3 and err.count("\n") == 1 and message in err and "not an image" in err
    assert not (tmp_path / "out.nii.gz").exists()


def test_no_pixel_data_is_named(tmp_path):
    import pydicom

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    ds.save_as(tmp_path / "ct.dcm")
    with pytest.raises(InputError, match="holds no pixel data"):
        read_volume(tmp_path / "ct.dcm")


def test_a_regular_series_and_pydicom_single_images_read(tmp_path):
    write_series(sample_volume(), tmp_path / "series")
    volume = read_volume(tmp_path / "series")
    assert volume.array.shape == (8, 80, 80) and len(volume.dicom_files) == 8
    for name in ("CT_small.dcm", "MR_small.dcm"):
        single = read_volume(get_testdata_file(name))
        assert single.is_2d and single.dicom_files == (get_testdata_file(name),)
