"""Prompt presets: per-target settings (beta, layer, K, prompt mode, CT window).

The authors tune beta and the bottleneck layer per dataset (breast 1.0 / brain 2.0 at
layer 9; lungs use two components and points). A preset fills in those settings when
the prompt matches, unless the user set them explicitly.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from .settings import Settings

PRESETS_FILE = Path(__file__).resolve().parents[1] / "Resources" / "prompt_presets.json"


def load_presets(path: Path = PRESETS_FILE) -> dict[str, dict[str, Any]]:
    packaged = Path(__file__).resolve().parent / "prompt_presets.json"
    source = packaged if packaged.exists() else path
    if not source.exists():
        return {}
    return {k: v for k, v in json.loads(source.read_text()).items() if not k.startswith("_")}


def apply_preset(settings: Settings, prompt: str, explicit: Iterable[str] = ()) -> tuple[Settings, str | None]:
    """Settings with the matching preset's values, except fields the user set; and the preset's name."""
    key = prompt.strip().lower()
    preset = load_presets().get(key)
    if preset is None:
        return settings, None
    chosen = {k: v for k, v in preset.items() if k not in set(explicit)}
    return settings.replace(**chosen), key
