"""Inference-only encoders exported to ONNX and run on a CPU: LiteMedSAM's image encoder.

On this 2-core CPU the exported encoder runs about 2x faster than PyTorch in ONNX Runtime (its many
small window-attention ops cost PyTorch more in overhead than in arithmetic) and faster again in
OpenVINO, which runs the same file (``openvino_runtime``; docs/benchmarks.md). Each encoder is exported
at first use into the model cache (``onnx_cache``: atomic writes, a damaged file rebuilt) and checked
against PyTorch on an example input before it is used: the largest difference must stay within
``RTOL`` of the largest output value (``BF16_RTOL`` for OpenVINO's bfloat16 on a CPU with AMX or AVX512-BF16).

PyTorch stays the path on GPUs, for M2IB's optimisation (it needs gradients), and whenever
onnxruntime is not installed, an export fails or does not match: then the run says why once
and goes on in PyTorch, with the same result.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import logging
import warnings
from typing import Callable

import numpy as np
import torch

from . import onnx_cache
from .cpu_features import native_bf16_available
from .cpu_paths import ONNX_SAM_BACKENDS
from .openvino_runtime import BF16, F32, OpenVinoModule, openvino_available

log = logging.getLogger(__name__)
RTOL = 1e-4
"""Largest |runtime - PyTorch| allowed in fp32, as a fraction of the largest |PyTorch| output value
(measured: LiteMedSAM encoder 1e-6 in ONNX Runtime, 6e-6 in OpenVINO)."""
BF16_RTOL = 0.1
"""The same in bfloat16 (OpenVINO on a CPU with AMX or AVX512-BF16, opt-in: ``sam_encoder_bf16``; measured: LiteMedSAM
encoder 0.056, oracle-saliency Dice within 0.7 points of fp32 on the dev set, docs/benchmarks.md)."""
Notify = Callable[[str], None]
"""Receives one line for the user (an export started, a broken one rebuilt, a fallback to PyTorch)."""
Progress = Callable[[str, int, int], None]


@functools.lru_cache(maxsize=1)
def runtime_available() -> bool:
    """onnxruntime to run, onnxscript and onnx to export (torch's exporter needs both)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnxscript", "onnx"))


class OrtModule:
    """An exported module run by ONNX Runtime, called like the PyTorch module it replaces (tensor in and out).

    Exports take one image (TinyViT's code fixes the batch size when traced), so a batch runs image by
    image: on a CPU that is as fast per image (LiteMedSAM's encoder measured faster singly, docs/benchmarks.md).
    """

    def __init__(self, model: bytes | str, threads: int | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # PyTorch runs between calls (M2IB, the SAM decoder): idle ONNX threads must not spin on its cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = tuple(self.session.get_inputs()[0].shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        outputs = [self.session.run(None, {self.input_name: array[i:i + 1]})[0] for i in range(len(array))]
        return torch.from_numpy(np.concatenate(outputs))


def _export_bytes(module: torch.nn.Module, example: torch.Tensor) -> bytes:
    """The module as an ONNX model for one image; torch's exporter chatter is kept off the console."""
    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet), \
            _quiet_loggers():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (example[:1],), dynamo=True, input_names=["input"],
                                    output_names=["output"], optimize=True, verbose=False)
    return program.model_proto.SerializeToString()


@contextlib.contextmanager
def _quiet_loggers():
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript", "torch._dynamo")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def max_difference(runtime: Callable[[torch.Tensor], torch.Tensor], module: torch.nn.Module,
                   example: torch.Tensor) -> float:
    """Largest |runtime - module| on ``example``, as a fraction of the largest |module| output value."""
    with torch.no_grad():
        reference = module(example).float()
    difference = (runtime(example) - reference).abs().max().item()
    return difference / max(reference.abs().max().item(), 1e-12)


CpuRuntime = "OrtModule | OpenVinoModule"


def load_runtime(model: bytes | str, precision: str = F32) -> CpuRuntime:
    """OpenVINO when installed and it loads the model (faster on the same file; docs/benchmarks.md), else ONNX
    Runtime (fp32 only)."""
    if openvino_available():
        try:
            return OpenVinoModule(model, precision=precision)
        except Exception as exc:  # OpenVINO raises its own types (a platform without its plugin, an unread op)
            log.warning("OpenVINO cannot run this model (%s: %s); ONNX Runtime runs it", type(exc).__name__, exc)
    return OrtModule(model)


def cpu_precision(bf16: bool) -> str:
    """bf16 only where the CPU multiplies it natively (AMX, AVX512-BF16) and a runtime computes it (OpenVINO);
    fp32 everywhere else."""
    return BF16 if bf16 and native_bf16_available() and openvino_available() else F32


