"""Can a cheap signal tell a tight box from a loose one? Per oracle box: the first mask's signals and what
two refinement rounds (the default stop rule) gained, as DSC of the slice's mask.

Signals: how much of the box the first mask fills, how far its box lies inside the prompt box (largest,
smallest and mean side, as a fraction of the box), SAM's IoU estimate of the first mask and of the
re-prompted one, and the re-prompted mask's area over the first one's. Prints mean signals per set and
looseness and each signal's correlation with the gain; writes every box's row to a CSV.

    python Testing/measure/refine_signals.py --out signals.csv [--sets bus,brain,cxr]
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from box_rules import LOOSENESS, SETS, load_cases  # noqa: E402
from common import data_and_sets, measure_parser  # noqa: E402

from MedCLIPSAMLib.evaluate import oracle_boxes  # noqa: E402
from MedCLIPSAMLib.metrics import dice  # noqa: E402
from MedCLIPSAMLib.models.box_prompting import box_area, first_mask  # noqa: E402
from MedCLIPSAMLib.models.sam import load_sam  # noqa: E402
from MedCLIPSAMLib.prompts import box_of  # noqa: E402
from MedCLIPSAMLib.settings import Settings  # noqa: E402

SIGNALS = ("fill", "max_inside", "min_inside", "mean_inside", "score", "score_reprompted", "area_ratio")


def box_rows(sam, encoded, box, truth: np.ndarray, rules) -> dict[str, float] | None:
    mask, score = first_mask(sam, encoded, box)
    tight = box_of(mask)
    if tight is None:
        return None
    x0, y0, x1, y1 = box
    width, height = x1 - x0 + 1, y1 - y0 + 1
    inside = [(tight[0] - x0) / width, (x1 - tight[2]) / width, (tight[1] - y0) / height, (y1 - tight[3]) / height]
    reprompted, scores = sam.decode(encoded, boxes=[tight], with_scores=True)
    refined = sam.segment(encoded, boxes=[box], rules=rules)
    return {"fill": mask.sum() / box_area(box), "max_inside": max(inside), "min_inside": min(inside),
            "mean_inside": float(np.mean(inside)), "score": score, "score_reprompted": float(scores[0]),
            "area_ratio": float(reprompted[0].sum() / max(mask.sum(), 1)),
            "gain": dice(refined, truth) - dice(mask, truth)}


def main() -> int:
    args = measure_parser(__doc__, "bus,brain,cxr").parse_args()
    data, sets = data_and_sets(args, SETS)
    sam, rules = load_sam("litemedsam", None, "cpu"), Settings().box_rules()
    rows = []
    for key in sets:
        for case in load_cases(data, key):
            crossed = [int(z) for z in np.flatnonzero(case.truth.any(axis=(1, 2)))]
            encoded = {z: sam.encode(case.slices[z:z + 1])[0] for z in crossed}
            for level in LOOSENESS:
                for z, boxes in oracle_boxes(case.truth, level).items():
                    for box in boxes if z in encoded else []:
                        row = box_rows(sam, encoded[z], box, case.truth[z], rules)
                        if row:
                            rows.append({"set": key, "case": case.name, "level": level, "slice": z, **row})
            print(f"{key} {case.name}", file=sys.stderr)
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    sets = sorted({row["set"] for row in rows})
    print("| set | level | " + " | ".join(SIGNALS) + " | gain |")
    for key in sets:
        for level in LOOSENESS:
            chosen = [row for row in rows if row["set"] == key and row["level"] == level]
            print(f"| {key} | {level:+.0%} | " + " | ".join(f"{np.mean([r[s] for r in chosen]):.3f}"
                                                          for s in SIGNALS + ("gain",)) + " |")
    print("correlation with the gain: | signal | " + " | ".join(sets) + " |")
    for signal in SIGNALS:
        values = [np.corrcoef([r[signal] for r in rows if r["set"] == key],
                              [r["gain"] for r in rows if r["set"] == key])[0, 1] for key in sets]
        print(f"| {signal} | " + " | ".join(f"{v:+.2f}" for v in values) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
