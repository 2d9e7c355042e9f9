"""Which runtime and precision each stage of a CPU run takes, chosen from what the CPU has (``cpu_features``).

One table, so the pipeline and the benchmark's report say the same thing. Each choice is the one measured
fastest on that class of CPU with the masks' agreement with fp32 kept (docs/cpu-speed.md):

- M2IB's optimised blocks: bf16 where the CPU multiplies bf16 natively (AMX, AVX512-BF16), else fp32;
- CLIP features (blocks 0..L, once per slice): PyTorch fp32. Measured on the Zen 5 (``Testing/measure``):
  bf16 3.6x and int8 (torch.ao dynamic) 1.8x faster on this stage alone, but it is 8-15 % of a run, and int8
  moved the final masks to DSC 0.992 of fp32's on the dev cases (M2IB's bf16: 0.9993), so fp32 stays;
- the SAM image encoder: exported, in OpenVINO fp32 (bf16 opt-in with ``sam_encoder_bf16``, and only with
  native bf16: final-mask DSC down to 0.92), else ONNX Runtime fp32, else PyTorch; int8 (ONNX Runtime dynamic
  quantisation) measured slower and ~100 % off, so never;
- the SAM decoder: PyTorch fp32 (~0.16 s per slice with its refinement rounds and zoom crops; not exported to
  another runtime: not measured).

``runtime`` torch is today's reference path: PyTorch fp32 everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass

from .cpu_features import CpuFeatures

PATH_STAGES = ("clip_features", "m2ib", "sam_encoder", "sam_decoder")
TORCH, OPENVINO, ONNXRUNTIME = "PyTorch", "OpenVINO", "ONNX Runtime"
ONNX_SAM_BACKENDS = ("litemedsam",)
"""Measured and tested. SAM ViT exports would be 0.4-2.5 GB (ViT-H beyond protobuf's 2 GB): not measured, PyTorch."""


@dataclass(frozen=True)
class StagePath:
    """One stage's runtime and precision, and why."""

    runtime: str
    precision: str
    reason: str

    @property
    def label(self) -> str:
        return f"{self.runtime} {self.precision}"

    def as_dict(self) -> dict[str, str]:
        return {"runtime": self.runtime, "precision": self.precision, "reason": self.reason}


def plan_cpu_paths(features: CpuFeatures, *, runtime: str = "auto", bf16: bool = True,
                   sam_encoder_bf16: bool = False, sam_backend: str = "litemedsam", openvino: bool = True,
                   onnxruntime: bool = True) -> dict[str, StagePath]:
    """The path of every stage in ``PATH_STAGES`` for these features and settings.

    ``bf16``: the ``--fp32`` switch's opposite; ``openvino`` / ``onnxruntime``: whether the packages (and, for
    ONNX Runtime, the exporter) are installed.
    """
    fp32 = "fp32"
    if runtime == "torch":
        return {stage: StagePath(TORCH, fp32, "today's reference path") for stage in PATH_STAGES}
    native = features.native_bf16
    if not bf16:
        m2ib = StagePath(TORCH, fp32, "--fp32")
    elif native:
        m2ib = StagePath(TORCH, "bf16", f"{features.level}: bf16 products in hardware")
    else:
        m2ib = StagePath(TORCH, fp32, f"{features.level}: bf16 would be emulated (slower)")
    if sam_backend not in ONNX_SAM_BACKENDS or not onnxruntime:
        why = "no exporter/runtime installed" if onnxruntime is False else f"{sam_backend} is not exported"
        encoder = StagePath(TORCH, fp32, why)
    elif openvino:
        wants_bf16 = bf16 and sam_encoder_bf16
        precision = "bf16" if wants_bf16 and native else fp32
        why = ("--sam-encoder-bf16" if precision == "bf16" else
               f"{features.level}: bf16 would be emulated" if wants_bf16 else "exact to 6e-6 of PyTorch")
        encoder = StagePath(OPENVINO, precision, why)
    else:
        encoder = StagePath(ONNXRUNTIME, fp32, "OpenVINO not installed")
    return {"clip_features": StagePath(TORCH, fp32, "~8 % of a run; bf16/int8 measured not worth their error"),
            "m2ib": m2ib, "sam_encoder": encoder,
            "sam_decoder": StagePath(TORCH, fp32, "not exported to another runtime (not measured)")}
