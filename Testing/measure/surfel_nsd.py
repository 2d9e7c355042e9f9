"""How our NSDs compare with the original surfel-based surface Dice (DeepMind's surface-distance code).

Needs the original code: `pip install surface-distance` (not a project dependency). Prints, on random
2D pairs, the largest difference of `--nsd-convention paper` (and of the earlier (H, W, 1) boundary-voxel
figure) from the original; on random 3D pairs and on brain1's expert mask against shifted, grown and
shrunk copies (its own spacing), the difference of our 3D boundary NSD and of our surfel NSD from it.
With --reference, prints the reference values hard-coded in Testing/Python/test_surfels.py.

    python Testing/measure/surfel_nsd.py [--pairs 200] [--data ../shared/data] [--reference]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from common import DEFAULT_DATA
from MedCLIPSAMLib.metrics import normalized_surface_dice, nsd_2d
from MedCLIPSAMLib.surfels import surfel_surface_dice

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Python"))

np.Inf = np.inf  # the original code predates NumPy 2 (only used where a mask is empty)
import surface_distance  # noqa: E402


def original(prediction: np.ndarray, truth: np.ndarray, tolerance: float, spacing) -> float:
    distances = surface_distance.compute_surface_distances(truth, prediction, spacing)
    return float(surface_distance.compute_surface_dice_at_tolerance(distances, tolerance))


def random_pair(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    smooth = rng.uniform(0.5, 4.0)
    fields = [ndimage.gaussian_filter(rng.random(shape), smooth) for _ in range(2)]
    return tuple(f > np.quantile(f, rng.uniform(0.4, 0.9)) for f in fields)


def print_reference() -> None:
    from test_surfels import REFERENCE_2D, REFERENCE_3D

    for name, (make, _) in sorted(REFERENCE_2D.items()):
        prediction, truth = make()
        print(f"{name!r}: {original(prediction[..., None], truth[..., None], 2.0, (1, 1, 1))!r}")
    make, spacing, _ = REFERENCE_3D
    print(f"3D at {spacing}: {original(*make(), 2.0, spacing)!r}")


def compare_2d(rng: np.random.Generator, pairs: int) -> None:
    paper, boundary_voxels, boundary = [], [], []
    for _ in range(pairs):
        prediction, truth = random_pair(rng, tuple(int(n) for n in rng.integers(8, 120, 2)))
        reference = original(prediction[..., None], truth[..., None], 2.0, (1, 1, 1))
        paper.append(abs(nsd_2d(prediction, truth, 2.0, "paper") - reference))
        boundary_voxels.append(abs(normalized_surface_dice(prediction[..., None], truth[..., None], 2.0) - reference))
        boundary.append(nsd_2d(prediction, truth, 2.0, "ours") - reference)
    print(f"2D, {pairs} random pairs, tolerance 2 px: |paper - original| max {max(paper):.2e}; the earlier "
          f"(H, W, 1) boundary-voxel figure: max {max(boundary_voxels):.4f}, mean {np.mean(boundary_voxels):.4f}; "
          f"ours (2D boundary) - original: mean {np.mean(boundary):+.4f}")


def report_3d(label: str, rows: list[tuple[float, float, float]]) -> None:
    ours = np.array([r[0] - r[2] for r in rows])
    surfel = np.array([abs(r[1] - r[2]) for r in rows])
    print(f"{label}: ours (boundary voxels) - original: mean {ours.mean():+.4f}, max |.| {np.abs(ours).max():.4f}; "
          f"|surfel - original| max {surfel.max():.2e}")


def compare_3d(rng: np.random.Generator, pairs: int, data: Path) -> None:
    rows = []
    for index in range(pairs):
        prediction, truth = random_pair(rng, tuple(int(n) for n in rng.integers(8, 40, 3)))
        spacing = tuple(float(s) for s in rng.uniform(0.5, 3.0, 3)) if index % 2 else (1.0, 1.0, 1.0)
        rows.append((normalized_surface_dice(prediction, truth, 2.0, spacing),
                     surfel_surface_dice(prediction, truth, 2.0, spacing), original(prediction, truth, 2.0, spacing)))
    report_3d(f"3D, {pairs} random pairs, tolerance 2 mm, spacing (1, 1, 1) or random in [0.5, 3]", rows)
    label_path = data / "volumes" / "brain1_label.nrrd"
    if not label_path.exists():
        print(f"(no {label_path}: brain1 rows skipped)")
        return
    from MedCLIPSAMLib.imageio import read_volume

    volume = read_volume(label_path)
    truth, spacing = volume.array > 0, volume.spacing_zyx
    variants = {"shift 1 (z)": np.roll(truth, 1, 0), "shift 2 (x)": np.roll(truth, 2, 2),
                "shift 3 (y)": np.roll(truth, 3, 1), "grown 1": ndimage.binary_dilation(truth),
                "grown 2": ndimage.binary_dilation(truth, iterations=2), "shrunk 1": ndimage.binary_erosion(truth)}
    rows = []
    for name, prediction in variants.items():
        row = (normalized_surface_dice(prediction, truth, 2.0, spacing),
               surfel_surface_dice(prediction, truth, 2.0, spacing), original(prediction, truth, 2.0, spacing))
        rows.append(row)
        print(f"  brain1 {name:12s} ours {row[0]:.4f}  surfel {row[1]:.4f}  original {row[2]:.4f}")
    report_3d(f"brain1 expert mask {truth.shape} at spacing {tuple(round(s, 3) for s in spacing)} vs 6 variants", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=200, help="random pairs in 2D (a fifth as many in 3D)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="the evaluation data folder (for brain1)")
    parser.add_argument("--reference", action="store_true", help="print test_surfels.py's reference values")
    args = parser.parse_args()
    if args.reference:
        print_reference()
        return
    rng = np.random.default_rng(0)
    compare_2d(rng, args.pairs)
    compare_3d(rng, max(1, args.pairs // 5), Path(args.data))


if __name__ == "__main__":
    main()
