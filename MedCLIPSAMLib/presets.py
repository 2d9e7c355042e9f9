"""Prompt presets: per-target settings (beta, layer, K, prompt mode, CT window).

The authors tune beta and the bottleneck layer per dataset (breast 1.0 / brain 2.0 at
layer 9; lungs use two components and points). A preset fills in those settings when
the prompt matches, unless the user set them explicitly.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

from .resources import resource_path
from .settings import Settings



def load_presets() -> dict[str, dict[str, Any]]:
    """Preset name (lower case prompt) -> Settings fields."""
    raw = json.loads(resource_path("prompt_presets.json").read_text())
    return {k: v for k, v in raw.items() if not k.startswith("_")}


def apply_preset(settings: Settings, prompt: str, explicit: Iterable[str] = ()) -> tuple[Settings, str | None]:
    """Settings with the matching preset's values, except fields the user set; and the preset's name."""
    key = prompt.strip().lower()
    preset = load_presets().get(key)
    if preset is None:
        return settings, None
    chosen = {k: v for k, v in preset.items() if k not in set(explicit)}
    return settings.replace(**chosen), key