def onnx_module(kind: str, title: str, module: torch.nn.Module, example: torch.Tensor, details: dict,
                notify: Notify, progress: Progress | None = None, precision: str = F32) -> CpuRuntime | None:
    """``module`` in a CPU runtime from the ONNX cache, exported first when missing or broken; None: use PyTorch.

    ``example``: a batch of inputs (checked image by image against PyTorch); ``details``: what else the export
    depends on beyond the weights (input size, layer), part of its fingerprint. ``progress`` shows an
    export as a stage of its own. ``precision`` bf16: checked against PyTorch within ``BF16_RTOL`` on every load.
    """
    module = module.eval()
    path = onnx_cache.export_path(kind, onnx_cache.fingerprint(module, kind, details))
    loaded = (kind, precision)
    if _LOADED.get(loaded, (None,))[0] == path:
        return _LOADED[loaded][1]
    problem = onnx_cache.problem(path)
    if problem is None:
        try:
            runtime = load_runtime(str(path), precision)
        except Exception as exc:  # the runtimes raise their own exception types for unreadable models
            problem = f"the CPU runtime cannot load it ({type(exc).__name__})"
        else:
            if runtime.input_shape == tuple(example[:1].shape):
                return _remember(loaded, path, _checked_precision(runtime, str(path), module, example[:1], title,
                                                                  notify))
            problem = f"it takes inputs of shape {runtime.input_shape}, not {tuple(example[:1].shape)}"
    if problem == "missing":
        notify(f"Preparing {title} for the CPU runtime (ONNX export, first use only, ~1 minute; "
               f"cached in {path.parent}).")
    else:
        notify(f"The cached ONNX export of {title} is broken ({problem}); exporting it again.")
    stage = f"export {title} to ONNX (first use)"
    try:
        if progress is not None:
            progress(stage, 0, 1)
        model = _export_bytes(module, example)
        runtime = load_runtime(model)
        difference = max_difference(runtime, module, example)
        if progress is not None:
            progress(stage, 1, 1)
    except Exception as exc:  # the exporter raises many types for ops it cannot translate
        notify(f"{title} could not be exported to ONNX ({type(exc).__name__}: {str(exc)[:120]}); "
               "it runs in PyTorch (same result, slower).")
        return None
    if not difference <= RTOL:
        notify(f"The ONNX export of {title} differs from PyTorch by {difference:.1e} (allowed {RTOL:.0e}); "
               "it runs in PyTorch instead.")
        return None
    if precision != F32:
        runtime = _checked_precision(load_runtime(model, precision), model, module, example, title, notify)
    try:
        onnx_cache.store(path, model, {"kind": kind, "max_relative_difference": difference, **details})
    except OSError as exc:
        notify(f"The ONNX export of {title} cannot be cached in {path.parent} ({exc.strerror or exc}); "
               "it is used for this session only.")
        return runtime
    return _remember(loaded, path, runtime)


def _checked_precision(runtime: CpuRuntime, model: bytes | str, module: torch.nn.Module, example: torch.Tensor,
                       title: str, notify: Notify) -> CpuRuntime:
    """A reduced-precision runtime checked against PyTorch (every process: a compiled form is not the file
    that was checked at export); out of ``BF16_RTOL``: the same model in fp32."""
    if getattr(runtime, "precision", F32) == F32:
        return runtime
    difference = max_difference(runtime, module, example)
    if difference <= BF16_RTOL:
        return runtime
    notify(f"{title} in bfloat16 differs from PyTorch by {difference:.1e} (allowed {BF16_RTOL:.0e}); "
           "it runs in fp32 instead.")
    return load_runtime(model)


_LOADED: dict[tuple[str, str], tuple] = {}
"""(kind, precision) -> (export path, runtime): one per kind, precision and process, like the loaded models."""


def _remember(loaded: tuple[str, str], path, runtime: CpuRuntime) -> CpuRuntime:
    _LOADED[loaded] = (path, runtime)
    return runtime


def sam_image_encoder(backend, notify: Notify, progress: Progress | None = None,
                      precision: str = F32) -> CpuRuntime | None:
    """A SamBackend's image encoder in the CPU runtime (None: PyTorch)."""
    size = backend.image_size
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    title = "LiteMedSAM's image encoder" if backend.name == "litemedsam" else f"SAM {backend.name}'s image encoder"
    return onnx_module(f"{backend.name}-encoder", title, backend.model.image_encoder, example, {"image_size": size},
                       notify, progress, precision)


class EncoderRuntime:
    """A pipeline's encoders in the CPU runtime, made (or read from the cache) once and reused across its runs;
    collects the lines to tell the user (``take_notes``)."""

    def __init__(self, progress: Progress | None = None):
        self.progress = progress
        self._notes: list[str] = []
        self._sam_source = self._sam_fast = None

    def notify(self, line: str) -> None:
        self._notes.append(line)

    def take_notes(self) -> list[str]:
        notes, self._notes = self._notes, []
        return notes

    def sam(self, backend, bf16: bool = False):
        """``backend`` with its image encoder in the CPU runtime (``backend`` itself when that fails);
        ``bf16``: in bfloat16 where that is fast (``cpu_precision``)."""
        source = (backend, cpu_precision(bf16))
        if self._sam_source != source:
            encoder = (sam_image_encoder(backend, self.notify, self.progress, source[1])
                       if backend.name in ONNX_SAM_BACKENDS else None)
            self._sam_source, self._sam_fast = source, backend.with_encoder(encoder) if encoder else backend
        return self._sam_fast
