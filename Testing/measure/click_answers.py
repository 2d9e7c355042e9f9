"""How an engine should answer one click: the DSC change of several answers to the same click, on the same
masks (after a tight box, then after each simulated error region is fixed exactly, for more states).

    PYTHONPATH=$PWD python Testing/measure/click_answers.py --sets breast_ultrasound --clicks 3 --out /tmp/clicks.csv

Prints, per answer and click sign, the mean DSC change and how many clicks made the mask worse.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_and_sets, measure_parser  # noqa: E402
from interactions import cases_of  # noqa: E402

from MedCLIPSAMLib.imageio import normalize_intensity, read_volume  # noqa: E402
from MedCLIPSAMLib.interactive.local_edit import EIGHT, LocalEditRule, level_set_edit, slice_logits  # noqa: E402
from MedCLIPSAMLib.interactive.prompting import decode  # noqa: E402
from MedCLIPSAMLib.interactive.session import edit_box  # noqa: E402
from MedCLIPSAMLib.interactive.simulate import largest_error  # noqa: E402
from MedCLIPSAMLib.metrics import dice  # noqa: E402
from MedCLIPSAMLib.models.sam import load_sam  # noqa: E402
from MedCLIPSAMLib.prompts import box_of  # noqa: E402


def piece_at(mask: np.ndarray, x: int, y: int) -> np.ndarray:
    labels, _ = ndimage.label(mask, structure=EIGHT)
    return labels == labels[y, x] if labels[y, x] else np.zeros_like(mask)


def answers(sam, encoded, mask: np.ndarray, box, x: int, y: int, positive: bool) -> dict[str, np.ndarray]:
    """Answer name -> the slice's new mask."""
    logits = slice_logits(sam, encoded, decode(sam, encoded, box=box))
    inside = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    distance = ndimage.distance_transform_edt(~mask)[y, x] if positive else inside[y, x]
    rows, cols = np.ogrid[:mask.shape[0], :mask.shape[1]]
    disc = (cols - x) ** 2 + (rows - y) ** 2 <= (distance + 1) ** 2
    reach = max(4, distance)
    height, width = mask.shape
    small_box = (max(0, x - reach), max(0, y - reach), min(width - 1, x + reach), min(height - 1, y + reach))
    small = decode(sam, encoded, box=tuple(int(v) for v in small_box)).mask
    edited = edit_box(box, (x, y, positive), mask.shape)
    boxed = decode(sam, encoded, box=edited).mask if edited else np.zeros_like(mask)
    unlimited = level_set_edit(logits, mask, x, y, positive, LocalEditRule(reach=1e6, floor=-np.inf))
    if positive:
        return {"level set (engine)": level_set_edit(logits, mask, x, y, True, LocalEditRule(floor=-np.inf)),
                "level set, no distance limit": unlimited, "disc brush": mask | disc,
                "SAM in a small box at the click": mask | piece_at(small & ~mask, x, y), "box edit": boxed}
    point = decode(sam, encoded, box=box, clicks=[(x, y, False)]).mask
    near = (cols - x) ** 2 + (rows - y) ** 2 <= (2 * distance + 2) ** 2
    return {"level set (engine)": level_set_edit(logits, mask, x, y, False, LocalEditRule(floor=-np.inf)),
            "level set, no distance limit": unlimited, "disc brush": mask & ~disc,
            "point prompt with the box, local": mask & ~piece_at(mask & ~point & near, x, y), "box edit": boxed}


def main() -> int:
    parser = measure_parser(__doc__, "breast_ultrasound")
    parser.add_argument("--clicks", type=int, default=3, help="clicks scored per image")
    parser.add_argument("--limit", type=int, default=0)
    args = parser.parse_args()
    data, sets = data_and_sets(args, ("breast_ultrasound", "chest_xray_lungs", "brain_mri_tumor"))
    sam = load_sam("litemedsam", None, "cpu")
    rows = []
    for name in sets:
        for case, image, label in cases_of(data, name)[:args.limit or None]:
            image2d = normalize_intensity(read_volume(image).array)[0]
            truth = read_volume(label).array[0] > 0
            encoded = sam.encode(image2d[None])[0]
            box = box_of(truth)
            mask = decode(sam, encoded, box=box).mask
            for step in range(args.clicks):
                click = largest_error(mask[None], truth[None])
                if click is None:
                    break
                before = dice(mask, truth)
                for answer, new in answers(sam, encoded, mask, box, click.x, click.y, click.positive).items():
                    rows.append({"set": name, "case": case, "step": step + 1, "positive": int(click.positive),
                                 "answer": answer, "dsc_change": round(dice(new, truth) - before, 5)})
                error = (truth & ~mask) if click.positive else (mask & ~truth)
                fixed = piece_at(error, click.x, click.y)
                mask = mask | fixed if click.positive else mask & ~fixed
            print(f"{name}/{case}", file=sys.stderr)
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for positive in (1, 0):
        print("+ clicks" if positive else "- clicks")
        for answer in dict.fromkeys(r["answer"] for r in rows if r["positive"] == positive):
            changes = np.array([r["dsc_change"] for r in rows if r["positive"] == positive and r["answer"] == answer])
            worse = int((changes < -1e-4).sum())
            print(f"  {answer:34s} mean {100 * changes.mean():+.2f}  worse {worse} of {changes.size}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
