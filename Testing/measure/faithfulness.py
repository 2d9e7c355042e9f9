"""The saliency-difference faithfulness candidates (README, Prompt faithfulness: the engine now uses the result-match
score of faithfulness_match.py, which imports the toy model and held-out images from here).

Where saliency means something: the toy CLIP of the fine-tuning tests (tiny ViT + tiny BERT trained
with DHN-NCE on bright disks and dark squares, as ``Testing/Python/test_finetune.py`` does), on
held-out images showing one shape. Per image the prompts are: right (the shape shown), wrong (the
other shape), unrelated ("sitting on a chair") and gibberish. Each prompt's M2IB map is scored
against each candidate null prompt's map with each candidate score; the same is done with a
degenerate text tower whose output ignores the text (it must score unfaithful). Prints per
(null, score): the mean of each group, the AUC of right vs the rest, the threshold with the best
balanced accuracy, and the degenerate tower's highest score (groups as min-max: the
scores span orders of magnitude).

    python Testing/measure/faithfulness.py --out faithfulness.csv [--work /tmp/faith_toy] [--images 20]
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Python"))  # the tests' synthetic shapes
from degenerate import ignore_text  # noqa: E402
from shapes import draw, write_pairs  # noqa: E402

from MedCLIPSAMLib.faithfulness import SCORES  # noqa: E402
from MedCLIPSAMLib.finetune.train import FinetuneConfig, finetune  # noqa: E402
from MedCLIPSAMLib.models.clip import ClipBundle, load_clip  # noqa: E402
from MedCLIPSAMLib.models.random_clip import make_random_clip  # noqa: E402
from MedCLIPSAMLib.pipeline import BODY_INTENSITY  # noqa: E402
from MedCLIPSAMLib.saliency import M2IB, M2IBConfig  # noqa: E402

CPU = torch.device("cpu")
DISK, SQUARE = "a bright round disk", "a dark square block"
WRONG_PROMPTS = {"unrelated": "sitting on a chair", "gibberish": "xqz vlorp tkamb"}
NULLS = {"empty text": "", "generic caption": "an image", "unrelated object": "a car"}
PROOF_LAYER = 3  # as in test_finetune: the 12-block toy localises best early


def degenerate(bundle: ClipBundle) -> ClipBundle:
    """A copy of the model whose text tower ignores the text (``Testing/Python/degenerate.py``)."""
    import copy

    clone = copy.copy(bundle)
    clone.model = ignore_text(copy.deepcopy(bundle.model))
    return clone


def trained_toy(work: Path) -> ClipBundle:
    """The fine-tuning tests' toy model, trained once into ``work`` (reused on the next run)."""
    best = work / "out" / "best.pt"
    if not best.is_file():
        pairs = write_pairs(work / "train", 256, size=112, seed=0)
        torch.manual_seed(0)
        bundle = make_random_clip(work / "model", size="tiny", image_size=112)
        config = FinetuneConfig(clip=str(work / "model"), lr=3e-3, epochs=6, batch_size=32, weight_decay=0.0,
                                warmup_fraction=0.1, validation_fraction=0.0, device="cpu")
        finetune(pairs, work / "out", config, bundle=bundle, show_progress=False)
    return load_clip(str(best))


def held_out(count: int) -> tuple[np.ndarray, list[str]]:
    """``count`` disk-only and ``count`` square-only images (seed 7, as the tests' held-out set) and their shape."""
    rng = np.random.default_rng(7)
    images, shown = [], []
    for i in range(2 * count):
        image, _ = draw(rng, 112, disk=i % 2 == 0, square=i % 2 == 1)
        images.append(image)
        shown.append(DISK if i % 2 == 0 else SQUARE)
    return np.stack(images), shown


