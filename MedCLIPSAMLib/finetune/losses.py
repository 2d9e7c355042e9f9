"""Contrastive losses on a batch of paired, L2-normalised image and text embeddings.

DHN-NCE as the MedCLIP-SAMv2 paper defines it (Eq. 9-13), not as the authors' released code
computes it: the positive is left out of the denominator (decoupled), and each negative j of
anchor i is weighted by

    w_ij = (B - 1) * exp(beta * s_ij / tau) / sum_{k != i} exp(beta * s_ik / tau),

so more similar (harder) negatives weigh more. Weights are constants (no gradient). With
beta = 0 every weight is 1 and DHN-NCE is DCL. InfoNCE (the CLIP loss) and HN-NCE (weighted,
positive kept in the denominator) are provided for comparison. All losses take the
similarity matrix S = I @ T.T (rows: images, columns: texts) and average over anchors.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import LOSSES


def _off_diagonal(size: int, device) -> torch.Tensor:
    return ~torch.eye(size, dtype=torch.bool, device=device)


def hardness_log_weights(similarity: torch.Tensor, tau: float, beta: float) -> torch.Tensor:
    """log w_ij for every off-diagonal pair (rows are anchors); the diagonal is -inf. Detached."""
    size = similarity.shape[0]
    scaled = (beta * similarity / tau).detach().masked_fill(~_off_diagonal(size, similarity.device), -math.inf)
    return math.log(size - 1) + scaled - torch.logsumexp(scaled, dim=1, keepdim=True)


def _one_direction(similarity: torch.Tensor, tau: float, beta: float | None, keep_positive: bool,
                   alpha: float = 1.0) -> torch.Tensor:
    """Mean over anchors (rows) of -s_ii/tau + log(denominator)."""
    size = similarity.shape[0]
    logits = similarity / tau
    negatives = logits.masked_fill(~_off_diagonal(size, similarity.device), -math.inf)
    if beta is not None:
        negatives = negatives + hardness_log_weights(similarity, tau, beta)
    positive = logits.diagonal()
    terms = [negatives]
    if keep_positive:
        terms.append((positive + math.log(alpha))[:, None])
    denominator = torch.logsumexp(torch.cat(terms, dim=1), dim=1)
    return (denominator - positive).mean()


def dhn_nce(similarity: torch.Tensor, tau: float = 0.6, beta1: float = 0.15, beta2: float = 0.15) -> torch.Tensor:
    """Decoupled hard-negative NCE: image->text with beta1 plus text->image with beta2."""
    return _one_direction(similarity, tau, beta1, False) + _one_direction(similarity.T, tau, beta2, False)


def dcl(similarity: torch.Tensor, tau: float = 0.6) -> torch.Tensor:
    """Decoupled contrastive loss: the positive is not in the denominator, no hardness weights."""
    return _one_direction(similarity, tau, None, False) + _one_direction(similarity.T, tau, None, False)


def hn_nce(similarity: torch.Tensor, tau: float = 0.6, beta1: float = 0.15, beta2: float = 0.15,
           alpha: float = 1.0) -> torch.Tensor:
    """Hard-negative NCE: hardness-weighted negatives, positive kept in the denominator (weight alpha)."""
    return (_one_direction(similarity, tau, beta1, True, alpha)
            + _one_direction(similarity.T, tau, beta2, True, alpha))


def infonce(similarity: torch.Tensor, tau: float = 0.6) -> torch.Tensor:
    """The symmetric CLIP loss (cross-entropy over rows and over columns), summed."""
    logits = similarity / tau
    target = torch.arange(similarity.shape[0], device=similarity.device)
    return F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)


def contrastive_loss(name: str, image: torch.Tensor, text: torch.Tensor, tau: float = 0.6,
                     beta1: float = 0.15, beta2: float = 0.15) -> torch.Tensor:
    """A named loss on embeddings (normalised here); batches need at least two pairs."""
    if image.shape[0] < 2:
        raise ValueError("contrastive losses need at least two pairs per batch")
    similarity = F.normalize(image.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T
    if name == "dhn-nce":
        return dhn_nce(similarity, tau, beta1, beta2)
    if name == "hn-nce":
        return hn_nce(similarity, tau, beta1, beta2)
    if name == "dcl":
        return dcl(similarity, tau)
    if name == "infonce":
        return infonce(similarity, tau)
    raise ValueError(f"unknown loss '{name}'; choose one of {', '.join(LOSSES)}")
