"""CPU runtime encoders (OpenVINO, or ONNX Runtime without it): exported at first use, equal to PyTorch within
RTOL (BF16_RTOL in bfloat16 on AMX), a broken cache file rebuilt, PyTorch as the fallback, and the same
segmentation as the PyTorch path."""
import json
import os

import numpy as np
import pytest
import torch

from MedCLIPSAMLib.errors import SettingError
from MedCLIPSAMLib.models import cpu_features, onnx_cache, onnx_runtime
from MedCLIPSAMLib.models.onnx_runtime import (BF16_RTOL, RTOL, OrtModule, cpu_precision, max_difference,
                                               onnx_module, sam_image_encoder)
from MedCLIPSAMLib.models.openvino_runtime import BF16, F32, OpenVinoModule, openvino_available

pytestmark = pytest.mark.skipif(not onnx_runtime.runtime_available(), reason="onnxruntime/onnxscript not installed")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty model cache, and no export remembered from an earlier test."""
    monkeypatch.setenv("MEDCLIPSAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(onnx_runtime, "_LOADED", {})
    return tmp_path / "cache" / "onnx"


class SmallEncoder(torch.nn.Module):
    """A conv + attention encoder, quick to export, to exercise the cache."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 16, 4, stride=4)
        self.attention = torch.nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x):
        tokens = self.conv(x).flatten(2).transpose(1, 2)
        return self.attention(tokens, tokens, tokens, need_weights=False)[0]


def example():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def export(notes):
    return onnx_module("small", "the test encoder", SmallEncoder(), example(), {"size": 32}, notes.append)


def test_first_use_exports_says_so_once_and_later_uses_load_the_cache(cache):
    notes = []
    first = export(notes)
    assert isinstance(first, OpenVinoModule if openvino_available() else OrtModule)
    assert len(notes) == 1 and "Preparing the test encoder for the CPU runtime (ONNX export, first use only" in notes[0]
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".onnx")  # no .part left
    manifest = json.loads((cache / files[0]).read_text())
    assert manifest["size"] == (cache / files[1]).stat().st_size and manifest["details"]["max_relative_difference"] <= RTOL
    assert export(notes) is first and len(notes) == 1  # same process: the loaded session
    onnx_runtime._LOADED.clear()
    again = export(notes)
    assert again is not first and len(notes) == 1  # a new process: read from the cache, silently
    assert max_difference(again, SmallEncoder().eval(), example()) <= RTOL


def test_outputs_match_pytorch_image_by_image(cache):
    runtime, module = export([]), SmallEncoder().eval()
    batch = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        reference = module(batch)
    out = runtime(batch)
    assert out.shape == reference.shape == (3, 64, 16)
    assert (out - reference).abs().max() <= RTOL * reference.abs().max()


@pytest.mark.parametrize("damage, reason", [
    (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "half-written"),
    (lambda p: p.write_bytes(p.read_bytes()[:-64] + bytes(64)), "damaged"),
    (lambda p: onnx_cache.manifest_path(p).unlink(), "manifest is missing"),
])
def test_a_broken_export_is_detected_and_rebuilt(cache, damage, reason):
    export([])
    (path,) = cache.glob("*.onnx")
    damage(path)
    onnx_runtime._LOADED.clear()
    notes = []
    runtime = export(notes)
    assert len(notes) == 1 and "is broken" in notes[0] and reason in notes[0] and "exporting it again" in notes[0]
    assert onnx_cache.problem(path) is None
    assert max_difference(runtime, SmallEncoder().eval(), example()) <= RTOL


def test_a_cached_export_for_another_input_shape_is_rebuilt(cache):
    export([])
    (path,) = cache.glob("*.onnx")
    onnx_runtime._LOADED.clear()
    notes = []  # same weights and details, so the same file: its input shape is checked on load
    other = onnx_module("small", "the test encoder", SmallEncoder(), torch.rand(2, 3, 64, 64), {"size": 32},
                        notes.append)
    assert other is not None and "takes inputs of shape (1, 3, 32, 32), not (1, 3, 64, 64)" in notes[0]


def test_other_weights_get_their_own_export(cache):
    export([])
    module = SmallEncoder()
    with torch.no_grad():
        module.conv.bias += 1
    notes = []
    assert onnx_module("small", "the test encoder", module, example(), {"size": 32}, notes.append) is not None
    assert "first use" in notes[0] and len(list(cache.glob("small-*.onnx"))) == 2


