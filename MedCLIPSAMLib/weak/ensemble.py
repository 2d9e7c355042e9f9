"""`medclipsam nnunet-predict`: checkpoint ensembling with per-voxel uncertainty.

For every snapshot checkpoint nnU-Net's own predictor returns softmax probabilities; their mean
gives the mask (argmax; the authors threshold the foreground mean at 0.2 instead), the mean
foreground probability, and the entropy of the mean in bits. All three are written with the
input image's geometry, plus a CSV of per-case uncertainty scores.
"""
from __future__ import annotations

import argparse
import csv
from io import StringIO
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..outputs import add_output_option, add_overwrite_option, check_output, write_image, write_text


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


OUTPUT_SUFFIXES = ("", "_probability", "_entropy")
"""Per case: the mask, the mean foreground probability and the entropy, each <case><suffix>.nii.gz."""
UNCERTAINTY_SEG_SUFFIX = "_uncertainty.dcm"
"""Per DICOM case, also: the entropy (scaled to [0, 1]) as a FRACTIONAL SEG referring to the source images."""


def case_name(image: Path) -> str:
    return image.name.split(".")[0].removesuffix("_0000")


def prediction_outputs(images: list[Path], out: Path, overwrite: bool) -> dict[Path, list[Path]]:
    """Every file a prediction will write, checked before nnU-Net loads: per image its three maps, plus
    uncertainty.csv; two images of one case name would write the same files."""
    names = [case_name(image) for image in images]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"Several images are named case '{twice[0]}'; their outputs would collide. Rename them.")
    from ..dicom.series import is_dicom_source

    planned = {image: [out / f"{name}{suffix}.nii.gz" for suffix in OUTPUT_SUFFIXES]
               + ([out / f"{name}{UNCERTAINTY_SEG_SUFFIX}"] if is_dicom_source(image) else [])
               for image, name in zip(images, names)}
    for path in [*(p for paths in planned.values() for p in paths), out / "uncertainty.csv"]:
        check_output(path, "--out", overwrite, images, extensions=None)
    return planned


def _write_like(array: np.ndarray, reference: sitk.Image, path: Path, overwrite: bool) -> None:
    data = array.reshape(sitk.GetArrayViewFromImage(reference).shape)
    image = sitk.GetImageFromArray(data)
    image.CopyInformation(reference)
    write_image(image, path, overwrite)


def _as_nifti(image: Path, folder: Path) -> tuple[Path, object]:
    """(what nnU-Net reads, the ``imageio.Volume`` of a DICOM source or None): a DICOM file or series is read by
    our reader (its checks) and handed to nnU-Net as NIfTI on the same grid."""
    from ..dicom.series import is_dicom_source
    from ..imageio import read_volume

    if not is_dicom_source(image):
        return image, None
    volume = read_volume(image)
    path = folder / f"{case_name(image)}_0000.nii.gz"
    sitk.WriteImage(volume.reference, str(path))
    return path, volume


def foreground_name(model_folder: Path) -> str:
    """The model's first foreground label (dataset.json), to name the uncertainty SEG's segment."""
    import json

    try:
        labels = json.loads((model_folder / "dataset.json").read_text()).get("labels", {})
    except (OSError, ValueError):
        labels = {}
    names = [name for name, value in labels.items() if value not in (0, "0")]
    return names[0] if names else "foreground"


def write_uncertainty_seg(path: Path, entropy: np.ndarray, classes: int, volume, name: str, overwrite: bool) -> None:
    """The entropy in bits over ``classes`` classes, scaled by its maximum log2(classes) into [0, 1]."""
    from ..dicom.seg import write_maps_seg

    scaled = np.clip(entropy / np.log2(max(classes, 2)), 0.0, 1.0).reshape(volume.array.shape)
    write_maps_seg(path, {name: scaled}, volume, kind="uncertainty", overwrite=overwrite)


def snapshot_agreement(packed_masks: list[np.ndarray]) -> float:
    """Mean pairwise Dice between the snapshots' own masks: 1.0 means the ensemble is one model repeated."""
    from itertools import combinations

    if len(packed_masks) < 2:
        return 1.0
    counts = [int(np.unpackbits(m).sum()) for m in packed_masks]
    scores = []
    for (a, count_a), (b, count_b) in combinations(zip(packed_masks, counts), 2):
        overlap = int(np.unpackbits(a & b).sum())
        scores.append(1.0 if count_a + count_b == 0 else 2 * overlap / (count_a + count_b))
    return float(np.mean(scores))


