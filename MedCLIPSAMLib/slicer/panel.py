"""What the Slicer panel's values mean for the engine, without Qt (tested in pytest).

The panel shows a prompt's preset values, and what it shows is what runs: method settings go to
the engine job by job; model files and device are options of the local engine process (a remote
server chose its own when it started).
"""
from __future__ import annotations

import os
from pathlib import PurePath
from typing import Any

from ..settings import FAST_SALIENCY

PRESET_PARAMETERS = {"bottleneck_layer": "bottleneckLayer", "beta": "beta", "max_components": "maxComponents",
                     "prompt_mode": "promptMode"}
"""Preset field -> panel parameter, for the preset values the panel shows."""


def path_or_none(value: Any) -> str | None:
    """A path parameter's value, or None when unset (Slicer stores an unset path as '.')."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text in ("", ".") or PurePath(text) == PurePath(".") else os.path.expanduser(text)


def run_settings(p: Any, slice_scope: tuple[int, int] | None = None) -> dict[str, Any]:
    """Method settings for one job, from the panel's parameter node ``p``.

    ``slice_scope``: (axis, index) of the slice shown in the slice view last pointed at, for "Current slice".
    """
    settings: dict[str, Any] = {"bottleneck_layer": int(p.bottleneckLayer), "beta": float(p.beta),
                                "max_components": int(p.maxComponents), "prompt_mode": str(p.promptMode),
                                "refine_rounds": int(p.refineRounds), "sam_backend": str(p.samModel)}
    if p.fastSaliency:
        settings.update(FAST_SALIENCY)
    if not p.checkFaithfulness:
        settings["faithfulness_slices"] = 0
    if p.scope == "Slice range":
        first, last = sorted((int(p.firstSlice), int(p.lastSlice)))
        settings["axis"], settings["slice_range"] = 0, [first, last]
    elif p.scope == "Current slice":
        if slice_scope is None:
            raise ValueError("No slice view to take the current slice from: point at a slice view that shows the "
                             "input volume, or choose another scope.")
        settings["axis"], settings["slice_range"] = int(slice_scope[0]), [int(slice_scope[1])] * 2
    return settings


LOCAL_TTL_S = 300
"""The local engine forgets an unused volume or result after 5 minutes (a shared server keeps them an hour):
on a laptop the memory matters more than re-sending a volume over loopback."""


def local_engine_args(p: Any) -> list[str]:
    """``medclipsam serve`` options for the engine this computer runs: device, SAM to load, local model files."""
    args = ["--device", str(p.device), "--sam", str(p.samModel), "--ttl", str(LOCAL_TTL_S)]
    if p.useLocalModels:
        clip, sam = path_or_none(p.clipModelPath), path_or_none(p.samCheckpointPath)
        if clip:
            args += ["--clip-model", clip]
        if sam:
            args += ["--sam-checkpoint", sam]
    return args


def recent_prompts(stored: Any, limit: int = 10) -> list[str]:
    """Recent prompts as saved in Slicer's INI settings: a one-item list reads back as a plain str,
    several as a tuple, none as None."""
    if stored is None:
        return []
    items = [stored] if isinstance(stored, str) else list(stored)
    seen, prompts = set(), []
    for item in items:
        text = str(item).strip()
        if text and text.casefold() not in seen:
            seen.add(text.casefold())
            prompts.append(text)
    return prompts[:limit]


def remember_prompt(prompt: str, stored: Any, limit: int = 10) -> list[str]:
    """The recent list with ``prompt`` first (once)."""
    return recent_prompts([prompt, *recent_prompts(stored, limit)], limit)


def preset_parameters(prompt: str, presets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Panel parameter -> value of the prompt's preset (empty when no preset matches)."""
    preset = presets.get(prompt.strip().lower(), {})
    return {name: preset[key] for key, name in PRESET_PARAMETERS.items() if key in preset}
