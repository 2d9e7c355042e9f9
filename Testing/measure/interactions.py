"""Simulated interactions (box, then clicks at the largest error) with several click modes and propagation
stop rules on the same encoded slices, so a sweep costs decoder passes only.

    PYTHONPATH=$PWD python Testing/measure/interactions.py --sets breast_ultrasound,brain1 --steps 5 \
        --click-modes points,box_edit --out /tmp/interactions.csv

Prints mean DSC after 1..N interactions per (set, click mode, rule); the CSV has every case.
"""
from __future__ import annotations

import csv
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_and_sets, measure_parser  # noqa: E402

from MedCLIPSAMLib.evaluate import find_cases  # noqa: E402
from MedCLIPSAMLib.imageio import normalize_intensity, read_volume, resolve_axis  # noqa: E402
from MedCLIPSAMLib.interactive.embedding_cache import EmbeddingCache  # noqa: E402
from MedCLIPSAMLib.interactive.session import InteractionSession  # noqa: E402
from MedCLIPSAMLib.interactive.propagation import StopRule  # noqa: E402
from MedCLIPSAMLib.interactive.simulate import simulate  # noqa: E402
from MedCLIPSAMLib.metrics import dice  # noqa: E402
from MedCLIPSAMLib.models.sam import load_sam  # noqa: E402

SETS = ("breast_ultrasound", "chest_xray_lungs", "brain_mri_tumor", "brain1")


def cases_of(data: Path, name: str):
    if name == "brain1":
        return [("brain1", data / "volumes" / "brain1_image.nrrd", data / "volumes" / "brain1_label.nrrd")]
    return [(c.name, c.image, c.mask) for c in find_cases(data / name)]


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def main() -> int:
    parser = measure_parser(__doc__, "breast_ultrasound,brain1")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--click-modes", default="points,box_edit")
    parser.add_argument("--margins", default="0.1", help="propagation box margins to try")
    parser.add_argument("--growths", default="1.5", help="stop when the area grows more than this factor")
    parser.add_argument("--shrinks", default="0", help="stop when the area falls under this fraction")
    parser.add_argument("--ious", default="0", help="stop when SAM's IoU estimate falls under this")
    parser.add_argument("--iou-drops", default="1", help="stop when SAM's IoU estimate falls by more than this")
    parser.add_argument("--contrasts", default="0.3", help="stop when the mask's contrast falls under this fraction")
    parser.add_argument("--mask-prompt", default="0", help="0,1: previous logits as mask prompt in propagation")
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--embeddings", help="folder to keep encoded slices in between runs of this script")
    args = parser.parse_args()
    data, sets = data_and_sets(args, SETS)
    sam = load_sam("litemedsam", None, "cpu")
    grid = list(itertools.product(args.click_modes.split(","), floats(args.margins), floats(args.growths),
                                  floats(args.shrinks), floats(args.ious), floats(args.iou_drops), floats(args.contrasts), [bool(int(v)) for v in args.mask_prompt.split(",")]))
    rows = []
    for name in sets:
        cases = cases_of(data, name)[:args.limit or None]
        for case, image, label in cases:
            volume = read_volume(image)
            axis = resolve_axis(None, volume)
            truth = np.moveaxis(read_volume(label).array > 0, axis, 0)
            cache = EmbeddingCache(sam, np.ascontiguousarray(np.moveaxis(normalize_intensity(volume.array), axis, 0)))
            kept = Path(args.embeddings) / f"{name}_{case}.pt" if args.embeddings else None
            if kept is not None and kept.exists():
                for index, encoded in torch.load(kept, weights_only=False).items():
                    cache.put(index, encoded)
            cache.get_many(range(len(cache.slices)))  # every slice once, up front, so the sweep decodes only
            if kept is not None and cache.encoded_count:
                kept.parent.mkdir(parents=True, exist_ok=True)
                torch.save(dict(cache._items), kept)
            for mode, margin, growth, shrink, iou, drop, contrast, mask_prompt in grid:
                rule = StopRule(margin=margin, max_growth=growth, min_shrink=shrink, min_iou=iou,
                                max_iou_drop=drop, min_contrast=contrast, use_mask_prompt=mask_prompt)
                session = InteractionSession(sam, volume, axis=axis, cache=cache, rule=rule, click_mode=mode)
                masks = simulate(session, truth, args.steps)
                row = {"set": name, "case": case, "click_mode": mode, "margin": margin, "growth": growth,
                       "shrink": shrink, "iou": iou, "iou_drop": drop, "contrast": contrast, "mask_prompt": int(mask_prompt),
                       **{f"dsc_{i + 1}": round(dice(m, truth), 4) for i, m in enumerate(masks)}}
                rows.append(row)
            print(f"{name}/{case}: {cache.encoded_count} slices encoded", file=sys.stderr)
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    keys = ("set", "click_mode", "margin", "growth", "shrink", "iou", "iou_drop", "contrast", "mask_prompt")
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    for key, members in groups.items():
        curve = "  ".join(f"{100 * np.mean([r[f'dsc_{i + 1}'] for r in members]):.1f}" for i in range(args.steps))
        print(f"{dict(zip(keys, key))}  n={len(members)}  DSC after 1..{args.steps}: {curve}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
