"""`medclipsam segment` checks every model file it needs before anything slow: a newcomer without BiomedCLIP or
a SAM checkpoint reads one error line in seconds, not after LiteMedSAM's encoder was exported to ONNX."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import disk_image
from MedCLIPSAMLib.cli import main
from MedCLIPSAMLib.models import clip, onnx_runtime, sam


@pytest.fixture
def volume(tmp_path) -> Path:
    array = np.stack([disk_image(48, 56, (20, 30), 9, seed=z) for z in range(4)]).astype(np.int16)
    path = tmp_path / "v.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


@dataclass
class Cache:
    folder: Path
    reached: list[str] = field(default_factory=list)
    """Model loads and ONNX exports the run reached, in order."""


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Cache:
    """A fresh model cache, and a record of every ONNX export and model load the run reaches."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("MEDCLIPSAM_CACHE", str(folder))
    reached: list[str] = []
    for module, name in ((onnx_runtime, "onnx_module"), (sam, "_build_backend"), (clip, "load_clip_folder")):
        real = getattr(module, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            reached.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    monkeypatch.setattr(sam, "_LOADED", {})  # models loaded by earlier tests would hide the order
    monkeypatch.setattr(clip, "_LOADED", {})
    return Cache(folder, reached)


def segment(volume: Path, *options: str) -> int:
    return main(["segment", str(volume), "-p", "tumour", "-o", str(volume.with_name("o.nii.gz")), "--quiet",
                 "--device", "cpu", *options])


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def onnx_files(cache: Cache) -> list[Path]:
    folder = cache.folder / "onnx"
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_a_missing_clip_folder_fails_before_the_sam_encoder_export(volume, cache, capsys):
    assert onnx_runtime.runtime_available()  # else the export would not apply and the test would prove nothing
    missing = volume.parent / "BiomedCLIP"
    code = segment(volume, "--clip-model", str(missing), "--sam", "litemedsam", "--runtime", "auto")
    line = one_error_line(capsys.readouterr().err)
    assert code == 3 and f"CLIP model '{missing}' not found" in line
    assert cache.reached == [] and onnx_files(cache) == []  # no model loaded, no export started or written


def test_a_clip_folder_without_weights_fails_before_sam_loads(volume, cache, tmp_path, tiny_clip_folder, capsys):
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    for item in tiny_clip_folder.iterdir():
        if item.is_file() and item.name not in clip.WEIGHT_NAMES:
            (incomplete / item.name).write_bytes(item.read_bytes())
    code = segment(volume, "--clip-model", str(incomplete), "--sam", "litemedsam")
    line = one_error_line(capsys.readouterr().err)
    assert code == 4 and "holds no weights file" in line
    assert cache.reached == [] and onnx_files(cache) == []


def test_a_missing_sam_checkpoint_fails_before_clip_loads(volume, cache, tiny_clip_folder, capsys):
    checkpoint = volume.parent / "sam_vit_b.pth"
    code = segment(volume, "--clip-model", str(tiny_clip_folder), "--sam", "vit_b", "--sam-checkpoint",
                   str(checkpoint))
    line = one_error_line(capsys.readouterr().err)
    assert code == 4 and f"SAM checkpoint '{checkpoint}' does not exist" in line
    assert cache.reached == []


def test_with_every_file_there_clip_loads_before_the_sam_encoder_is_exported(volume, cache, tiny_clip_folder,
                                                                              capsys):
    code = segment(volume, "--clip-model", str(tiny_clip_folder), "--sam", "litemedsam", "--steps", "1",
                   "--samples", "1", "--runtime", "auto")
    assert code == 0, capsys.readouterr().err
    assert cache.reached[:3] == ["load_clip_folder", "_build_backend", "onnx_module"]
    assert onnx_files(cache)  # the export ran, after the checks, and was cached
