"""Measure SAM's box rules (zoom, refinement, split) on oracle boxes: the SAM stage alone.

Every slice that the expert mask crosses is encoded once; each rule set and box looseness then
costs decoder passes only (plus one encoder pass per zoomed crop, cached). Prints a table of mean
DSC per data set, looseness and rule set, with the small-target subset on its own, and writes
every case's figure to a CSV.

    python Testing/measure/box_rules.py --out box_rules.csv [--data ../shared/data] [--sets bus,cxr,brain,brain1]
"""
from __future__ import annotations

import csv
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from common import checked_names, data_and_sets, measure_parser
from MedCLIPSAMLib.evaluate import find_cases, oracle_boxes
from MedCLIPSAMLib.imageio import normalize_intensity, read_volume, resolve_axis
from MedCLIPSAMLib.metrics import dice
from MedCLIPSAMLib.models.box_prompting import BoxRules
from MedCLIPSAMLib.models.sam import load_sam

SETS = {"bus": "breast_ultrasound", "cxr": "chest_xray_lungs", "brain": "brain_mri_tumor", "brain1": "volumes"}
LOOSENESS = (-0.1, 0.0, 0.1, 0.25, 0.5)
SMALL_TARGET = 1 / 8
"""A case is small when its largest expert component's box is under 1/8 of the slice's longer side
(32 px at LiteMedSAM's 256)."""


@dataclass
class Case:
    name: str
    slices: np.ndarray
    truth: np.ndarray
    small: bool


def load_cases(data: Path, key: str) -> list[Case]:
    if key == "brain1":
        pairs = [("brain1", data / "volumes/brain1_image.nrrd", data / "volumes/brain1_label.nrrd")]
    else:
        pairs = [(c.name, c.image, c.mask) for c in find_cases(data / SETS[key])]
    cases = []
    for name, image_path, mask_path in pairs:
        volume = read_volume(image_path)
        axis = resolve_axis(None, volume)
        slices = np.moveaxis(normalize_intensity(volume.array, None), axis, 0)
        truth = np.moveaxis(read_volume(mask_path).array > 0, axis, 0)
        sides = [max(b[2] - b[0], b[3] - b[1]) + 1 for boxes in oracle_boxes(truth, 0.0).values() for b in boxes]
        cases.append(Case(name, slices, truth, max(sides) < SMALL_TARGET * max(truth.shape[1:])))
    return cases


def rule_sets() -> dict[str, BoxRules]:
    """The candidates: rounds, the old and the default stop rule, margins, steps, fill gates, keep-better, zoom."""
    base = BoxRules(refine_rounds=2)
    sets = {"r0": BoxRules(refine_rounds=0), "r1": BoxRules(refine_rounds=1), "r2 (old default)": base}
    for margin in (0.05, 0.1, 0.2):
        sets[f"r2 margin {margin}"] = replace(base, refine_margin=margin)
    sets["r2 stop when tight (default)"] = replace(base, refine_min_shrink=0.05)
    sets["r2 half steps"] = replace(base, refine_step=0.5)
    for fill in (0.6, 0.7):
        sets[f"r2 if fill < {fill}"] = replace(base, refine_below_fill=fill)
    sets["r2 keep-better"] = replace(base, refine_keep_better=True)
    sets["r2 margin 0.1 keep-better"] = replace(base, refine_margin=0.1, refine_keep_better=True)
    for below in (0.125, 0.25, 0.35):
        for context in (0.5, 1.0, 2.0):
            sets[f"r0 zoom {below} ctx {context}"] = BoxRules(refine_rounds=0, zoom_below=below, zoom_context=context)
    return sets


def field_value(field: str, text: str):
    """A BoxRules field's value from its text ('true'/'false' for the switches)."""
    kind = type(getattr(BoxRules(), field))
    try:
        value = kind(text) if kind is not bool else None
    except ValueError:
        raise SystemExit(f"error: {field} takes a {kind.__name__} (got {text!r}).") from None
    if kind is bool:
        if text.lower() not in ("true", "false"):
            raise SystemExit(f"error: {field} takes true or false (got {text!r}).")
        return text.lower() == "true"
    return value


def main() -> int:
    parser = measure_parser(__doc__, "bus,cxr,brain,brain1")
    parser.add_argument("--levels", default=",".join(map(str, LOOSENESS)))
    parser.add_argument("--rules", help="only these rule sets (names, comma-separated)")
    parser.add_argument("--extra", action="append", default=[],
                        help="an extra rule set as NAME:field=value;field=value (e.g. 'z:zoom_below=0.25')")
    args = parser.parse_args()
    data, sets = data_and_sets(args, SETS)
    rules = rule_sets()
    if args.rules:
        rules = {k: rules[k] for k in checked_names(args.rules, rules, "--rules")}
    for spec in args.extra:
        name, _, fields = spec.partition(":")
        pairs = [f.split("=", 1) for f in fields.split(";") if f]
        if not name or not pairs or any(len(p) != 2 for p in pairs):
            raise SystemExit(f"error: --extra '{spec}' is not NAME:field=value;field=value.")
        checked_names(",".join(k for k, _ in pairs), BoxRules.__dataclass_fields__, "--extra")
        rules[name] = BoxRules(**{k: field_value(k, v) for k, v in pairs})
    sam = load_sam("litemedsam", None, "cpu")
    levels = [float(v) for v in args.levels.split(",")]
    rows = []
    for key in sets:
        cases = load_cases(data, key)
        for case in cases:
            start = time.perf_counter()
            crossed = [int(z) for z in np.flatnonzero(case.truth.any(axis=(1, 2)))]
            encoded = dict(zip(crossed, [sam.encode(case.slices[z:z + 1])[0] for z in crossed]))
            for level in levels:
                boxes = oracle_boxes(case.truth, level)
                for name, rule in rules.items():
                    t = time.perf_counter()
                    mask = np.zeros(case.truth.shape, dtype=bool)
                    for z in crossed:
                        mask[z] = sam.segment(encoded[z], boxes=boxes[z], rules=rule)
                    rows.append({"set": key, "case": case.name, "small": case.small, "level": level, "rules": name,
                                 "dsc": dice(mask, case.truth), "ms_per_slice": 1000 * (time.perf_counter() - t) / len(crossed)})
            print(f"{key} {case.name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print_table(rows, levels)
    return 0


def print_table(rows: list[dict], levels: list[float]) -> None:
    """Mean DSC (%) per set x rule set, one column per looseness; small targets as their own set."""
    groups: dict[tuple[str, str], dict[float, list[float]]] = {}
    for row in rows:
        for group in [row["set"]] + (["small"] if row["small"] else []):
            groups.setdefault((group, row["rules"]), {}).setdefault(row["level"], []).append(row["dsc"])
    print("| set | rules | n | " + " | ".join(f"{level:+.0%}" for level in levels) + " |")
    print("|---|---|---|" + "---|" * len(levels))
    for (group, name), by_level in groups.items():
        n = len(by_level[levels[0]])
        print(f"| {group} | {name} | {n} | " + " | ".join(f"{100 * np.mean(by_level[l]):.1f}" for l in levels) + " |")


if __name__ == "__main__":
    sys.exit(main())