def predict_ensemble(model_folder: Path, images: list[Path], out: Path, fold: int = 0, device: str = "cpu",
                     checkpoints: list[Path] | None = None, overwrite: bool = False) -> list[dict]:
    """Mean probabilities over snapshot checkpoints for each image; returns the per-case scores.

    Device, checkpoints, images and outputs are all checked before nnU-Net loads a model."""
    import torch
    from ..imageio import read_size
    from ..pipeline import resolve_device

    resolve_device(device)
    checkpoints = checkpoints or snapshots(model_folder / f"fold_{fold}")
    planned = prediction_outputs(images, out, overwrite)
    for image in images:
        if not Path(image).is_dir():  # a DICOM series folder is read (and checked) below, before any model
            read_size(image)
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from .train import add_trainer_folder

    add_trainer_folder()  # nnU-Net finds the trainer class by name, for prediction as for training
    out.mkdir(parents=True, exist_ok=True)
    import tempfile

    io = SimpleITKIO()
    with tempfile.TemporaryDirectory(prefix="medclipsam-predict-") as tmp:
        converted = [_as_nifti(p, Path(tmp)) for p in images]
        inputs = [io.read_images([str(p)]) for p, _ in converted]
        references = [volume.reference if volume is not None else sitk.ReadImage(str(p))
                      for (_, volume), p in zip(converted, images)]
    sums: list[np.ndarray | None] = [None] * len(images)
    votes: list[list[np.ndarray]] = [[] for _ in images]  # each snapshot's own mask, bit-packed
    for checkpoint in checkpoints:
        predictor = nnUNetPredictor(device=torch.device(device), allow_tqdm=False, perform_everything_on_device=False)
        predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=(fold,),
                                                       checkpoint_name=checkpoint.name)
        for i, (data, properties) in enumerate(inputs):
            _, probabilities = predictor.predict_single_npy_array(data, properties, None, None, True)
            sums[i] = probabilities.astype(np.float64) if sums[i] is None else sums[i] + probabilities
            votes[i].append(np.packbits(probabilities.argmax(axis=0) > 0))
    rows = []
    for path, total, case_votes, reference, (_, volume) in zip(images, sums, votes, references, converted):
        mean = total / len(checkpoints)
        mask = mean.argmax(axis=0).astype(np.uint8)
        entropy = entropy_bits(mean)
        for array, target in zip((mask, mean[1].astype(np.float32), entropy), planned[path]):
            _write_like(array, reference, target, overwrite)
        if volume is not None:
            write_uncertainty_seg(planned[path][3], entropy, mean.shape[0], volume, foreground_name(model_folder),
                                  overwrite)
        rows.append({"case": case_name(path), "checkpoints": len(checkpoints), "mean_entropy_bits": float(entropy.mean()),
                     "max_entropy_bits": float(entropy.max()),
                     "foreground_entropy_bits": float(entropy[mask > 0].mean()) if mask.any() else 0.0,
                     "foreground_voxels": int(mask.sum()), "snapshot_agreement_dsc": snapshot_agreement(case_votes)})
    table = StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "uncertainty.csv", table.getvalue(), overwrite)
    return rows


def register_cli(sub: argparse._SubParsersAction) -> None:
    from ..options import at_least

    parser = sub.add_parser("nnunet-predict", help="checkpoint-ensembled nnU-Net prediction with entropy maps")
    parser.add_argument("model", help="trained model folder (.../nnUNetTrainerCyclicLR__nnUNetPlans__2d)")
    parser.add_argument("images", nargs="+", help="input images (one channel each): files or DICOM series folders")
    add_output_option(parser, "--out", kind="folder", required=True,
                      help="folder for <case>.nii.gz, <case>_probability/_entropy.nii.gz and uncertainty.csv "
                      "(and <case>_uncertainty.dcm, a FRACTIONAL DICOM SEG, for a DICOM file or series)")
    parser.add_argument("--fold", type=at_least(0, 4), default=0)
    parser.add_argument("--device", default="cpu")
    add_overwrite_option(parser)
    parser.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    rows = predict_ensemble(Path(args.model), [Path(p) for p in args.images], Path(args.out), args.fold, args.device,
                            overwrite=args.overwrite)
    for row in rows:
        print(f"{row['case']}: {row['checkpoints']} checkpoints, mean entropy {row['mean_entropy_bits']:.4f} bits, "
              f"foreground {row['foreground_voxels']} voxels")
    return 0
