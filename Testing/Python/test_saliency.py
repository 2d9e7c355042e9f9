"""M2IB: shapes, values, the cached fast path against the naive formulation, aligned maps."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from MedCLIPSAMLib.errors import InputError
from MedCLIPSAMLib.saliency import M2IB, M2IBConfig, clip_inputs, maps_to_slices

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def slices():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 60, size=(3, 70, 110)).astype(np.uint8)
    images[:, 20:45, 60:95] = 220
    return images


def test_cached_path_equals_naive_formulation(tiny_clip, slices):
    m2ib = M2IB(tiny_clip, M2IBConfig(layer=8, steps=4, samples=3, beta=1.0), CPU)
    text = tiny_clip.encode_text(["breast tumor"], CPU)
    fast = m2ib.saliency(slices, text)
    naive = m2ib.naive_saliency(slices, text)
    assert fast.shape == naive.shape == (3, 70, 110)
    np.testing.assert_allclose(fast, naive, rtol=1e-4, atol=1e-5)


def test_map_values_and_batch_independence(tiny_clip, slices):
    m2ib = M2IB(tiny_clip, M2IBConfig(layer=9, steps=3, samples=2, beta=2.0), CPU)
    text = tiny_clip.encode_text(["brain tumor"], CPU)
    maps = m2ib.saliency(slices, text)
    assert maps.dtype == np.float32 and np.isfinite(maps).all()
    assert maps.min() >= 0  # a KL divergence is never negative
    assert maps.std() > 0  # the map is not flat
    alone = m2ib.saliency(slices[1:2], text)
    np.testing.assert_allclose(alone[0], maps[1], rtol=1e-4, atol=1e-5)


def test_optimisation_changes_the_map_with_steps(tiny_clip, slices):
    text = tiny_clip.encode_text(["lesion"], CPU)
    one = M2IB(tiny_clip, M2IBConfig(layer=9, steps=1, samples=2), CPU).saliency(slices[:1], text)
    three = M2IB(tiny_clip, M2IBConfig(layer=9, steps=3, samples=2), CPU).saliency(slices[:1], text)
    assert not np.allclose(one, three)


def test_layer_out_of_range_is_a_clear_error(tiny_clip):
    with pytest.raises(InputError, match="has 12 vision blocks"):
        M2IB(tiny_clip, M2IBConfig(layer=11), CPU)


def test_padding_keeps_the_whole_image_and_maps_come_back_aligned(tiny_clip):
    image = np.zeros((60, 150), np.uint8)
    image[10:30, 120:140] = 255  # near the right edge: a centre crop would cut it off
    x, pad = clip_inputs(image[None], tiny_clip, CPU)
    assert x.shape == (1, 3, 224, 224)
    assert (pad.side, pad.top, pad.left) == (150, 45, 0)
    mean, std = tiny_clip.mean[0], tiny_clip.std[0]
    intensity = x[0, 0] * std + mean
    assert intensity.max() > 0.9  # the square is inside the model input
    grid = F.avg_pool2d(intensity[None, None], 16)[0]  # a "map" on the 14 x 14 token grid
    back = maps_to_slices(grid, pad, 224)[0]
    assert back.shape == (60, 150)
    y, x_ = np.unravel_index(np.argmax(back), back.shape)
    assert 10 <= y < 30 and 120 <= x_ < 140


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 autocast is a CUDA path")
def test_bf16_maps_match_fp32_on_gpu(tiny_clip, slices):
    cuda = torch.device("cuda")
    text = tiny_clip.encode_text(["brain tumor"], cuda)
    fp32 = M2IB(tiny_clip, M2IBConfig(layer=9, steps=10, samples=10), cuda, bf16=False).saliency(slices, text)
    bf16 = M2IB(tiny_clip, M2IBConfig(layer=9, steps=10, samples=10), cuda, bf16=True).saliency(slices, text)
    for a, b in zip(fp32, bf16):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98
        assert np.unravel_index(a.argmax(), a.shape) == pytest.approx(np.unravel_index(b.argmax(), b.shape), abs=8)
    tiny_clip.model.to("cpu")


def test_compiled_network_gives_the_same_map(tiny_clip, slices):
    config = M2IBConfig(layer=9, steps=2, samples=2)
    text = tiny_clip.encode_text(["brain tumor"], CPU)
    eager = M2IB(tiny_clip, config, CPU).saliency(slices[:1], text)
    compiled = M2IB(tiny_clip, config, CPU, compile=True).saliency(slices[:1], text)
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-4)