def test_an_export_that_fails_or_differs_falls_back_to_pytorch(cache, monkeypatch):
    def unsupported(module, example):
        raise RuntimeError("Unsupported FX nodes: {'aten.some_op.default'}")

    notes = []
    with monkeypatch.context() as patch:
        patch.setattr(onnx_runtime, "_export_bytes", unsupported)
        assert export(notes) is None
    assert "could not be exported to ONNX (RuntimeError: Unsupported FX nodes" in notes[-1]
    assert "runs in PyTorch" in notes[-1]
    monkeypatch.setattr(onnx_runtime, "RTOL", -1.0)  # nothing can be that close
    assert export(notes) is None
    assert "differs from PyTorch by" in notes[-1] and "runs in PyTorch instead" in notes[-1]
    assert not list(cache.glob("small-*.onnx"))  # a mismatching export is never cached


def test_an_unwritable_cache_still_gives_the_runtime_for_this_session(cache):
    cache.parent.mkdir(parents=True)
    cache.write_text("a file where the folder should be")
    notes = []
    assert export(notes) is not None
    assert "cannot be cached" in notes[-1] and "this session only" in notes[-1]


def test_litemedsam_encoder_in_onnx_runtime_matches_pytorch(cache, litemedsam):
    notes = []
    runtime = sam_image_encoder(litemedsam, notes.append)
    assert runtime is not None and "Preparing LiteMedSAM's image encoder for the CPU runtime" in notes[0]
    rng = np.random.default_rng(0)
    slices = rng.integers(0, 60, size=(2, 180, 240)).astype(np.uint8)
    slices[:, 60:120, 90:160] = 220
    images, _ = litemedsam.preprocess(slices)
    with torch.no_grad():
        reference = litemedsam.model.image_encoder(images)
    out = runtime(images)
    assert out.shape == reference.shape == (2, 256, 64, 64)
    assert (out - reference).abs().max() <= RTOL * reference.abs().max()
    fast = litemedsam.with_encoder(runtime)
    assert fast.model is litemedsam.model and litemedsam.runtime_encoder is None
    box = [(88, 58, 162, 122)]
    a = fast.segment(fast.encode(slices[:1])[0], boxes=box)
    b = litemedsam.segment(litemedsam.encode(slices[:1])[0], boxes=box)
    assert a.sum() > 0 and (a == b).mean() > 0.999


def test_the_pipeline_uses_onnx_runtime_on_a_cpu_with_the_same_result(cache, fast_settings, tiny_clip, litemedsam):
    from MedCLIPSAMLib.benchmark import synthetic_volume
    from MedCLIPSAMLib.pipeline import Pipeline

    volume = synthetic_volume(6, 96)
    fast = Pipeline(fast_settings.replace(bf16=False), clip=tiny_clip, sam=litemedsam)
    reference = Pipeline(fast_settings.replace(runtime="torch"), clip=tiny_clip, sam=litemedsam)
    assert fast.sam.runtime_encoder is not None and reference.sam.runtime_encoder is None
    first = fast.run(volume, "brain tumor")
    assert sum("first use only" in m for m in first.messages) == 1
    second = fast.run(volume, "brain tumor")
    assert not any("ONNX" in m for m in second.messages)
    today = reference.run(volume, "brain tumor")
    assert (second.labels == today.labels).mean() > 0.999
    np.testing.assert_allclose(second.saliency["brain tumor"], today.saliency["brain tumor"], rtol=1e-4, atol=1e-5)


def test_both_runtimes_run_the_same_cached_file_within_rtol(cache):
    export([])
    (path,) = cache.glob("*.onnx")
    module = SmallEncoder().eval()
    assert max_difference(OrtModule(str(path)), module, example()) <= RTOL
    if openvino_available():
        assert max_difference(OpenVinoModule(str(path)), module, example()) <= RTOL


def test_bf16_only_with_native_bf16_and_openvino(monkeypatch):
    assert cpu_precision(False) == F32
    assert cpu_precision(True) == (BF16 if cpu_features.native_bf16_available() and openvino_available() else F32)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # oneDNN capped below AVX512-BF16: bf16 is emulated, so fp32
    cpu_features.detect.cache_clear()
    try:
        assert cpu_precision(True) == F32
    finally:
        monkeypatch.undo()
        cpu_features.detect.cache_clear()


