"""Inference-only encoders in ONNX Runtime on a CPU: LiteMedSAM's image encoder.

On this 2-core CPU ONNX Runtime runs LiteMedSAM's encoder about 2x faster than PyTorch (its
many small window-attention ops cost PyTorch more in overhead than in arithmetic; README,
Speed). Each encoder is exported at first use into the model cache (``onnx_cache``: atomic
writes, a damaged file rebuilt) and checked against PyTorch on an example input before it is
used: the largest difference must stay within ``RTOL`` of the largest output value.

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

RTOL = 1e-4
"""Largest |ONNX Runtime - PyTorch| allowed, as a fraction of the largest |PyTorch| output value
(measured: LiteMedSAM encoder 1e-6)."""
Notify = Callable[[str], None]
"""Receives one line for the user (an export started, a broken one rebuilt, a fallback to PyTorch)."""
Progress = Callable[[str, int, int], None]
ONNX_SAM_BACKENDS = ("litemedsam",)
"""Measured and tested. SAM ViT exports would be 0.4-2.5 GB (ViT-H beyond protobuf's 2 GB): not measured, PyTorch."""


@functools.lru_cache(maxsize=1)
def runtime_available() -> bool:
    """onnxruntime to run, onnxscript and onnx to export (torch's exporter needs both)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnxscript", "onnx"))


class OrtModule:
    """An exported module run by ONNX Runtime, called like the PyTorch module it replaces (tensor in and out).

    Exports take one image (TinyViT's code fixes the batch size when traced), so a batch runs image by
    image: on a CPU that is as fast per image (LiteMedSAM's encoder measured faster singly, README).
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


def onnx_module(kind: str, title: str, module: torch.nn.Module, example: torch.Tensor, details: dict,
                notify: Notify, progress: Progress | None = None) -> OrtModule | None:
    """``module`` in ONNX Runtime from the cache, exported first when missing or broken; None: use PyTorch.

    ``example``: a batch of inputs (checked image by image against PyTorch); ``details``: what else the export
    depends on beyond the weights (input size, layer), part of its fingerprint. ``progress`` shows an
    export as a stage of its own.
    """
    module = module.eval()
    path = onnx_cache.export_path(kind, onnx_cache.fingerprint(module, kind, details))
    if _LOADED.get(kind, (None,))[0] == path:
        return _LOADED[kind][1]
    problem = onnx_cache.problem(path)
    if problem is None:
        try:
            runtime = OrtModule(str(path))
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            problem = f"ONNX Runtime cannot load it ({type(exc).__name__})"
        else:
            if runtime.input_shape == tuple(example[:1].shape):
                return _remember(kind, path, runtime)
            problem = f"it takes inputs of shape {runtime.input_shape}, not {tuple(example[:1].shape)}"
    if problem == "missing":
        notify(f"Preparing {title} for ONNX Runtime (first use only, ~1 minute; cached in {path.parent}).")
    else:
        notify(f"The cached ONNX export of {title} is broken ({problem}); exporting it again.")
    stage = f"export {title} to ONNX (first use)"
    try:
        if progress is not None:
            progress(stage, 0, 1)
        model = _export_bytes(module, example)
        runtime = OrtModule(model)
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
    try:
        onnx_cache.store(path, model, {"kind": kind, "max_relative_difference": difference, **details})
    except OSError as exc:
        notify(f"The ONNX export of {title} cannot be cached in {path.parent} ({exc.strerror or exc}); "
               "it is used for this session only.")
        return runtime
    return _remember(kind, path, runtime)


_LOADED: dict[str, tuple] = {}
"""kind -> (export path, OrtModule): one session per kind and process, like the loaded models."""


def _remember(kind: str, path, runtime: OrtModule) -> OrtModule:
    _LOADED[kind] = (path, runtime)
    return runtime


def sam_image_encoder(backend, notify: Notify, progress: Progress | None = None) -> OrtModule | None:
    """A SamBackend's image encoder in ONNX Runtime (None: PyTorch)."""
    size = backend.image_size
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    title = "LiteMedSAM's image encoder" if backend.name == "litemedsam" else f"SAM {backend.name}'s image encoder"
    return onnx_module(f"{backend.name}-encoder", title, backend.model.image_encoder, example, {"image_size": size},
                       notify, progress)


class EncoderRuntime:
    """A pipeline's encoders in ONNX Runtime, made (or read from the cache) once and reused across its runs;
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

    def sam(self, backend):
        """``backend`` with its image encoder in ONNX Runtime (``backend`` itself when that fails)."""
        if self._sam_source is not backend:
            encoder = (sam_image_encoder(backend, self.notify, self.progress) if backend.name in ONNX_SAM_BACKENDS
                       else None)
            self._sam_source, self._sam_fast = backend, backend.with_encoder(encoder) if encoder else backend
        return self._sam_fast
