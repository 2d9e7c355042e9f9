"""Correction curves per set and per half, with the figures a click guarantee is judged by: DSC after 1..N
simulated interactions (interactive/simulate.py, the protocol ``medclipsam evaluate --simulate-interactions``
runs), NoC@85/90, clicks whose pixel ended wrong, clicks that left a wrong mask unchanged.

    PYTHONPATH=$PWD python Testing/measure/thick_lesion.py --out /tmp/thick
    PYTHONPATH=$PWD python Testing/measure/correction_curves.py --steps 10 --out /tmp/curves.csv \
        --embeddings /tmp/emb --folders thick=/tmp/thick

Each set's cases are split by sorted name: the first half (rounded up) is the one rules may be tuned on, the
second is held out; both are printed. Slices are encoded once per case (kept in --embeddings between runs), so
a run costs decoder passes; the figures equal evaluate's with ``--runtime torch``.
"""
from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import checked_data  # noqa: E402

from MedCLIPSAMLib.cases import pair_files  # noqa: E402
from MedCLIPSAMLib.correction_figures import noc_summary  # noqa: E402
from MedCLIPSAMLib.imageio import normalize_intensity, read_volume, resolve_axis  # noqa: E402
from MedCLIPSAMLib.interactive.embedding_cache import EmbeddingCache  # noqa: E402
from MedCLIPSAMLib.interactive.session import InteractionSession  # noqa: E402
from MedCLIPSAMLib.interactive.simulate import largest_error, simulate  # noqa: E402
from MedCLIPSAMLib.metrics import dice  # noqa: E402
from MedCLIPSAMLib.models.sam import load_sam  # noqa: E402

DEFAULT_SETS = ("breast_ultrasound", "chest_xray_lungs", "brain_mri_tumor", "volumes")


def click_checks(masks: list[np.ndarray], truth: np.ndarray) -> tuple[int, int, int]:
    """(clicks, clicks whose pixel is still wrong after them, clicks that left a wrong mask unchanged): each click
    is the simulated user's on the mask before it (the protocol is deterministic)."""
    clicks = wrong = unchanged = 0
    for before, after in zip(masks, masks[1:]):
        error = largest_error(before, truth)
        if error is None:
            continue
        clicks += 1
        wrong += bool(after[error.index, error.y, error.x]) != error.positive
        unchanged += bool(np.array_equal(before, after))
    return clicks, wrong, unchanged


def cached(sam, slices: np.ndarray, kept: Path | None) -> EmbeddingCache:
    cache = EmbeddingCache(sam, slices)
    if kept is not None and kept.exists():
        for index, encoded in torch.load(kept, weights_only=False).items():
            cache.put(index, encoded)
    cache.get_many(range(len(slices)))
    if kept is not None and cache.encoded_count:
        kept.parent.mkdir(parents=True, exist_ok=True)
        torch.save(dict(cache._items), kept)
    return cache


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared" / "data"))
    parser.add_argument("--sets", default=",".join(DEFAULT_SETS), help="folders of --data, comma-separated")
    parser.add_argument("--folders", default="", help="more sets as name=folder, comma-separated")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--limit", type=int, default=0, help="at most this many cases per set")
    parser.add_argument("--out", required=True, help="CSV of every case's curve")
    parser.add_argument("--embeddings", help="folder to keep encoded slices in between runs")
    parser.add_argument("--half", choices=("tune", "held-out", "all"), default="all",
                        help="run only one half of each set (tuning a rule on the tuning half)")
    parser.add_argument("--cases", default="", help="run only these cases (set/case or case names, comma-separated)")
    args = parser.parse_args()
    data = checked_data(args.data)
    sets = {name: data / name for name in args.sets.split(",") if name}
    sets.update(dict(item.split("=", 1) for item in args.folders.split(",") if item))
    sam = load_sam("litemedsam", None, "cpu")
    rows = []
    for name, folder in sets.items():
        cases = sorted(pair_files(Path(folder))[0], key=lambda c: c.name)[:args.limit or None]
        tuned = (len(cases) + 1) // 2
        for position, case in enumerate(cases):
            half = "tune" if position < tuned else "held-out"
            if args.half not in ("all", half) or (args.cases and not {case.name, f"{name}/{case.name}"} & set(
                    args.cases.split(","))):
                continue
            volume = read_volume(case.image)
            axis = resolve_axis(None, volume)
            truth = np.moveaxis(read_volume(case.mask).array > 0, axis, 0)
            slices = np.ascontiguousarray(np.moveaxis(normalize_intensity(volume.array), axis, 0))
            kept = Path(args.embeddings) / f"{name}_{case.name}.pt" if args.embeddings else None
            session = InteractionSession(sam, volume, axis=axis, cache=cached(sam, slices, kept))
            start = time.perf_counter()
            masks = simulate(session, truth, args.steps)
            seconds = time.perf_counter() - start
            clicks, wrong, unchanged = click_checks(masks, truth)
            rows.append({"set": name, "case": case.name, "half": half,
                         "clicks": clicks, "click_pixel_wrong": wrong, "click_unchanged": unchanged,
                         "seconds": round(seconds, 2),
                         **{f"dsc_{i + 1}": round(dice(m, truth), 4) for i, m in enumerate(masks)}})
            print(f"{name}/{case.name}: " + " ".join(f"{rows[-1][f'dsc_{i + 1}']:.3f}" for i in range(args.steps)),
                  file=sys.stderr)
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for name in sets:
        for half in ("tune", "held-out", "all"):
            members = [r for r in rows if r["set"] == name and half in (r["half"], "all")]
            if not members:
                continue
            curves = [[r[f"dsc_{i + 1}"] for i in range(args.steps)] for r in members]
            mean = np.mean(curves, axis=0)
            noc = noc_summary(curves)
            drops = int(np.sum(np.diff(mean) < -1e-9))
            print(f"{name} {half} n={len(members)}  DSC " + " ".join(f"{100 * v:.1f}" for v in mean)
                  + f"  NoC@85 {noc['noc_85']:.2f} ({noc['noc_85_failed']} never)  NoC@90 {noc['noc_90']:.2f} "
                  f"({noc['noc_90_failed']} never)  mean drops {drops}  clicks {sum(r['clicks'] for r in members)}"
                  f" pixel-wrong {sum(r['click_pixel_wrong'] for r in members)} unchanged "
                  f"{sum(r['click_unchanged'] for r in members)}  "
                  f"{np.mean([r['seconds'] for r in members]) / args.steps:.2f} s/interaction")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
