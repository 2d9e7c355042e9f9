"""Final-mask agreement (DSC) of each CPU path with fp32, and its time, on the bundled sample and the dev data.

Not a test (slow; run by hand)::

    PYTHONPATH=$PWD python Testing/measure/cpu_agreement.py [DATA [ROW,ROW...]]

BiomedCLIP's architecture with random weights (its weights cannot be downloaded here), LiteMedSAM with its real weights,
``--fast`` settings. The first row is the reference: ``runtime`` torch, PyTorch fp32 everywhere.
"""
from __future__ import annotations

import contextlib
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from MedCLIPSAMLib.benchmark import label_dice
from MedCLIPSAMLib.imageio import read_volume
from MedCLIPSAMLib.models.random_clip import random_clip_in_memory
from MedCLIPSAMLib.models.sam import load_sam
from MedCLIPSAMLib.pipeline import Pipeline
from MedCLIPSAMLib.settings import FAST_SALIENCY, Settings

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data"
FOLDERS = (("brain_mri_tumor", "brain tumor"), ("breast_ultrasound", "breast tumor"), ("chest_xray_lungs", "lungs"))


def cases() -> list[tuple[str, Path, str]]:
    found = [("bundled sample brain1", ROOT / "Resources" / "Samples" / "brain1_image.nrrd", "brain tumor")]
    for folder, prompt in FOLDERS:
        images = [p for p in sorted((DATA / folder).glob("*.png")) if "_mask" not in p.name][:2]
        found += [(f"{folder}/{p.name}", p, prompt) for p in images]
    return found


@contextlib.contextmanager
def int8_clip_features(clip):
    """Blocks 0..L (L = 9) as torch.ao dynamic int8 for the duration (a measurement, not a pipeline option)."""
    blocks = clip.model.visual.trunk.blocks
    originals = list(blocks[:10])
    quantised = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(*copy.deepcopy(originals)),
                                                       {torch.nn.Linear}, dtype=torch.qint8)
    for index, block in enumerate(quantised):
        blocks[index] = block
    try:
        yield
    finally:
        for index, block in enumerate(originals):
            blocks[index] = block


@contextlib.contextmanager
def bf16_clip_features(clip):
    """Blocks 0..L (L = 9) from bfloat16 copies for the duration, their output back in fp32 (a measurement)."""
    from MedCLIPSAMLib.saliency import _bf16_copy

    blocks = clip.model.visual.trunk.blocks
    originals = list(blocks[:10])
    for index, block in enumerate(originals):
        blocks[index] = _AsBf16(_bf16_copy(block), last=index == 9)
    try:
        yield
    finally:
        for index, block in enumerate(originals):
            blocks[index] = block


class _AsBf16(torch.nn.Module):
    """A bf16 block between fp32 neighbours: casts its input down and, as the last one, its output back up."""

    def __init__(self, block: torch.nn.Module, last: bool):
        super().__init__()
        self.block, self.last = block, last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x.to(torch.bfloat16))
        return out.float() if self.last else out


def main() -> None:
    clip = random_clip_in_memory(Path(tempfile.mkdtemp()), "pubmedbert")
    sam = load_sam("litemedsam", None, "cpu")
    base = Settings(device="cpu", sam_backend="litemedsam", **FAST_SALIENCY)
    only = set(sys.argv[2].split(",")) if len(sys.argv) > 2 else None  # row names to run (the first always runs)
    configs = {"fp32 (runtime torch)": (base.replace(runtime="torch"), contextlib.nullcontext),
               "OpenVINO encoder, M2IB fp32 (--fp32)": (base.replace(bf16=False), contextlib.nullcontext),
               "default (M2IB bf16 where native)": (base, contextlib.nullcontext),
               "+ SAM encoder bf16": (base.replace(sam_encoder_bf16=True), contextlib.nullcontext),
               "+ CLIP features int8": (base, lambda: int8_clip_features(clip)),
               "+ CLIP features bf16": (base, lambda: bf16_clip_features(clip)),
               "+ flat skip cv 0.02": (base.replace(flat_saliency_cv=0.02), contextlib.nullcontext)}
    reference: dict[str, np.ndarray] = {}
    for position, (name, (settings, context)) in enumerate(configs.items()):
        if only is not None and position and not any(name.startswith(prefix) for prefix in only):
            continue
        pipeline = Pipeline(settings, clip=clip, sam=sam)
        dices, flat, wall, cpu = [], 0, time.perf_counter(), time.process_time()
        for label, path, prompt in cases():
            with context():
                result = pipeline.run(read_volume(path), prompt)
            flat += result.stage_slices.get("m2ib_flat_skipped", 0)
            reference.setdefault(label, result.labels)
            dices.append(label_dice(reference[label], result.labels))
        print(f"{name:38s} DSC vs fp32 min {min(dices):.4f} mean {np.mean(dices):.4f}  wall "
              f"{time.perf_counter() - wall:6.1f} s  CPU {time.process_time() - cpu:6.1f} s  flat-skipped {flat}",
              flush=True)


if __name__ == "__main__":
    main()
