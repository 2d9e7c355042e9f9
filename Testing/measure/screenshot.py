"""Make the Extensions Index screenshot from a real result placed in Slicer's MRML classes (slicer-core).

The brain MRI sample (Resources/Samples/brain1_*.nrrd) goes through the real pipeline: saliency ->
Otsu/components -> box prompts -> LiteMedSAM (real weights). BiomedCLIP's weights cannot be
downloaded here, so the saliency map is the oracle one (the expert mask at the CLIP token grid,
as ``medclipsam evaluate --oracle-saliency``); the caption says so. The result is applied with
``apply_result`` to a slicer-core scene, and the picture is drawn from what the nodes hold (the
segment exported back through Slicer, the overlay volume's voxels), as Slicer's three slice views.

    PYTHONPATH=. python Testing/measure/screenshot.py [--out Resources/Screenshots/MedCLIPSAM-brain-tumor.png]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "Resources" / "Screenshots" / "MedCLIPSAM-brain-tumor.png"))
    args = parser.parse_args()

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import slicer
    import vtk
    from vtk.util import numpy_support

    from MedCLIPSAMLib.imageio import read_volume
    from MedCLIPSAMLib.metrics import dice
    from MedCLIPSAMLib.models.random_clip import make_random_clip
    from MedCLIPSAMLib.pipeline import Pipeline
    from MedCLIPSAMLib.saliency import oracle_maps
    from MedCLIPSAMLib.settings import Settings
    from MedCLIPSAMLib.slicer.mrml import apply_result, array_from_volume, segment_to_array

    volume = read_volume(ROOT / "Resources" / "Samples" / "brain1_image.nrrd")
    truth = read_volume(ROOT / "Resources" / "Samples" / "brain1_label.nrrd").array > 0
    clip = Path(tempfile.mkdtemp(prefix="medclipsam_tiny_clip_"))
    make_random_clip(clip, size="tiny", seed=0)
    pipeline = Pipeline(Settings(clip_model=str(clip), device="cpu", sam_backend="litemedsam"))
    result = pipeline.run(volume, ["brain tumor"], saliency=[oracle_maps(truth)])

    scene = slicer.vtkMRMLScene()
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "brain1")
    image = vtk.vtkImageData()
    z, y, x = volume.array.shape
    image.SetDimensions(x, y, z)
    image.AllocateScalars(numpy_support.get_vtk_array_type(volume.array.dtype), 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = volume.array.ravel()
    node.SetAndObserveImageData(image)
    node.SetSpacing(*reversed(volume.spacing_zyx))
    record = apply_result(scene, node, result.masks, None, result.saliency)
    segmentation = scene.GetNodeByID(record.segmentation_node_id)
    segment = segmentation.GetSegmentation().GetSegment(record.segment_ids[0])
    mask = segment_to_array(segmentation, record.segment_ids[0], node).astype(bool)
    overlay = array_from_volume(scene.GetNodeByID(record.created_node_ids[0])).astype(np.float32) / 255
    grey = array_from_volume(node).astype(np.float32)
    score = dice(mask, truth)

    kc, jc, ic = (int(round(v)) for v in np.argwhere(mask).mean(axis=0))
    sz, sy, sx = volume.spacing_zyx
    views = [("Axial (Red)", grey[kc], overlay[kc], mask[kc], sx / sy),
             ("Coronal (Green)", grey[:, jc][::-1], overlay[:, jc][::-1], mask[:, jc][::-1], sz / sx),
             ("Sagittal (Yellow)", grey[:, :, ic][::-1], overlay[:, :, ic][::-1], mask[:, :, ic][::-1], sz / sy)]
    low, high = np.percentile(grey, (1, 99.5))
    color = segment.GetColor()
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.6), dpi=110, facecolor="black")
    for ax, (title, plane, heat, seg, aspect) in zip(axes, views):
        ax.imshow(plane, cmap="gray", vmin=low, vmax=high, aspect=aspect)
        ax.imshow(np.ma.masked_less(heat, 0.05), cmap="hot", vmin=0, vmax=1, alpha=0.4, aspect=aspect)
        if seg.any():
            ax.contour(seg, levels=[0.5], colors=[color], linewidths=1.6)
        ax.set_title(title, color="white", fontsize=10)
        ax.axis("off")
    fig.suptitle(f"MedCLIP-SAM: segment '{segment.GetName()}' and its saliency overlay, as the module adds them "
                 f"(DSC {score:.2f} vs. the expert mask)", color="white", fontsize=11)
    fig.text(0.5, 0.02, "Brain MRI sample; saliency from the expert mask at the CLIP token grid (BiomedCLIP weights "
             "were not available offline) -> boxes -> LiteMedSAM; drawn from the slicer-core MRML nodes.",
             color="#bbbbbb", fontsize=8, ha="center")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, facecolor="black", bbox_inches="tight")
    print(f"{out} (DSC {score:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
