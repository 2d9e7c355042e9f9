"""M2IB's class-token shortcut: the last ViT block for the class token only gives the same embedding and maps."""
import numpy as np
import pytest
import timm
import torch

from MedCLIPSAMLib.models.class_token import class_token_only_applies, last_block_class_token
from MedCLIPSAMLib.saliency import M2IB, M2IBConfig, clip_inputs

CPU = torch.device("cpu")


def test_the_class_token_of_the_last_block_equals_the_whole_block(tiny_clip):
    trunk = tiny_clip.model.visual.trunk
    tokens = torch.randn(3, 197, trunk.embed_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = trunk.blocks[-1](tokens)[:, :1]
        shortcut = last_block_class_token(trunk.blocks[-1], tokens)
    assert shortcut.shape == (3, 1, trunk.embed_dim)
    torch.testing.assert_close(shortcut, whole, rtol=1e-5, atol=1e-6)
    # and the other tokens do matter through the keys and values: changing one changes the class token
    tokens[:, 5] = torch.randn(3, trunk.embed_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert not torch.allclose(last_block_class_token(trunk.blocks[-1], tokens), shortcut)


def test_it_applies_to_class_token_pooling_only(tiny_clip):
    assert class_token_only_applies(tiny_clip.model.visual.trunk)
    averaged = timm.create_model("vit_tiny_patch16_224", pretrained=False, global_pool="avg", num_classes=0)
    assert not class_token_only_applies(averaged)  # every token feeds the embedding: the whole block runs
    no_class_token = timm.create_model("vit_tiny_patch16_224", pretrained=False, class_token=False,
                                       global_pool="avg", num_classes=0)
    assert not class_token_only_applies(no_class_token)


@pytest.mark.parametrize("layer", [9, 10])
def test_m2ib_maps_are_the_same_with_and_without_the_shortcut(tiny_clip, layer):
    rng = np.random.default_rng(4)
    slices = rng.integers(0, 80, size=(2, 64, 90)).astype(np.uint8)
    slices[:, 20:40, 30:60] = 230
    config = M2IBConfig(layer=layer, steps=4, samples=3)
    text = tiny_clip.encode_text(["brain tumor"], CPU)
    fast, whole = M2IB(tiny_clip, config, CPU), M2IB(tiny_clip, config, CPU, class_token_only=False)
    assert fast.class_token_only and not whole.class_token_only
    images, _ = clip_inputs(slices, tiny_clip, CPU)
    tokens = fast.prefix_tokens(images)
    with torch.no_grad():
        torch.testing.assert_close(fast._suffix_embedding(tokens), whole._suffix_embedding(tokens),
                                   rtol=1e-5, atol=1e-6)
    a, b = fast.saliency(slices, text), whole.saliency(slices, text)
    assert a.std() > 0
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
