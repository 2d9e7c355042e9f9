"""One Slicer segmentation run, split by thread: read (main), compute (worker), apply (main).

MRML nodes are only touched on the main thread: ``read_input`` copies the voxels out,
``compute`` runs the engine on that copy (safe in a worker thread, cancellable), and
``apply`` writes everything back in one all-or-nothing step. A cancelled or failed
compute therefore never changes the scene.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import vtk

from .imageio import Volume, as_volume, luminance
from .mrml import RunRecord, apply_result, array_from_volume, spacing_kji
from .pipeline import Pipeline, ProgressCallback, SegmentationResult
from .settings import Settings


@dataclass
class Request:
    """What the panel asks for."""

    prompts: list[str]
    settings: Settings = field(default_factory=Settings)
    show_saliency: bool = True
    replace_segments: bool = False


def read_input(volume_node) -> Volume:
    """The volume's voxels and spacing in (k, j, i) order (main thread)."""
    array = array_from_volume(volume_node)
    if array.ndim == 4:
        array = luminance(array)
    return as_volume(array, spacing=spacing_kji(volume_node))


def view_slice(volume_node, slice_to_ras: vtk.vtkMatrix4x4) -> tuple[int, int]:
    """(axis in k, j, i order, index) of the volume slice a slice view shows.

    The axis is the volume axis most parallel to the view's normal, so it also works for
    volumes acquired obliquely or in another orientation than the view.
    """
    ras_to_ijk = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(ras_to_ijk)
    center = ras_to_ijk.MultiplyPoint([slice_to_ras.GetElement(r, 3) for r in range(3)] + [1.0])[:3]
    normal = ras_to_ijk.MultiplyPoint([slice_to_ras.GetElement(r, 2) for r in range(3)] + [0.0])[:3]
    ijk_axis = int(np.argmax(np.abs(normal)))
    dims = volume_node.GetImageData().GetDimensions()
    index = int(np.clip(round(center[ijk_axis]), 0, dims[ijk_axis] - 1))
    return 2 - ijk_axis, index


def compute(volume: Volume, request: Request, progress: ProgressCallback | None = None,
            cancel: threading.Event | None = None, pipeline: Pipeline | None = None) -> SegmentationResult:
    """The engine run (worker thread); touches no MRML node."""
    pipeline = pipeline or Pipeline(request.settings, progress=progress, cancel=cancel)
    pipeline.settings = request.settings
    return pipeline.run(volume, request.prompts, progress, cancel)


def apply(scene, volume_node, result: SegmentationResult, request: Request, segmentation_node=None) -> RunRecord:
    """Write the result into the scene (main thread), all or nothing."""
    saliency = result.saliency if request.show_saliency else None
    return apply_result(scene, volume_node, result.masks, segmentation_node, saliency, request.replace_segments)
