"""Does the result depend on the prompt? The prompt's saliency against a null prompt's on a few key slices.

M2IB always highlights *something*: a map that looks the same for "brain tumor", "sitting on a
chair" and gibberish says nothing about the text. So on the slices where the prompt's saliency
is strongest, the engine also runs M2IB for a null prompt (one that names nothing) and scores
how much the two maps differ inside the body: the size of their difference relative to how much the
prompt's map varies (``relative_change_score``, clipped to [0, 1]). 0 means the map would have been
the same whatever was typed; a text tower that ignores its input scores exactly 0 (M2IB's noise is
seeded, so the same embedding gives the same map).

The score, the null prompt and the threshold were chosen by measurement on the DHN-NCE-trained
toy model (``Testing/measure/faithfulness.py``; figures in the README, "Prompt faithfulness").
Numpy only: Slicer's torch-free glue reads the threshold and the warning from here.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

NULL_PROMPT = ""
"""The empty text: it names nothing in any vocabulary and left every prompt of the toy model the widest margin
above the threshold; no candidate null separated right from wrong prompts there (README)."""
UNFAITHFUL_BELOW = 1e-5
"""Scores under this are flagged. Measured on the toy model (README): a text tower that ignores the text scores
0, every prompt of the trained toy (right, wrong, unrelated, gibberish) 5.5e-5 to 2.7e-4 against the empty text;
no score separated right from wrong prompts there, so the flag means "the text had no effect", not "the prompt
is wrong"."""
WARNING = "the saliency barely depends on the prompt; check the result"


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
    """|centred prompt - centred null| / |centred prompt| inside ``body``, clipped to [0, 1]: the engine's score.

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
"""Candidate scores; the engine uses ``relative_change`` (README: figures of all three)."""


def _inside(maps: np.ndarray, body: np.ndarray | None) -> np.ndarray:
    values = np.asarray(maps, dtype=np.float64)
    return values[body] if body is not None else values.ravel()


def prompt_faithfulness(raw_maps: list[np.ndarray], candidates: np.ndarray, body: np.ndarray, count: int,
                        null_saliency: Callable[[np.ndarray], np.ndarray]) -> list[float | None]:
    """One score per prompt (None when there was nothing to compare), computing the null map only once per slice.

    ``raw_maps``: each prompt's raw M2IB maps (slices first); ``candidates``: slices whose maps M2IB
    computed (not interpolated); ``body``: pixels that are not air; ``null_saliency(indices)``: the
    null prompt's maps on those slices. Prompts that share key slices share their null maps.
    """
    keys = [strongest_slices(raw, candidates, count) for raw in raw_maps]
    wanted = np.unique(np.concatenate(keys)) if keys else np.zeros(0, dtype=int)
    null = dict(zip(wanted.tolist(), null_saliency(wanted))) if wanted.size else {}
    scores: list[float | None] = []
    for raw, chosen in zip(raw_maps, keys):
        if not chosen.size or not body[chosen].any():
            scores.append(None)
            continue
        scores.append(relative_change_score(raw[chosen], np.stack([null[z] for z in chosen.tolist()]), body[chosen]))
    return scores


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
