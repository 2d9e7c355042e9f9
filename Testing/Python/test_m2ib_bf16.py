"""M2IB's optimised blocks in bfloat16 on a CPU with native bf16 (AMX, AVX512-BF16): the same map; never where
bf16 would be emulated."""
import numpy as np
import pytest
import torch

from MedCLIPSAMLib.models import cpu_features
from MedCLIPSAMLib.pipeline import Pipeline
from MedCLIPSAMLib.prompts import otsu_mask
from MedCLIPSAMLib.saliency import M2IB, M2IBConfig
from MedCLIPSAMLib.settings import Settings

CPU = torch.device("cpu")
needs_native_bf16 = pytest.mark.skipif(not cpu_features.native_bf16_available(),
                                       reason="this CPU has neither AMX nor AVX512-BF16")


@pytest.fixture(scope="module")
def slices():
    rng = np.random.default_rng(5)
    images = rng.integers(0, 60, size=(2, 80, 80)).astype(np.uint8)
    images[:, 20:45, 30:60] = 220
    return images


@needs_native_bf16
def test_bf16_blocks_give_the_fp32_map_and_leave_the_model_in_fp32(tiny_clip, slices):
    config = M2IBConfig(layer=9, steps=4, samples=3)
    text = tiny_clip.encode_text(["lesion"], CPU)
    fp32 = M2IB(tiny_clip, config, CPU).saliency(slices, text)
    fast = M2IB(tiny_clip, config, CPU, cpu_bf16=True)
    assert fast.suffix_dtype == torch.bfloat16 and fast.suffix_blocks[0].mlp.fc1.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in tiny_clip.model.parameters()), "the shared model stays fp32"
    bf16 = fast.saliency(slices, text)
    assert bf16.shape == fp32.shape and bf16.dtype == np.float32
    assert np.corrcoef(fp32.ravel(), bf16.ravel())[0, 1] > 0.9999
    a, b = otsu_mask(fp32), otsu_mask(bf16)
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.995
    assert not np.array_equal(fp32, bf16), "bf16 really ran (an identical map would mean fp32 blocks)"


def test_where_bf16_is_emulated_the_blocks_stay_fp32(tiny_clip, monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")  # AVX-512 without its BF16 instructions
    cpu_features.detect.cache_clear()
    try:
        assert not cpu_features.native_bf16_available()
        m2ib = M2IB(tiny_clip, M2IBConfig(layer=9), CPU, cpu_bf16=True)
        assert m2ib.suffix_dtype == torch.float32
        assert m2ib.suffix_blocks[0] is tiny_clip.model.visual.trunk.blocks[10], "no copy without AMX"
    finally:
        monkeypatch.undo()
        cpu_features.detect.cache_clear()


@pytest.mark.parametrize("runtime, bf16, expected", [("auto", True, True), ("torch", True, False),
                                                     ("auto", False, False)])
def test_the_pipeline_asks_for_bf16_only_on_the_fast_path(tiny_clip, runtime, bf16, expected):
    pipeline = Pipeline(Settings(device="cpu", runtime=runtime, bf16=bf16), clip=tiny_clip)
    want = expected and cpu_features.native_bf16_available()
    assert (pipeline.m2ib.suffix_dtype == torch.bfloat16) is want


@needs_native_bf16
def test_the_bf16_copies_compute_attention_as_plain_products(tiny_clip):
    originals = [block.attn.fused_attn for block in tiny_clip.model.visual.trunk.blocks]
    m2ib = M2IB(tiny_clip, M2IBConfig(layer=9), CPU, cpu_bf16=True)
    assert [block.attn.fused_attn for block in m2ib.suffix_blocks] == [False, False]
    assert [block.attn.fused_attn for block in tiny_clip.model.visual.trunk.blocks] == originals, "originals untouched"
