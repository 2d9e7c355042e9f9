"""Image<->text retrieval recall, the paper's ROCO protocol: random batches of 50, several runs."""
from __future__ import annotations

import numpy as np
import torch

from ..models.clip import ClipBundle
from .data import Pair, embed_pairs


def recall_at_k(image: torch.Tensor, text: torch.Tensor, ks=(1, 2),
                groups: torch.Tensor | None = None) -> dict[str, float]:
    """Fraction of pairs whose partner ranks in the top k (image->text rows, text->image columns).

    ``groups`` marks pairs whose captions are identical: retrieving any of them counts as a
    hit (otherwise a duplicated caption makes the task ambiguous). Default: every pair unique.
    """
    similarity = image @ text.T
    groups = torch.arange(similarity.shape[0]) if groups is None else groups
    out = {}
    for k in ks:
        k_eff = min(k, similarity.shape[0])
        i2t = (groups[similarity.topk(k_eff, dim=1).indices] == groups[:, None]).any(dim=1).float().mean().item()
        t2i = (groups[similarity.T.topk(k_eff, dim=1).indices] == groups[:, None]).any(dim=1).float().mean().item()
        out[f"i2t_top{k}"], out[f"t2i_top{k}"] = i2t, t2i
    return out


def caption_groups(captions: list[str]) -> torch.Tensor:
    """One id per distinct caption text."""
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(c, len(ids)) for c in captions])


def batched_recall(image: torch.Tensor, text: torch.Tensor, batch: int = 50, runs: int = 5,
                   seed: int = 0, ks=(1, 2), groups: torch.Tensor | None = None) -> dict[str, float]:
    """Mean recall over random batches of ``batch`` pairs, repeated ``runs`` times."""
    rng = np.random.default_rng(seed)
    scores: dict[str, list[float]] = {}
    count = image.shape[0]
    for _ in range(runs):
        order = rng.permutation(count)
        for start in range(0, count - min(batch, count) + 1, min(batch, count)):
            index = torch.as_tensor(order[start:start + batch])
            batch_groups = None if groups is None else groups[index]
            for key, value in recall_at_k(image[index], text[index], ks, batch_groups).items():
                scores.setdefault(key, []).append(value)
    return {key: float(np.mean(values)) for key, values in scores.items()}


def evaluate_retrieval(bundle: ClipBundle, pairs: list[Pair], device: torch.device, batch: int = 50,
                       runs: int = 5, seed: int = 0) -> dict[str, float]:
    image, text = embed_pairs(bundle, pairs, device)
    return batched_recall(image, text, batch, runs, seed, groups=caption_groups([p.caption for p in pairs]))
