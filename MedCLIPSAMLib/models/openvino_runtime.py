"""An exported encoder run by OpenVINO on a CPU: faster than ONNX Runtime on the same ONNX file.

Measured on this 2-core Xeon (docs/benchmarks.md), LiteMedSAM's image encoder per image (CPU seconds, one
thread): ONNX Runtime 1.15, OpenVINO fp32 0.85 (same output to 3e-6), OpenVINO bf16 0.35 on a CPU
with AMX; on an AMD EPYC (Zen 5, AVX512-BF16, no AMX; docs/cpu-speed.md, two threads) fp32 0.49 and bf16 0.27.
OpenVINO reads the ONNX file that ``onnx_runtime`` exports and caches and compiles it in
about a second per process (its own compiled-model cache is not used: with it, a bf16 model compiled
after an fp32 one crashed here, OpenVINO 2026.4). Without the package, ONNX Runtime runs the same file.
"""
from __future__ import annotations

import functools
import importlib.util
import threading

import numpy as np
import torch

F32, BF16 = "f32", "bf16"


@functools.lru_cache(maxsize=1)
def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


class OpenVinoModule:
    """An ONNX model compiled by OpenVINO for the CPU, called like the PyTorch module it replaces."""

    def __init__(self, model: bytes | str, threads: int | None = None, precision: str = F32):
        """``precision``: ``bf16`` lets OpenVINO compute in bfloat16 (only sensible with native bf16, AMX or AVX512-BF16: ``cpu_features``)."""
        import openvino

        core = openvino.Core()
        network = core.read_model(model)  # a path, or the ONNX bytes of a fresh export
        self.precision = precision
        self.compiled = core.compile_model(network, "CPU", {
            "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(), "NUM_STREAMS": 1,
            "INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"})
        shape = self.compiled.input(0).get_partial_shape()
        self.input_shape = tuple(int(d.get_length()) if d.is_static else -1 for d in shape)
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()
        """One infer request is not thread-safe; a server's text job and a session may encode at once."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        with self._lock:
            outputs = [np.array(self._request.infer({0: array[i:i + 1]})[0], copy=True) for i in range(len(array))]
        return torch.from_numpy(np.concatenate(outputs))
