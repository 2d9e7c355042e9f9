"""`medclipsam nnunet-train`: plan, preprocess and train nnU-Net v2 with the cyclic-LR trainer.

Everything goes through nnunetv2's Python API (no copy of nnU-Net's code); the trainer is
found through ``nnUNet_extTrainer``. Environment knobs are set here, before nnU-Net reads them.
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, OptionError
from ..outputs import add_output_option, add_overwrite_option
from .schedule import SCHEDULES, cycle_length

TRAINER = "nnUNetTrainerCyclicLR"
TRAINER_FOLDER = Path(__file__).resolve().parent / "trainers"


@dataclass
class NnunetPaths:
    raw: Path
    preprocessed: Path
    results: Path

    def export(self) -> None:
        """nnU-Net reads its folders from the environment."""
        for name, path in (("nnUNet_raw", self.raw), ("nnUNet_preprocessed", self.preprocessed),
                           ("nnUNet_results", self.results)):
            path.mkdir(parents=True, exist_ok=True)
            os.environ[name] = str(path)
        add_trainer_folder()


def add_trainer_folder() -> None:
    """Put our trainer's folder first in ``nnUNet_extTrainer``, keeping the user's own folders after it."""
    existing = os.environ.get("nnUNet_extTrainer", "")
    if str(TRAINER_FOLDER) not in existing.split(os.pathsep):
        os.environ["nnUNet_extTrainer"] = os.pathsep.join(p for p in (str(TRAINER_FOLDER), existing) if p)


def dataset_id_of(raw: Path, dataset: str | int) -> int:
    text = str(dataset)
    if text.isdigit():
        return int(text)
    if text.startswith("Dataset") and text[7:10].isdigit():
        return int(text[7:10])
    raise InputError(f"'{dataset}' is not a dataset id or a Dataset<NNN>_<Name> folder name.")


def check_schedule(epochs: int, cycles: int, keep_last: int) -> None:
    """The cycles fit in the epochs and the snapshots in a cycle."""
    length = cycle_length(epochs, cycles)
    if not 1 <= keep_last <= length:
        raise OptionError(f"--keep-last must be between 1 and the cycle length {length}.")


def set_trainer_knobs(epochs: int, cycles: int, keep_last: int, lr: float, iterations: int,
                      val_iterations: int, schedule: str = "authors") -> None:
    """Pass the schedule to the trainer (nnU-Net builds it itself), after checking it fits together."""
    check_schedule(epochs, cycles, keep_last)
    if schedule not in SCHEDULES:
        raise OptionError(f"Unknown --schedule '{schedule}'; choose one of: {', '.join(SCHEDULES)}.")
    os.environ.update({"MEDCLIPSAM_NNUNET_EPOCHS": str(epochs), "MEDCLIPSAM_NNUNET_CYCLES": str(cycles),
                       "MEDCLIPSAM_NNUNET_KEEP_LAST": str(keep_last), "MEDCLIPSAM_NNUNET_LR": str(lr),
                       "MEDCLIPSAM_NNUNET_ITERATIONS": str(iterations),
                       "MEDCLIPSAM_NNUNET_VAL_ITERATIONS": str(val_iterations), "MEDCLIPSAM_NNUNET_SCHEDULE": schedule})


def raw_dataset(raw: Path, dataset_id: int) -> Path:
    """The raw dataset folder nnU-Net will read, checked before anything is planned or written."""
    found = sorted(raw.glob(f"Dataset{dataset_id:03d}_*"))
    if not found or not (found[0] / "dataset.json").is_file():
        raise InputError(f"No nnU-Net dataset {dataset_id} (Dataset{dataset_id:03d}_<Name>/dataset.json) in '{raw}'; "
                         "add cases with medclipsam nnunet-export first.")
    return found[0]


def clear_earlier_training(paths: NnunetPaths, dataset_folder: Path, configuration: str, fold: int,
                           overwrite: bool) -> None:
    """nnU-Net would write over an earlier training of this fold, and old snapshots would join the new
    ensemble: refused unless --overwrite, which removes the old snapshots first."""
    fold_folder = (paths.results / dataset_folder.name / f"{TRAINER}__nnUNetPlans__{configuration}"
                   / f"fold_{fold}")
    earlier = sorted(fold_folder.glob("checkpoint*.pth")) if fold_folder.is_dir() else []
    if earlier and not overwrite:
        raise InputError(f"'{fold_folder}' already holds a trained model ({earlier[0].name}); pass --overwrite to "
                         "train it again (its checkpoints are replaced) or choose another --results folder.")
    for old in earlier:
        old.unlink()


def train_nnunet(paths: NnunetPaths, dataset: str | int, configuration: str = "2d", epochs: int = 600,
                 cycles: int = 3, keep_last: int = 10, lr: float = 1e-2, iterations: int = 250,
                 val_iterations: int = 50, fold: int = 0, device: str = "cuda", processes: int = 2,
                 schedule: str = "authors", overwrite: bool = False) -> Path:
    """Train and return the model folder holding the snapshot checkpoints; everything is checked first."""
    import torch

    from ..pipeline import resolve_device

    check_schedule(epochs, cycles, keep_last)
    resolve_device(device)
    dataset_id = dataset_id_of(paths.raw, dataset)
    clear_earlier_training(paths, raw_dataset(paths.raw, dataset_id), configuration, fold, overwrite)
    set_trainer_knobs(epochs, cycles, keep_last, lr, iterations, val_iterations, schedule)
    paths.export()
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                     preprocess)
    from nnunetv2.run.run_training import run_training

    extract_fingerprints([dataset_id], num_processes=processes, check_dataset_integrity=True, verbose=False)
    plan_experiments([dataset_id])
    preprocess([dataset_id], configurations=(configuration,), num_processes=(processes,), verbose=False)
    os.environ.setdefault("nnUNet_n_proc_DA", str(processes))  # only after planning (it breaks planning)
    run_training(str(dataset_id), configuration, fold, trainer_class_name=TRAINER, device=torch.device(device))
    return model_folder(paths, dataset_id, configuration)


def model_folder(paths: NnunetPaths, dataset_id: int, configuration: str) -> Path:
    matches = sorted(paths.results.glob(f"Dataset{dataset_id:03d}_*/{TRAINER}__nnUNetPlans__{configuration}"))
    if not matches:
        raise InputError(f"No trained {TRAINER} model for dataset {dataset_id} ({configuration}) in {paths.results}.")
    return matches[0]


def register_cli(sub: argparse._SubParsersAction) -> None:
    from ..options import at_least, number

    parser = sub.add_parser("nnunet-train", help="train nnU-Net v2 with a cyclic LR and snapshot checkpoints")
    parser.add_argument("dataset", help="dataset id or Dataset<NNN>_<Name>")
    parser.add_argument("--raw", required=True, help="nnU-Net raw folder (holds Dataset<NNN>_<Name>)")
    parser.add_argument("--preprocessed", required=True, help="nnU-Net's preprocessed data (recomputed each run)")
    add_output_option(parser, "--results", kind="folder", required=True, help="folder for the trained model")
    parser.add_argument("--config", default="2d", choices=["2d", "3d_fullres", "3d_lowres"])
    parser.add_argument("--epochs", type=at_least(1), default=600)
    parser.add_argument("--cycles", type=at_least(1), default=3)
    parser.add_argument("--keep-last", type=at_least(1), default=10,
                        help="snapshots over the last N epochs of each cycle")
    parser.add_argument("--lr", type=number(0, low_open=True), default=1e-2)
    parser.add_argument("--schedule", default="authors", choices=SCHEDULES,
                        help="authors: each cycle restarts, decays over the whole run and holds from 80%% of the "
                             "cycle (snapshots at ~0.76 lr); restart: poly over each cycle (snapshots near lr 0)")
    parser.add_argument("--iterations", type=at_least(1), default=250, help="training iterations per epoch")
    parser.add_argument("--val-iterations", type=at_least(1), default=50)
    parser.add_argument("--fold", type=at_least(0, 4), default=0)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--processes", type=at_least(1), default=2)
    add_overwrite_option(parser, "training of this fold (its checkpoints)")
    parser.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    folder = train_nnunet(NnunetPaths(Path(args.raw), Path(args.preprocessed), Path(args.results)), args.dataset,
                          args.config, args.epochs, args.cycles, args.keep_last, args.lr, args.iterations,
                          args.val_iterations, args.fold, args.device, args.processes, args.schedule,
                          args.overwrite)
    snapshots = sorted((folder / f"fold_{args.fold}").glob("checkpoint_cycle*_epoch*.pth"))
    print(f"trained in {time.perf_counter() - start:.0f} s; {len(snapshots)} snapshot checkpoints in "
          f"{folder / f'fold_{args.fold}'}")
    return 0
