"""Reading, geometry round trips (NIfTI, NRRD, DICOM series), normalisation and bad inputs."""
import time

import numpy as np
import pytest
import SimpleITK as sitk

from MedCLIPSAMLib.errors import InputError
from MedCLIPSAMLib.imageio import (as_volume, check_axis, image_to_gray, normalize_intensity, read_volume,
                                   through_plane_axis, write_label)

SPACING = (0.7, 0.9, 2.5)  # x, y, z: anisotropic
ORIGIN = (-12.5, 30.0, 7.25)


def rotation_direction(degrees: float = 30.0) -> tuple[float, ...]:
    a = np.deg2rad(degrees)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    tilt = np.array([[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]])
    return tuple((rot @ tilt).ravel())


def make_volume(shape=(12, 40, 50), dtype=np.int16) -> sitk.Image:
    rng = np.random.default_rng(0)
    array = rng.integers(-500, 1500, size=shape).astype(dtype)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(rotation_direction())
    return image


def write_dicom_series(image: sitk.Image, folder) -> None:
    """A CT series written slice by slice with the position and orientation tags the reader sorts by."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    series_uid = "1.2.826.0.1.3680043.2.1125.1." + str(int(time.time() * 1000))
    shared = [("0008|0060", "CT"), ("0020|000e", series_uid), ("0020|000d", series_uid + ".0"),
              ("0020|0037", "\\".join(f"{v:.10f}" for v in (direction[0], direction[3], direction[6],
                                                            direction[1], direction[4], direction[7]))),
              ("0008|0016", "1.2.840.10008.5.1.4.1.1.2"), ("0018|0050", str(image.GetSpacing()[2]))]
    for z in range(image.GetDepth()):
        slice_image = image[:, :, z]
        for tag, value in shared:
            slice_image.SetMetaData(tag, value)
        position = image.TransformIndexToPhysicalPoint((0, 0, z))
        slice_image.SetMetaData("0020|0032", "\\".join(f"{v:.10f}" for v in position))
        slice_image.SetMetaData("0020|0013", str(z + 1))
        slice_image.SetMetaData("0008|0018", f"{series_uid}.{z + 1}")
        writer.SetFileName(str(folder / f"slice_{z:03d}.dcm"))
        writer.Execute(slice_image)


def assert_same_geometry(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)


@pytest.mark.parametrize("kind", ["nii.gz", "nrrd", "mha", "dicom"])
def test_label_overlays_input_exactly(tmp_path, kind):
    image = make_volume()
    if kind == "dicom":
        source = tmp_path / "series"
        write_dicom_series(image, source)
    else:
        source = tmp_path / f"input.{kind}"
        sitk.WriteImage(image, str(source))
    volume = read_volume(source)
    assert volume.array.shape == (12, 40, 50)
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(image))
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[7, 31, 4] = 1
    out = write_label(labels, volume.reference, tmp_path / "labels.nii.gz")
    written = sitk.ReadImage(str(out))
    assert_same_geometry(written, image)
    # the labelled voxel is at the same physical point as the input voxel it was drawn on
    index = tuple(int(i) for i in np.argwhere(sitk.GetArrayFromImage(written))[0][::-1])
    np.testing.assert_allclose(written.TransformIndexToPhysicalPoint(index),
                               image.TransformIndexToPhysicalPoint((4, 31, 7)), atol=1e-3)


def test_write_refuses_to_overwrite(tmp_path):
    volume = as_volume(np.zeros((2, 10, 10)))
    target = write_label(np.zeros((2, 10, 10), np.uint8), volume.reference, tmp_path / "l.nrrd")
    with pytest.raises(InputError, match="already exists"):
        write_label(np.ones((2, 10, 10), np.uint8), volume.reference, target)
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(target))).max() == 0
    write_label(np.ones((2, 10, 10), np.uint8), volume.reference, target, overwrite=True)
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(target))).max() == 1


def test_png_round_trip_keeps_size_and_uses_visible_values(tmp_path):
    rgb = np.zeros((30, 45, 3), np.uint8)
    rgb[..., 0] = 255
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "rgb.png"))
    volume = read_volume(tmp_path / "rgb.png")
    assert volume.is_2d and volume.array.shape == (1, 30, 45)
    assert volume.array.max() == pytest.approx(0.299 * 255, abs=0.5)
    mask = np.zeros((1, 30, 45), np.uint8)
    mask[0, 5:10, 20:30] = 1
    out = write_label(mask, volume.reference, tmp_path / "mask.png")
    back = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert back.shape == (30, 45) and set(np.unique(back)) == {0, 255}


@pytest.mark.parametrize("name, content, message", [
    ("missing.nii.gz", None, "does not exist"),
    ("empty.nii.gz", b"", "empty file"),
    ("junk.nrrd", b"not an image", "Cannot read"),
])
def test_unreadable_files_say_why(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_volume(tmp_path / name)


def test_unreadable_dicom_folder(tmp_path):
    folder = tmp_path / "dicom"
    folder.mkdir()
    (folder / "IM0001.dcm").write_bytes(b"\x00" * 200)
    with pytest.raises(InputError, match="No readable DICOM series"):
        read_volume(folder)


def test_4d_image_is_refused(tmp_path):
    frames = [sitk.GetImageFromArray(np.zeros((4, 10, 10), np.float32)) for _ in range(3)]
    sitk.WriteImage(sitk.JoinSeries(frames), str(tmp_path / "4d.nii.gz"))
    with pytest.raises(InputError, match="4D image"):
        read_volume(tmp_path / "4d.nii.gz")


def test_rgba_nan_and_tiny_images_are_refused(tmp_path):
    rgba = np.zeros((20, 20, 4), np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(rgba, isVector=True), str(tmp_path / "rgba.png"))
    with pytest.raises(InputError, match="4 channels"):
        read_volume(tmp_path / "rgba.png")
    with pytest.raises(InputError, match="4 channels"):
        image_to_gray(rgba)
    nan = np.zeros((3, 20, 20), np.float32)
    nan[1, 2, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(tmp_path / "nan.nrrd"))
    with pytest.raises(InputError, match="NaN"):
        read_volume(tmp_path / "nan.nrrd")
    with pytest.raises(InputError, match="too small"):
        as_volume(np.zeros((1, 1)))


def test_axis_checks_and_through_plane_default():
    volume = as_volume(np.zeros((10, 20, 30)), spacing=(1.0, 1.0, 1.0))
    assert through_plane_axis(volume) == 0
    assert through_plane_axis(as_volume(np.zeros((10, 20, 30)), spacing=(0.8, 5.0, 0.8))) == 1
    assert check_axis(-1, volume) == 2
    with pytest.raises(InputError, match="out of range"):
        check_axis(3, volume)
    with pytest.raises(InputError, match="2D image"):
        check_axis(1, as_volume(np.zeros((20, 30))))


def test_normalisation():
    u8 = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert normalize_intensity(u8) is u8
    ct = np.linspace(-1000, 1000, 2001, dtype=np.float32)
    lung = normalize_intensity(ct, window="lung")  # level -600, width 1500: -1350..150
    assert lung[0] == round(350 / 1500 * 255) and lung[-1] == 255 and lung[1150] == 255
    robust = normalize_intensity(np.concatenate([ct, [1e6]]))
    assert robust.dtype == np.uint8 and robust[-1] == 255 and robust[1000] == pytest.approx(128, abs=2)
    assert normalize_intensity(np.full((4, 4), 7.0)).max() == 0
    with pytest.raises(InputError, match="Unknown CT window"):
        normalize_intensity(ct, window="lungs")
