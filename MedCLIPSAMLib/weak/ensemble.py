"""`medclipsam nnunet-predict`: checkpoint ensembling with per-voxel uncertainty.

For every snapshot checkpoint nnU-Net's own predictor returns softmax probabilities; their mean
gives the mask (argmax; the authors threshold the foreground mean at 0.2 instead), the mean
foreground probability, and the entropy of the mean in bits. All three are written with the
input image's geometry, plus a CSV of per-case uncertainty scores.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError


def entropy_bits(probabilities: np.ndarray, axis: int = 0) -> np.ndarray:
    """Shannon entropy (bits) over the class axis; 0 log 0 counts as 0, so never NaN."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
    return terms.sum(axis=axis).astype(np.float32)


def snapshots(fold_folder: Path) -> list[Path]:
    found = sorted(fold_folder.glob("checkpoint_cycle*_epoch*.pth"))
    if not found:
        raise InputError(f"No snapshot checkpoints (checkpoint_cycle*_epoch*.pth) in {fold_folder}.")
    return found


def _write_like(array: np.ndarray, reference: sitk.Image, path: Path) -> None:
    data = array.reshape(sitk.GetArrayViewFromImage(reference).shape)
    image = sitk.GetImageFromArray(data)
    image.CopyInformation(reference)
    sitk.WriteImage(image, str(path), useCompression=True)


def predict_ensemble(model_folder: Path, images: list[Path], out: Path, fold: int = 0, device: str = "cpu",
                     checkpoints: list[Path] | None = None) -> list[dict]:
    """Mean probabilities over snapshot checkpoints for each image; returns the per-case scores."""
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from .train import add_trainer_folder

    add_trainer_folder()  # nnU-Net finds the trainer class by name, for prediction as for training
    checkpoints = checkpoints or snapshots(model_folder / f"fold_{fold}")
    out.mkdir(parents=True, exist_ok=True)
    io = SimpleITKIO()
    inputs = [io.read_images([str(p)]) for p in images]
    sums: list[np.ndarray | None] = [None] * len(images)
    for checkpoint in checkpoints:
        predictor = nnUNetPredictor(device=torch.device(device), allow_tqdm=False, perform_everything_on_device=False)
        predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=(fold,),
                                                       checkpoint_name=checkpoint.name)
        for i, (data, properties) in enumerate(inputs):
            _, probabilities = predictor.predict_single_npy_array(data, properties, None, None, True)
            sums[i] = probabilities.astype(np.float64) if sums[i] is None else sums[i] + probabilities
    rows = []
    for path, total in zip(images, sums):
        mean = total / len(checkpoints)
        case = path.name.split(".")[0].removesuffix("_0000")
        reference = sitk.ReadImage(str(path))
        mask = mean.argmax(axis=0).astype(np.uint8)
        entropy = entropy_bits(mean)
        _write_like(mask, reference, out / f"{case}.nii.gz")
        _write_like(mean[1].astype(np.float32), reference, out / f"{case}_probability.nii.gz")
        _write_like(entropy, reference, out / f"{case}_entropy.nii.gz")
        rows.append({"case": case, "checkpoints": len(checkpoints), "mean_entropy_bits": float(entropy.mean()),
                     "max_entropy_bits": float(entropy.max()),
                     "foreground_entropy_bits": float(entropy[mask > 0].mean()) if mask.any() else 0.0,
                     "foreground_voxels": int(mask.sum())})
    with (out / "uncertainty.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def register_cli(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("nnunet-predict", help="checkpoint-ensembled nnU-Net prediction with entropy maps")
    parser.add_argument("model", help="trained model folder (.../nnUNetTrainerCyclicLR__nnUNetPlans__2d)")
    parser.add_argument("images", nargs="+", help="input images (one channel each)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    rows = predict_ensemble(Path(args.model), [Path(p) for p in args.images], Path(args.out), args.fold, args.device)
    for row in rows:
        print(f"{row['case']}: {row['checkpoints']} checkpoints, mean entropy {row['mean_entropy_bits']:.4f} bits, "
              f"foreground {row['foreground_voxels']} voxels")
    return 0
