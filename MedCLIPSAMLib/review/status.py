"""`medclipsam review-status DATASET`: how far the review is, and how much the zero-shot labels needed fixing.

Counts cases by review state (pending ones by their labels.csv status) and, for accepted cases, compares
the kept pseudo-label with the accepted label in labelsTr, read from disk (DSC, voxels changed), so the
figures hold even if a file was replaced by hand after the review.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..metrics import dice
from ..outputs import add_output_option, add_overwrite_option, check_output, check_outside, write_json
from ..weak.export import case_paths, read_dataset_json
from .queue import open_dataset
from ..review_state import ACCEPTED, EXCLUDED, INTERRUPTED, pseudo_path

STATES = ("pending", ACCEPTED, EXCLUDED, "interrupted")


def _mask(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0


def compare_case(folder: Path, case: str) -> dict[str, Any]:
    """DSC and changed voxels between a case's kept pseudo-label and its accepted label."""
    pseudo, accepted = pseudo_path(folder, case), case_paths(folder, case)[1]
    missing = [str(p) for p in (pseudo, accepted) if not p.is_file()]
    if missing:
        return {"case": case, "missing": missing}
    before, after = _mask(pseudo), _mask(accepted)
    if before.shape != after.shape:
        return {"case": case, "missing": [f"{pseudo} has shape {before.shape}, {accepted} {after.shape}"]}
    changed = int(np.count_nonzero(before != after))
    return {"case": case, "dsc": round(dice(before, after), 6), "changed_voxels": changed,
            "pseudo_voxels": int(before.sum()), "accepted_voxels": int(after.sum())}


def review_summary(dataset: str | Path) -> dict[str, Any]:
    """Counts by state, pending cases by zero-shot status, and pseudo-vs-accepted agreement."""
    data = open_dataset(dataset)
    queue = data.queue()
    states = {name: 0 for name in STATES}
    pending_by_status: dict[str, int] = {}
    for item in queue:
        state = "interrupted" if item.state in INTERRUPTED else item.state
        states[state] += 1
        if state == "pending":
            pending_by_status[item.status] = pending_by_status.get(item.status, 0) + 1
    compared = [compare_case(data.folder, item.case) for item in queue if item.state == ACCEPTED]
    scored = [c for c in compared if "dsc" in c]
    dscs = [c["dsc"] for c in scored]
    agreement = {"accepted": len(compared), "compared": len(scored),
                 "changed": sum(c["changed_voxels"] > 0 for c in scored),
                 "unchanged": sum(c["changed_voxels"] == 0 for c in scored),
                 "dsc_mean": float(np.mean(dscs)) if dscs else None,
                 "dsc_median": float(np.median(dscs)) if dscs else None,
                 "dsc_min": float(np.min(dscs)) if dscs else None,
                 "changed_voxels": sum(c["changed_voxels"] for c in scored),
                 "missing_files": [c for c in compared if "missing" in c]}
    return {"dataset": str(data.folder), "cases": len(queue), "states": states,
            "pending_by_status": dict(sorted(pending_by_status.items())),
            "numTraining": (read_dataset_json(data.folder) or {}).get("numTraining"),
            "pseudo_vs_accepted": agreement, "per_case": scored}


def format_summary(summary: dict[str, Any]) -> list[str]:
    states, agreement = summary["states"], summary["pseudo_vs_accepted"]
    pending = ", ".join(f"{n} {status}" for status, n in summary["pending_by_status"].items())
    first = f"{Path(summary['dataset']).name}: {summary['cases']} cases: {states['pending']} pending"
    first += (f" ({pending})" if pending else "") + f", {states[ACCEPTED]} accepted, {states[EXCLUDED]} excluded"
    if states["interrupted"]:
        first += f", {states['interrupted']} interrupted (open the queue and redo them)"
    if summary["numTraining"] is not None:
        first += f"; {summary['numTraining']} in the training set (dataset.json)"
    lines = [first]
    if agreement["compared"]:
        lines.append(f"labels changed by the reviewer: {agreement['changed']} of {agreement['compared']} accepted "
                     f"({agreement['changed_voxels']} voxels); DSC pseudo vs accepted: mean "
                     f"{agreement['dsc_mean']:.3f}, median {agreement['dsc_median']:.3f}, min {agreement['dsc_min']:.3f}")
    for case in agreement["missing_files"]:
        lines.append(f"note: {case['case']}: cannot compare ({'; '.join(case['missing'])} missing)")
    return lines


def register_cli(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("review-status", help="how many cases the review queue has done, and how much the "
                                                  "reviewer changed the zero-shot labels (DSC)")
    parser.add_argument("dataset", help="the nnU-Net raw dataset folder 'medclipsam label' wrote")
    add_output_option(parser, "--json", help="also write the summary (with per-case DSC) to this JSON file")
    add_overwrite_option(parser, "JSON file")
    parser.set_defaults(func=cmd_review_status)


def cmd_review_status(args: argparse.Namespace) -> int:
    if args.json:
        check_outside(args.json, args.dataset, "--json", "which holds nnU-Net's files and the review's state")
        check_output(args.json, "--json", args.overwrite, extensions=(".json",))
    summary = review_summary(args.dataset)
    for line in format_summary(summary):
        print(line)
    if args.json:
        write_json(args.json, summary, overwrite=args.overwrite)
    return 0