def maps_for(bundle: ClipBundle, images: np.ndarray, texts: set[str], samples: int) -> dict[str, np.ndarray]:
    m2ib = M2IB(bundle, M2IBConfig(layer=PROOF_LAYER, samples=samples), CPU)
    maps = {}
    for text in sorted(texts):
        t = time.perf_counter()
        maps[text] = m2ib.saliency(images, bundle.encode_text([text], CPU))
        print(f"  {text!r}: {time.perf_counter() - t:.0f} s", flush=True)
    return maps


def auc(positive: list[float], negative: list[float]) -> float:
    """P(a right prompt scores above a wrong one), ties half."""
    p, n = np.asarray(positive)[:, None], np.asarray(negative)[None, :]
    return float((p > n).mean() + 0.5 * (p == n).mean())


def best_threshold(positive: list[float], negative: list[float]) -> tuple[float, float]:
    """(threshold, balanced accuracy): flag scores under it; the midpoint between the two closest scores."""
    values = np.unique(np.concatenate([positive, negative]))
    cuts = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]])
    accuracy = [0.5 * ((np.asarray(positive) >= c).mean() + (np.asarray(negative) < c).mean()) for c in cuts]
    best = int(np.argmax(accuracy))
    return float(cuts[best]), float(accuracy[best])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="CSV of every image's scores")
    parser.add_argument("--work", default="/tmp/medclipsam_faithfulness_toy", help="where the toy model is trained")
    parser.add_argument("--images", type=int, default=20, help="held-out images per shape")
    parser.add_argument("--samples", type=int, default=10, help="M2IB noise samples")
    parser.add_argument("--degenerate-images", type=int, default=2,
                        help="held-out images per shape for the text-ignoring tower (its maps are all alike)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    start = time.perf_counter()
    bundle = trained_toy(Path(args.work))
    print(f"toy model ready in {time.perf_counter() - start:.0f} s", flush=True)
    images, shown = held_out(args.images)
    body = images > BODY_INTENSITY
    texts = {DISK, SQUARE, *WRONG_PROMPTS.values(), *NULLS.values()}
    rows = []
    for tower, model, count in (("trained", bundle, len(images)),
                                ("ignores text", degenerate(bundle), 2 * args.degenerate_images)):
        t = time.perf_counter()
        maps = maps_for(model, images[:count], texts, args.samples)
        print(f"{tower}: {len(texts)} texts x {count} images in {time.perf_counter() - t:.0f} s", flush=True)
        for index, right in enumerate(shown[:count]):
            wrong = SQUARE if right == DISK else DISK
            for group, prompt in (("right", right), ("wrong shape", wrong), *WRONG_PROMPTS.items()):
                row = {"tower": tower, "image": index, "group": group, "prompt": prompt}
                for null_name, null in NULLS.items():
                    for score_name, score in SCORES.items():
                        value = score(maps[prompt][index], maps[null][index], body[index])
                        row[f"{score_name} vs {null_name}"] = float(f"{value:.3g}")
                rows.append(row)
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    columns = [c for c in rows[0] if " vs " in c]
    groups = ["right", "wrong shape", *WRONG_PROMPTS]
    print(f"\n{'score vs null':36s} " + " ".join(f"{g:>11s}" for g in groups)
          + f" {'AUC':>6s} {'threshold':>9s} {'bal.acc':>7s} {'degenerate max':>14s}")
    for column in columns:
        values = {g: [r[column] for r in rows if r["tower"] == "trained" and r["group"] == g] for g in groups}
        negative = [v for g in groups[1:] for v in values[g]]
        cut, accuracy = best_threshold(values["right"], negative)
        flat = max(r[column] for r in rows if r["tower"] == "ignores text")
        print(f"{column:36s} " + " ".join(f"{min(values[g]):.2g}-{max(values[g]):.2g}" for g in groups)
              + f" {auc(values['right'], negative):6.3f} {cut:9.2g} {accuracy:7.3f} {flat:14.2g}")
    print(f"\n{len(rows)} rows -> {args.out}; total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
