"""What this CPU's matrix units can do, read once at start-up: AMX, AVX-512 with BF16, AVX-512, AVX2, VNNI.

The CPU path picks each stage's precision from these (``cpu_paths``), because the same bf16 code is twice as
fast on one CPU and many times slower on another. Measured (docs/cpu-speed.md): M2IB's optimised blocks in
bf16 took half the CPU time of fp32 on an Intel CPU with AMX, and 0.42x of it on an AMD EPYC (Zen 5) with
AVX512-BF16 and no AMX, where the bf16 dot-product instructions are native; on an AVX2-only CPU oneDNN
emulates bf16 (30x slower, measured by capping the ISA), so there bf16 is never used.

``ONEDNN_MAX_CPU_ISA`` (oneDNN's own cap) is honoured: a cap below a feature hides it here too, so the
choice follows what oneDNN will actually run.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

ISA_ORDER = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
             "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16")
"""oneDNN's ISA names from lowest to highest, as ``ONEDNN_MAX_CPU_ISA`` takes them."""
FEATURE_ISA = {"avx2": "AVX2", "vnni": "AVX512_CORE_VNNI", "avx512": "AVX512_CORE",
               "avx512_bf16": "AVX512_CORE_BF16", "amx": "AVX512_CORE_AMX"}
"""The lowest oneDNN ISA that includes each feature (VNNI: the AVX-512 form)."""


@dataclass(frozen=True)
class CpuFeatures:
    """The matrix-relevant instruction sets of a CPU (all False on a non-x86 CPU such as Apple silicon)."""

    amx: bool = False
    avx512_bf16: bool = False
    avx512: bool = False
    avx2: bool = False
    vnni: bool = False

    @property
    def native_bf16(self) -> bool:
        """bf16 matrix products in hardware (AMX tiles or AVX512-BF16 dot products), not emulated."""
        return self.amx or self.avx512_bf16

    @property
    def level(self) -> str:
        """The best of them, in words: what decides the CPU path."""
        if self.amx:
            return "AMX"
        if self.avx512_bf16:
            return "AVX-512 with BF16 (no AMX)"
        if self.avx512:
            return "AVX-512 (no BF16)"
        return "AVX2" if self.avx2 else "no AVX2"

    def summary(self) -> str:
        """One line for the benchmark and the logs, e.g. 'AMX no, AVX512-BF16 yes, AVX-512 yes, AVX2 yes, VNNI yes'."""
        names = (("AMX", self.amx), ("AVX512-BF16", self.avx512_bf16), ("AVX-512", self.avx512),
                 ("AVX2", self.avx2), ("VNNI", self.vnni))
        return ", ".join(f"{name} {'yes' if value else 'no'}" for name, value in names)

    def as_dict(self) -> dict[str, bool]:
        return {name: getattr(self, name) for name in ("amx", "avx512_bf16", "avx512", "avx2", "vnni")}


def _probe(name: str) -> bool:
    """torch's own CPU probes (private but present since torch 2.3); False where one is missing or fails."""
    probe = getattr(torch.cpu, name, None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def capped(features: CpuFeatures, cap: str) -> CpuFeatures:
    """``features`` without those above a ``ONEDNN_MAX_CPU_ISA`` value (empty, ALL or DEFAULT: no cap)."""
    cap = cap.strip().upper()
    if not cap or cap in ("ALL", "DEFAULT") or cap not in ISA_ORDER:
        return features
    highest = ISA_ORDER.index(cap)
    allowed = {name: ISA_ORDER.index(isa) <= highest for name, isa in FEATURE_ISA.items()}
    return CpuFeatures(**{name: value and allowed[name] for name, value in features.as_dict().items()})


@functools.lru_cache(maxsize=1)
def detect() -> CpuFeatures:
    """This CPU's features, once per process, within ``ONEDNN_MAX_CPU_ISA``."""
    found = CpuFeatures(amx=_probe("_is_amx_tile_supported"), avx512_bf16=_probe("_is_avx512_bf16_supported"),
                        avx512=_probe("_is_avx512_supported"), avx2=_probe("_is_avx2_supported"),
                        vnni=_probe("_is_vnni_supported"))
    return capped(found, os.environ.get("ONEDNN_MAX_CPU_ISA", ""))


def amx_bf16_available() -> bool:
    """True on a CPU with AMX tiles that oneDNN may use."""
    return detect().amx


def native_bf16_available() -> bool:
    """True where bf16 matrix products run in hardware here (AMX or AVX512-BF16)."""
    return detect().native_bf16
