"""Does this CPU run bfloat16 matrix products natively (Intel AMX)?

Measured here (docs/benchmarks.md): M2IB's optimisation in bf16 takes half the CPU time of fp32 on a
CPU with AMX, 1.4x *more* with AVX512-BF16 alone (no AMX) and 30x more on an AVX2-only CPU, where
oneDNN emulates bf16. So bf16 on a CPU is used only where AMX is present, and never elsewhere.
"""
from __future__ import annotations

import functools
import os

import torch


@functools.lru_cache(maxsize=1)
def amx_bf16_available() -> bool:
    """True on a CPU with AMX tiles that oneDNN may use (``ONEDNN_MAX_CPU_ISA`` below AMX says no)."""
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if capped and capped not in ("ALL", "DEFAULT") and "AMX" not in capped:
        return False
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private but stable since torch 2.3
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False