needs_bf16 = pytest.mark.skipif(cpu_precision(True) != BF16, reason="needs OpenVINO and a CPU with AMX or AVX512-BF16")


@needs_bf16
def test_litemedsam_encoder_in_bf16_is_within_its_tolerance_and_keeps_the_mask(cache, litemedsam):
    notes = []
    runtime = sam_image_encoder(litemedsam, notes.append, precision=BF16)
    assert isinstance(runtime, OpenVinoModule) and runtime.precision == BF16
    rng = np.random.default_rng(1)
    slices = rng.integers(0, 60, size=(2, 180, 240)).astype(np.uint8)
    slices[:, 60:120, 90:160] = 220
    images, _ = litemedsam.preprocess(slices)
    difference = max_difference(runtime, litemedsam.model.image_encoder, images)
    assert RTOL < difference <= BF16_RTOL, "bf16 really ran, within its tolerance"
    fast, box = litemedsam.with_encoder(runtime), [(88, 58, 162, 122)]
    a = fast.segment(fast.encode(slices[:1])[0], boxes=box)
    b = litemedsam.segment(litemedsam.encode(slices[:1])[0], boxes=box)
    assert a.sum() > 0 and 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.98


def test_the_pipeline_runs_the_sam_encoder_in_bf16_only_when_asked(cache, fast_settings, tiny_clip, litemedsam):
    from MedCLIPSAMLib.pipeline import Pipeline

    default = Pipeline(fast_settings, clip=tiny_clip, sam=litemedsam).sam.runtime_encoder
    assert default is not None and getattr(default, "precision", F32) == F32
    asked = Pipeline(fast_settings.replace(sam_encoder_bf16=True), clip=tiny_clip, sam=litemedsam).sam.runtime_encoder
    assert getattr(asked, "precision", F32) == cpu_precision(True)
    unless_fp32 = Pipeline(fast_settings.replace(sam_encoder_bf16=True, bf16=False), clip=tiny_clip,
                           sam=litemedsam).sam.runtime_encoder
    assert getattr(unless_fp32, "precision", F32) == F32


@needs_bf16
def test_a_bf16_export_out_of_tolerance_runs_in_fp32(cache, monkeypatch):
    monkeypatch.setattr(onnx_runtime, "BF16_RTOL", -1.0)
    notes = []
    runtime = onnx_module("small", "the test encoder", SmallEncoder(), example(), {"size": 32}, notes.append,
                          precision=BF16)
    assert runtime is not None and runtime.precision == F32
    assert "in bfloat16 differs from PyTorch" in notes[-1] and "runs in fp32 instead" in notes[-1]
    onnx_runtime._LOADED.clear()  # a new process loads the cached file: bf16 is checked again, not trusted
    again = onnx_module("small", "the test encoder", SmallEncoder(), example(), {"size": 32}, notes.append,
                        precision=BF16)
    assert again.precision == F32 and "runs in fp32 instead" in notes[-1]


def test_an_unknown_runtime_is_a_setting_error():
    from MedCLIPSAMLib.settings import Settings

    with pytest.raises(SettingError, match="Unknown runtime 'onnx'.*auto, torch"):
        Settings(runtime="onnx")


def test_onnx_runtime_runs_the_file_when_openvino_cannot(cache, monkeypatch):
    from MedCLIPSAMLib.models import openvino_runtime

    def broken(*args, **kwargs):
        raise RuntimeError("no CPU plugin on this platform")

    monkeypatch.setattr(onnx_runtime, "OpenVinoModule", broken)
    runtime = export([])
    assert isinstance(runtime, OrtModule) and max_difference(runtime, SmallEncoder().eval(), example()) <= RTOL
    assert openvino_runtime.OpenVinoModule is not broken  # only the loader's view was patched


@pytest.mark.skipif(not openvino_available(), reason="OpenVINO not installed")
def test_one_openvino_module_serves_two_threads_at_once(cache):
    import threading

    export([])
    (path,) = cache.glob("*.onnx")
    runtime, module = OpenVinoModule(str(path)), SmallEncoder().eval()
    errors, batches = [], [torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]

    def work(batch):
        try:
            for _ in range(20):
                with torch.no_grad():
                    assert (runtime(batch) - module(batch)).abs().max() <= RTOL * module(batch).abs().max()
        except Exception as exc:  # collected: an assertion in a thread does not fail the test by itself
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(b,)) for b in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
