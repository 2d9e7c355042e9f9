"""Each CPU stage alone in fp32, bf16 and int8: CPU seconds and error against fp32 (docs/cpu-speed.md).

    PYTHONPATH=$PWD python Testing/measure/cpu_stages.py

BiomedCLIP's architecture with random weights on 8 synthetic slices (M2IB: 10 steps x 3 samples, as --fast), and
LiteMedSAM's exported encoder from the model cache (run the benchmark once first to export it). bf16 here is forced
whatever the CPU has, to measure it; the pipeline takes it only where ``cpu_paths`` says.
"""
from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from MedCLIPSAMLib.benchmark import synthetic_volume
from MedCLIPSAMLib.imageio import normalize_intensity
from MedCLIPSAMLib.models import onnx_cache
from MedCLIPSAMLib.models.cpu_features import detect
from MedCLIPSAMLib.models.onnx_runtime import OrtModule
from MedCLIPSAMLib.models.openvino_runtime import OpenVinoModule
from MedCLIPSAMLib.models.random_clip import random_clip_in_memory
from MedCLIPSAMLib.models.sam import load_sam
from MedCLIPSAMLib.saliency import M2IB, M2IBConfig, _bf16_copy, clip_inputs

CPU = torch.device("cpu")


def cpu_seconds(fn, repeats: int = 1):
    """fn's result and its process CPU seconds per call (after one warm-up call)."""
    fn()
    start = time.process_time()
    for _ in range(repeats):
        out = fn()
    return out, (time.process_time() - start) / repeats


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def clip_stages() -> None:
    clip = random_clip_in_memory(Path(tempfile.mkdtemp()), "pubmedbert")
    images, _ = clip_inputs(normalize_intensity(synthetic_volume(8, 240)), clip, CPU)
    text = clip.encode_text(["brain tumor"], CPU)
    trunk = clip.model.visual.trunk
    m2ib = M2IB(clip, M2IBConfig(layer=9, steps=10, samples=3), CPU)

    def prefix(blocks, dtype=torch.float32):
        with torch.no_grad():
            x = trunk.norm_pre(trunk.patch_drop(trunk._pos_embed(trunk.patch_embed(images)))).to(dtype)
            for block in blocks:
                x = block(x)
            return x.float()

    int8 = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(*copy.deepcopy(list(trunk.blocks[:10]))),
                                                  {torch.nn.Linear}, dtype=torch.qint8)
    bf16 = [_bf16_copy(block) for block in trunk.blocks[:10]]
    tokens, fp32_s = cpu_seconds(lambda: prefix(trunk.blocks[:10]), 2)
    for name, fn in (("bf16", lambda: prefix(bf16, torch.bfloat16)), ("int8 dynamic", lambda: prefix(int8))):
        out, seconds = cpu_seconds(fn, 2)
        print(f"CLIP features {name:13s} {seconds / 8:.3f} CPU s/slice (fp32 {fp32_s / 8:.3f}), "
              f"tokens off by {relative(out, tokens):.1e}")
    reference, fp32_s = cpu_seconds(lambda: m2ib.saliency_from_prefix(tokens, text))
    m2ib.suffix_dtype, m2ib.suffix_blocks = torch.bfloat16, [_bf16_copy(b) for b in m2ib.suffix_blocks]
    maps, bf16_s = cpu_seconds(lambda: m2ib.saliency_from_prefix(tokens, text))
    correlation = np.corrcoef(reference.numpy().ravel(), maps.numpy().ravel())[0, 1]
    print(f"M2IB (8 slices) fp32 {fp32_s:.1f} CPU s, bf16 {bf16_s:.1f} CPU s ({bf16_s / fp32_s:.2f}x), "
          f"maps correlate to 1 - {1 - correlation:.1e}")


def sam_encoder() -> None:
    sam = load_sam("litemedsam", None, "cpu")
    paths = sorted(onnx_cache.export_folder().glob("litemedsam-encoder-*.onnx"))
    if not paths:
        print("LiteMedSAM's export is not in the cache: run `medclipsam benchmark --slices 1` once")
        return
    path = str(paths[-1])
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference, torch_s = cpu_seconds(lambda: sam.model.image_encoder(x), 4)
    print(f"LiteMedSAM encoder PyTorch fp32 {torch_s:.2f} CPU s/image")
    runtimes = {"OpenVINO fp32": OpenVinoModule(path), "OpenVINO bf16": OpenVinoModule(path, precision="bf16"),
                "ONNX Runtime fp32": OrtModule(path)}
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        int8 = Path(tempfile.mkdtemp()) / "encoder-int8.onnx"
        quantize_dynamic(path, str(int8), weight_type=QuantType.QInt8)
        runtimes["ONNX Runtime int8 dynamic"] = OrtModule(str(int8))
    except Exception as exc:  # a quantiser that cannot read the file is a result too
        print(f"int8 dynamic quantisation failed: {type(exc).__name__}: {exc}")
    for name, runtime in runtimes.items():
        out, seconds = cpu_seconds(lambda: runtime(x), 4)
        print(f"LiteMedSAM encoder {name:26s} {seconds:.2f} CPU s/image, off by {relative(out, reference):.1e}")


if __name__ == "__main__":
    torch.set_num_threads(2)
    print(f"CPU features: {detect().summary()} -> {detect().level}")
    clip_stages()
    sam_encoder()
