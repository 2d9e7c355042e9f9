"""Measure the component rules (K, confidence ratio, splitting) with oracle saliency on the dev sets.

Oracle saliency (the expert mask on the CLIP token grid) runs everything after M2IB: Otsu, components,
boxes, SAM and clean-up. It holds no false salient regions, so it measures whether a rule keeps every
real lesion, not whether it drops noise; the table splits single- and multi-component cases.

    python Testing/measure/components.py --out components.csv [--data ../shared/data]
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from common import data_and_sets, measure_parser
from MedCLIPSAMLib.evaluate import ORACLE_MIN_AREA, Evaluator, evaluate_case, find_cases
from MedCLIPSAMLib.imageio import read_volume
from MedCLIPSAMLib.presets import apply_preset
from MedCLIPSAMLib.settings import Settings

SETS = {"bus": ("breast_ultrasound", "breast tumor"), "cxr": ("chest_xray_lungs", "lungs"),
        "brain": ("brain_mri_tumor", "brain tumor")}


def variants(prompt: str) -> dict[str, dict]:
    """Rule sets on top of the prompt's preset (LiteMedSAM takes boxes, so 'lungs' runs with boxes). All but the
    last use refinement as it was before the stop rule, so the component rules are compared alone."""
    before = {"max_components": 2 if prompt == "lungs" else 1, "component_ratio": 0.0, "split_fraction": 0.0,
              "refine_min_shrink": 0.0}
    return {"K fixed (before)": before,
            "K<=3 ratio 0.5": {**before, "max_components": 3, "component_ratio": 0.5},
            "K<=3 ratio 0.8": {**before, "max_components": 3, "component_ratio": 0.8},
            "K fixed + split 0.3": {**before, "split_fraction": 0.3},
            "preset and defaults (now)": {}}


def pieces(mask_path: Path) -> int:
    """Expert components per case (annotation specks under the oracle-box minimum do not count)."""
    truth = read_volume(mask_path).array > 0
    labels, count = ndimage.label(truth, structure=np.ones((3, 3, 3)))
    sizes = ndimage.sum_labels(truth, labels, np.arange(1, count + 1))
    return int((sizes >= ORACLE_MIN_AREA).sum())


def main() -> int:
    args = measure_parser(__doc__, "bus,cxr,brain").parse_args()
    data, sets = data_and_sets(args, SETS)
    rows = []
    for key in sets:
        folder, prompt = SETS[key]
        cases = find_cases(data / folder)
        counts = {case.name: pieces(case.mask) for case in cases}
        for name, changes in variants(prompt).items():
            settings, _ = apply_preset(Settings(device="cpu", sam_backend="litemedsam"), prompt, {})
            evaluator = Evaluator("oracle-saliency", settings.replace(**changes))
            for case in cases:
                row = evaluate_case(case, evaluator, prompt, None)
                rows.append({"set": key, "case": case.name, "pieces": counts[case.name], "rules": name,
                             "dsc": row["dsc"], "boxes": row["boxes"]})
            print(f"{key} {name}: {np.mean([r['dsc'] for r in rows if r['set'] == key and r['rules'] == name]):.4f}",
                  file=sys.stderr)
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print("| set | rules | single (n) | multi (n) | all |")
    print("|---|---|---|---|---|")
    for key in sets:
        for name in variants(SETS[key][1]):
            group = [r for r in rows if r["set"] == key and r["rules"] == name]
            single = [r["dsc"] for r in group if r["pieces"] == 1]
            multi = [r["dsc"] for r in group if r["pieces"] > 1]
            cell = lambda v: f"{100 * np.mean(v):.1f} ({len(v)})" if v else "-"
            print(f"| {key} | {name} | {cell(single)} | {cell(multi)} | {100 * np.mean([r['dsc'] for r in group]):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
