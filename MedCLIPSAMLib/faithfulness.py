"""Does the result depend on the prompt? What was segmented, compared with the prompt and with null prompts by CLIP.

M2IB always highlights *something*: a mask that looks plausible says nothing about the text. So on the
slices where the prompt's saliency is strongest, the engine crops the image around the prompt's own salient
(Otsu) region, what the pipeline segments there, and asks the CLIP model whether that crop looks more like
the prompt than like null prompts that name nothing (``match_score``: cosine similarity to the prompt minus
the mean similarity to the nulls). A text tower that ignores the text scores 0 (every text has the same
embedding); a prompt naming something other than what was found scores below 0.

The score, the null prompts and the threshold were chosen by measurement on the DHN-NCE-trained toy model
(``Testing/measure/faithfulness_match.py``; figures in docs/faithfulness.md); the saliency-
difference scores kept below (``SCORES``) were measured first and did not separate right from wrong prompts.
Numpy only: Slicer's torch-free glue reads the threshold and the warning from here.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

NULL_PROMPTS = ("", "an image", "a car")
"""The empty text, a generic caption and an unrelated object, averaged: on the toy model any single one of
them lands near one of the learnt concepts (the empty text at cosine 0.995 to "a dark square block"), which
would score a right prompt naming that concept near 0; their mean leaves every right prompt well above the
threshold (docs/faithfulness.md)."""
UNFAITHFUL_BELOW = 0.01
"""Scores under this are flagged: the result looks no more like the prompt than like the null prompts (a sign,
so it means the same for any CLIP model's cosine scale). Measured on the toy model (docs/faithfulness.md): a text tower that
ignores the text scores 0, right prompts 0.6 to 1.3, wrong-shape prompts below -0.6 (all flagged), gibberish
within +-0.15 (45 % flagged). A cut at 0.13-0.6 flagged all gibberish there too, but in the toy's cosine units:
BiomedCLIP's margins are a few hundredths, where such a cut would flag right prompts (not measured here)."""
WARNING = "what was segmented does not look more like the prompt than like an empty prompt; check the result"
CROP_MARGIN = 0.25
"""The crop around the result region: its bounding box's side plus this fraction of it on each side (context
for the CLIP model, as a radiologist would look at a finding with its surroundings)."""


def strongest_slices(raw: np.ndarray, candidates: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` candidate slices (axis 0) where the prompt's raw saliency peaks highest, in slice order."""
    if count <= 0 or candidates.size == 0:
        return np.zeros(0, dtype=int)
    peaks = raw[candidates].reshape(len(candidates), -1).max(axis=1)
    order = np.argsort(-peaks, kind="stable")[:count]
    return np.sort(candidates[order])


def correlation_score(prompt_maps: np.ndarray, null_maps: np.ndarray, body: np.ndarray | None = None) -> float:
    """1 - Pearson correlation of the two maps inside ``body``, clipped to [0, 1] (a flat map counts as 0)."""
    a, b = _inside(prompt_maps, body), _inside(null_maps, body)
    a, b = a - a.mean(), b - b.mean()
    norm = float(np.sqrt((a * a).sum() * (b * b).sum()))
    if a.size < 2 or norm <= 1e-12:
        return 0.0
    return float(np.clip(1.0 - (a * b).sum() / norm, 0.0, 1.0))


def otsu_overlap_score(prompt_maps: np.ndarray, null_maps: np.ndarray, body: np.ndarray | None = None) -> float:
    """1 - IoU of the two maps' Otsu regions inside ``body`` (the alternative the measurement compared)."""
    from .prompts import otsu_mask

    a, b = otsu_mask(_inside(prompt_maps, body)), otsu_mask(_inside(null_maps, body))
    union = int((a | b).sum())
    return 1.0 - int((a & b).sum()) / union if union else 0.0


def relative_change_score(prompt_maps: np.ndarray, null_maps: np.ndarray, body: np.ndarray | None = None) -> float:
    """|centred prompt - centred null| / |centred prompt| inside ``body``, clipped to [0, 1] (was the engine's score).

    Measured: M2IB maps of different texts correlate to 1 - 3e-7 on the toy model, so 1 - r hides the
    differences in rounding; this ratio keeps them readable (a shift of the whole map does not count)."""
    a, b = _inside(prompt_maps, body), _inside(null_maps, body)
    a, b = a - a.mean(), b - b.mean()
    spread = float(np.linalg.norm(a))
    if a.size < 2 or spread <= 1e-12:
        return 0.0
    return float(min(1.0, np.linalg.norm(a - b) / spread))


SCORES: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray | None], float]] = {
    "relative_change": relative_change_score, "correlation": correlation_score, "otsu_overlap": otsu_overlap_score}
"""The saliency-difference candidates measured first (docs/faithfulness.md: none separated right from wrong prompts); the
engine uses ``match_score``."""


def _inside(maps: np.ndarray, body: np.ndarray | None) -> np.ndarray:
    values = np.asarray(maps, dtype=np.float64)
    return values[body] if body is not None else values.ravel()


def result_region(raw_map: np.ndarray, body: np.ndarray) -> np.ndarray:
    """What the pipeline segments on a slice, before SAM: the Otsu region of the prompt's map inside the body."""
    from .prompts import otsu_mask

    return otsu_mask(np.asarray(raw_map, dtype=np.float64), body)


def crop_box(region: np.ndarray, margin: float = CROP_MARGIN) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right), end-exclusive: a square around ``region``'s bounding box with ``margin`` of
    its side on each side, cut at the image border; None for an empty region (the whole slice is looked at)."""
    if not region.any():
        return None
    ys, xs = np.nonzero(region)
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    half = max(ys.max() - ys.min(), xs.max() - xs.min(), 8) * (0.5 + margin)
    return (int(max(0, cy - half)), int(min(region.shape[0], cy + half + 1)),
            int(max(0, cx - half)), int(min(region.shape[1], cx + half + 1)))


def match_score(views: np.ndarray, prompt: np.ndarray, nulls: np.ndarray) -> float:
    """Mean over the views (L2-normalised image embeddings, one row each) of: cosine similarity to the prompt's
    text embedding minus the mean similarity to the null prompts'. 0 when every text embeds alike."""
    views = np.asarray(views, dtype=np.float64).reshape(-1, np.shape(prompt)[-1])
    if not views.shape[0]:
        return 0.0
    to_prompt = views @ np.asarray(prompt, dtype=np.float64)
    to_nulls = (views @ np.asarray(nulls, dtype=np.float64).T).mean(axis=1)
    return float(np.mean(to_prompt - to_nulls))


View = tuple[int, "tuple[int, int, int, int] | None"]
"""(slice index, crop box or None for the whole slice): what the CLIP model looks at."""


def prompt_faithfulness(raw_maps: list[np.ndarray], candidates: np.ndarray, body: np.ndarray, count: int,
                        prompts: Sequence[np.ndarray], nulls: np.ndarray,
                        embed_views: Callable[[list[View]], np.ndarray]) -> list[float | None]:
    """One score per prompt (None when its key slices hold no body), all views embedded in one call.

    ``raw_maps``: each prompt's raw M2IB maps (slices first); ``candidates``: slices whose maps M2IB computed
    (not interpolated); ``body``: pixels that are not air; ``prompts``/``nulls``: L2-normalised text
    embeddings; ``embed_views(views)``: the L2-normalised image embedding of each view, one row each.
    """
    views: list[View] = []
    owners: list[int] = []
    for index, raw in enumerate(raw_maps):
        for z in strongest_slices(raw, candidates, count).tolist():
            if body[z].any():
                views.append((z, crop_box(result_region(raw[z], body[z]))))
                owners.append(index)
    embedded = embed_views(views) if views else np.zeros((0, 0))
    owner = np.asarray(owners, dtype=int)
    return [match_score(embedded[owner == index], prompts[index], nulls) if (owner == index).any() else None
            for index in range(len(raw_maps))]


def is_unfaithful(score: float | None) -> bool:
    return score is not None and score < UNFAITHFUL_BELOW


def faithfulness_warning(name: str, score: float | None) -> str | None:
    """The one-line warning a result under the threshold carries (CLI note, Slicer panel), else None."""
    if not is_unfaithful(score):
        return None
    return f"'{name}': {WARNING} (faithfulness {score:.2g}, under {UNFAITHFUL_BELOW:g})."


def format_score(score: float | None) -> str:
    """For summary lines and tables: the score, or n/a when the check was off or had nothing to compare."""
    return "n/a" if score is None else f"{score:.2g}"
