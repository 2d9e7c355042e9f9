"""What the measurement scripts share: where the evaluation data is, and one-line errors for wrong names."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Iterable

DEFAULT_DATA = Path(os.environ.get("MEDCLIPSAM_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")
"""``../shared/data`` beside the checkout (as the tests look for it), or $MEDCLIPSAM_DATA."""


def measure_parser(doc: str, default_sets: str) -> argparse.ArgumentParser:
    """The options every measurement script has: --data, --sets and --out (a CSV of every case's figures)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="the evaluation data folder (breast_ultrasound, chest_xray_lungs, brain_mri_tumor, "
                             "volumes); default ../shared/data beside the checkout, or $MEDCLIPSAM_DATA")
    parser.add_argument("--sets", default=default_sets, help="data sets, comma-separated")
    parser.add_argument("--out", required=True, help="CSV of every case's figures")
    return parser


def data_and_sets(args: argparse.Namespace, known: Iterable[str]) -> tuple[Path, list[str]]:
    """The checked --data folder and --sets names."""
    return checked_data(args.data), checked_names(args.sets, known, "--sets")


def checked_data(folder: str) -> Path:
    path = Path(folder)
    if not path.is_dir():
        raise SystemExit(f"error: no evaluation data at '{path}'; pass --data FOLDER (the folder holding "
                         "breast_ultrasound, chest_xray_lungs, brain_mri_tumor and volumes).")
    return path


def checked_names(given: str, known: Iterable[str], option: str) -> list[str]:
    """The comma-separated names of an option, each one known."""
    known = list(known)
    names = [name.strip() for name in given.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise SystemExit(f"error: {option} '{given}' names {', '.join(unknown) or 'nothing'} that is not known; "
                         f"choose from: {', '.join(known)}.")
    return names
