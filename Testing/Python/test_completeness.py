"""Cut-off and damaged image files are refused with "is incomplete", never read as zeros."""
import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from MedCLIPSAMLib.errors import InputError
from MedCLIPSAMLib.imageio import read_size, read_volume


def whole_file(tmp_path, name: str, compress: bool = True):
    array = np.random.default_rng(0).integers(1, 1000, (6, 32, 32)).astype(np.int16)  # no zero voxel
    path = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path), useCompression=compress)
    return path, array


def cut(path, fraction: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


@pytest.mark.parametrize("name, compress", [("scan.nii.gz", True), ("scan.nii", False), ("scan.mha", True),
                                            ("scan.mha", False), ("scan.nrrd", True), ("scan.nrrd", False)])
def test_a_cut_off_file_is_refused_and_a_whole_one_reads(tmp_path, name, compress):
    path, array = whole_file(tmp_path, name, compress)
    np.testing.assert_array_equal(read_volume(path).array, array)
    cut(path)
    with pytest.raises(InputError, match="is incomplete"):
        read_volume(path)
    with pytest.raises(InputError, match="is incomplete"):
        read_size(path)  # the header-only check of evaluate and nnunet-predict too


def test_a_whole_gzip_stream_of_a_short_nifti_is_refused(tmp_path):
    """The .gz itself is intact, but the NIfTI inside holds fewer voxels than its header says."""
    plain, _ = whole_file(tmp_path, "scan.nii", compress=False)
    short = tmp_path / "short.nii.gz"
    short.write_bytes(gzip.compress(plain.read_bytes()[:-1000]))
    with pytest.raises(InputError, match=r"is incomplete: it holds \d+ bytes where its header needs \d+"):
        read_volume(short)


def test_a_damaged_gzip_stream_is_refused(tmp_path):
    path, _ = whole_file(tmp_path, "scan.nii.gz")
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xFF  # the stored checksum no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="is damaged"):
        read_volume(path)


def test_a_plain_nifti_named_nii_gz_still_reads(tmp_path):
    """Readers accept an uncompressed file with a .gz name; so does the check."""
    plain, array = whole_file(tmp_path, "scan.nii", compress=False)
    renamed = plain.rename(tmp_path / "scan.nii.gz")
    np.testing.assert_array_equal(read_volume(renamed).array, array)
