"""DHN-NCE and the comparison losses: formulas, hardness weighting, symmetry, edge cases."""
import math

import pytest
import torch
import torch.nn.functional as F

from MedCLIPSAMLib.finetune.losses import contrastive_loss, dcl, dhn_nce, hardness_log_weights, hn_nce, infonce


def random_similarity(size=6, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(size, dim, generator=g), dim=-1)
    text = F.normalize(image + 0.8 * torch.randn(size, dim, generator=g), dim=-1)
    return image, text, image @ text.T


def loop_dhn_nce(s, tau, beta1, beta2):
    """Direct transcription of the paper's Eq. 9-13 with Python loops (mean over anchors)."""
    size = s.shape[0]

    def direction(m, beta):
        total = 0.0
        for i in range(size):
            norm = sum(math.exp(beta * m[i][k] / tau) for k in range(size) if k != i)
            inner = 0.0
            for j in range(size):
                if j != i:
                    w = (size - 1) * math.exp(beta * m[i][j] / tau) / norm
                    inner += w * math.exp(m[i][j] / tau)
            total += -m[i][i] / tau + math.log(inner)
        return total / size

    rows = s.tolist()
    cols = s.T.tolist()
    return direction(rows, beta1) + direction(cols, beta2)


def test_matches_a_double_loop_transcription():
    _, _, s = random_similarity()
    for beta1, beta2 in ((0.15, 0.15), (0.5, 0.0), (1.0, 2.0)):
        assert dhn_nce(s, 0.6, beta1, beta2).item() == pytest.approx(loop_dhn_nce(s, 0.6, beta1, beta2), rel=1e-5)


def test_equals_dcl_when_betas_are_zero():
    _, _, s = random_similarity(seed=1)
    assert dhn_nce(s, 0.6, 0.0, 0.0).item() == pytest.approx(dcl(s, 0.6).item(), rel=1e-6)


def test_harder_negatives_get_larger_weights():
    s = torch.tensor([[0.9, 0.8, 0.1, -0.5], [0.2, 0.9, 0.3, 0.0], [0.0, 0.1, 0.9, 0.4], [0.3, 0.2, 0.1, 0.9]])
    w = hardness_log_weights(s, 0.6, 0.15).exp()
    assert w[0, 1] > w[0, 2] > w[0, 3]  # similarity 0.8 > 0.1 > -0.5
    assert torch.isinf(hardness_log_weights(s, 0.6, 0.15).diagonal()).all()
    off = ~torch.eye(4, dtype=torch.bool)
    assert w[off].view(4, 3).sum(dim=1) == pytest.approx(torch.full((4,), 3.0))  # sum_j w_ij = B - 1


def test_gradient_on_a_hard_negative_exceeds_an_easy_one_and_weights_are_constants():
    s = torch.tensor([[0.9, 0.8, -0.5], [0.1, 0.9, 0.0], [0.0, 0.2, 0.9]], requires_grad=True)
    dhn_nce(s, 0.6, 0.5, 0.5).backward()
    hard, easy = s.grad[0, 1].item(), s.grad[0, 2].item()
    assert hard > easy > 0
    s_dcl = s.detach().clone().requires_grad_(True)
    dcl(s_dcl, 0.6).backward()
    assert hard / easy > s_dcl.grad[0, 1].item() / s_dcl.grad[0, 2].item()  # the weighting sharpens it
    # no gradient flows through w: the gradient equals the one with w fixed as a constant
    weights = hardness_log_weights(s.detach(), 0.6, 0.5).exp()
    logits = s.detach()[0] / 0.6
    manual = weights[0, 1] * logits[1].exp() / (weights[0, 1] * logits[1].exp() + weights[0, 2] * logits[2].exp())
    row_only = (manual / 0.6 / 3).item()  # d/ds_01 of the image->text term, mean over 3 anchors
    s_row = s.detach().clone().requires_grad_(True)
    from MedCLIPSAMLib.finetune.losses import _one_direction
    _one_direction(s_row, 0.6, 0.5, False).backward()
    assert s_row.grad[0, 1].item() == pytest.approx(row_only, rel=1e-5)


def test_symmetric_in_images_and_texts_when_betas_match():
    image, text, _ = random_similarity(seed=2)
    a = contrastive_loss("dhn-nce", image, text, beta1=0.3, beta2=0.3)
    b = contrastive_loss("dhn-nce", text, image, beta1=0.3, beta2=0.3)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


@pytest.mark.parametrize("name", ["dhn-nce", "dcl", "hn-nce", "infonce"])
def test_finite_for_two_pairs_and_identical_embeddings(name):
    image = torch.randn(2, 8)
    assert torch.isfinite(contrastive_loss(name, image, torch.randn(2, 8)))
    same = torch.ones(5, 8, requires_grad=True)
    loss = contrastive_loss(name, same, same)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(same.grad).all()


def test_hn_nce_and_infonce_relations():
    _, _, s = random_similarity(seed=3)
    # with beta 0 and alpha 1, HN-NCE is the InfoNCE (CLIP) loss
    assert hn_nce(s, 0.6, 0.0, 0.0).item() == pytest.approx(infonce(s, 0.6).item(), rel=1e-5)
    assert hn_nce(s, 0.6, 0.15, 0.15).item() > dhn_nce(s, 0.6, 0.15, 0.15).item()  # positive in the denominator


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least two pairs"):
        contrastive_loss("dhn-nce", torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="unknown loss"):
        contrastive_loss("triplet", torch.randn(3, 4), torch.randn(3, 4))
