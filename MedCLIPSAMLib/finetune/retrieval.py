"""Image<->text retrieval recall, the paper's ROCO protocol: random batches of 50, several runs."""
from __future__ import annotations

import argparse

import numpy as np
import torch

from ..models.clip import ClipBundle
from .data import Pair, embed_pairs, read_pairs


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


def register_cli(sub: argparse._SubParsersAction) -> None:
    from ..options import at_least
    from ..outputs import add_output_option, add_overwrite_option

    parser = sub.add_parser("retrieval-eval", help="image<->text top-1/top-2 recall (ROCO protocol)")
    parser.add_argument("--data", required=True, help="CSV/JSONL of image path + caption")
    parser.add_argument("--clip", default=None, help="hub id, model folder or fine-tuned checkpoint")
    parser.add_argument("--batch", type=at_least(2), default=50)
    parser.add_argument("--runs", type=at_least(1), default=5)
    parser.add_argument("--device", default="auto")
    add_output_option(parser, "--json", help="also write the recalls to this .json file")
    add_overwrite_option(parser)
    parser.set_defaults(func=cmd_retrieval)


def cmd_retrieval(args: argparse.Namespace) -> int:
    from ..models.clip import load_clip
    from ..outputs import check_output, write_json
    from ..pipeline import resolve_device
    from ..settings import BIOMEDCLIP_HUB_ID

    device = resolve_device(args.device)
    if args.json:
        check_output(args.json, "--json", args.overwrite, [args.data], extensions=(".json",))
    pairs = read_pairs(args.data)
    bundle = load_clip(args.clip or BIOMEDCLIP_HUB_ID)
    scores = evaluate_retrieval(bundle, pairs, device, args.batch, args.runs)
    print("  ".join(f"{k} {100 * v:.2f}" for k, v in scores.items()))
    if args.json:
        write_json(args.json, scores, overwrite=args.overwrite)
    return 0
