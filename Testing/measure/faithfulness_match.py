"""Does what we segmented look like what was asked? Result-match and directional faithfulness scores.

The saliency-difference scores of ``faithfulness.py`` (this folder) do not separate a right prompt from a
wrong one on the toy model (README). This script measures cheaper candidates on the same DHN-NCE-trained toy
and held-out images (one shape each; prompts right / wrong shape / unrelated / gibberish; the same model with
a text tower that ignores the text must score unfaithful). ``region`` is the Otsu region of the prompt's own
M2IB map inside the body (what the pipeline would segment). Per candidate: the AUC of right vs the rest and
per wrong group, the threshold with the best balanced accuracy, and the degenerate tower's scores. The row
"engine: match_score(crop)" is the engine's score, computed with the engine's own functions.

    python Testing/measure/faithfulness_match.py --out match.csv [--work DIR] [--images 20] [--samples 3]
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from faithfulness import (CPU, DISK, SQUARE, WRONG_PROMPTS, auc, best_threshold, degenerate,  # noqa: E402
                          held_out, maps_for, trained_toy)

from MedCLIPSAMLib.faithfulness import (NULL_PROMPTS, crop_box, match_score, relative_change_score,  # noqa: E402
                                        result_region)
from MedCLIPSAMLib.result_match import view_images  # noqa: E402
from MedCLIPSAMLib.pipeline import BODY_INTENSITY  # noqa: E402
from MedCLIPSAMLib.saliency import clip_inputs  # noqa: E402

NULL = ""
GENERIC = ["an image", "a photo", "a scan"]
OTHER_NULLS = {"an image": "an image", "a car": "a car"}


def embed_images(bundle, images: np.ndarray) -> torch.Tensor:
    pixels, _ = clip_inputs(images, bundle, CPU)
    with torch.no_grad():
        return torch.nn.functional.normalize(bundle.model.encode_image(pixels).float(), dim=-1)


def masked(image: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The image inside ``region``, the rest filled with the mean intensity outside it."""
    if not region.any() or region.all():
        return image
    out = image.copy()
    out[~region] = np.uint8(round(float(image[~region].mean())))
    return out


def directional(prompt_map: np.ndarray, null_map: np.ndarray, region: np.ndarray, body: np.ndarray) -> float:
    """Mean (prompt - null) inside the region minus outside it (in the body), over the prompt map's spread."""
    inside, outside = region & body, ~region & body
    spread = float(prompt_map[body].std())
    if not inside.any() or not outside.any() or spread <= 1e-12:
        return 0.0
    diff = prompt_map.astype(np.float64) - null_map
    return float((diff[inside].mean() - diff[outside].mean()) / spread)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default="/tmp/medclipsam_faithfulness_toy")
    parser.add_argument("--images", type=int, default=20, help="held-out images per shape")
    parser.add_argument("--samples", type=int, default=3, help="M2IB noise samples (--fast uses 3)")
    parser.add_argument("--degenerate-images", type=int, default=4)
    args = parser.parse_args()

    start = time.perf_counter()
    bundle = trained_toy(Path(args.work))
    images, shown = held_out(args.images)
    body = images > BODY_INTENSITY
    prompts = [DISK, SQUARE, *WRONG_PROMPTS.values()]
    rows, costs = [], {}
    for tower, model, count in (("trained", bundle, len(images)),
                                ("ignores text", degenerate(bundle), 2 * args.degenerate_images)):
        t = time.perf_counter()
        cache = Path(args.work) / f"maps_{tower.replace(' ', '_')}_{count}_{args.samples}.npz"
        if cache.is_file():  # M2IB is the slow part: reuse the maps of an earlier run with the same images
            maps = dict(np.load(cache))
        else:
            maps = maps_for(model, images[:count], {*prompts, NULL}, args.samples)
            np.savez_compressed(cache, **maps)
        costs[f"{tower} M2IB per image per text"] = (time.perf_counter() - t) / count / (len(prompts) + 1)
        text = {p: model.encode_text([p], CPU) for p in [*prompts, NULL, *GENERIC, *OTHER_NULLS.values()]}
        whole = embed_images(model, images[:count])
        for index, right in enumerate(shown[:count]):
            wrong = SQUARE if right == DISK else DISK
            for group, prompt in (("right", right), ("wrong shape", wrong), *WRONG_PROMPTS.items()):
                region = result_region(maps[prompt][index], body[index])  # as the engine does
                crop = view_images(images, [(index, crop_box(region))])[0]
                t = time.perf_counter()
                views = embed_images(model, np.stack([masked(images[index], region), crop]))
                costs["2 CLIP image forwards"] = time.perf_counter() - t
                row = {"tower": tower, "image": index, "group": group, "prompt": prompt,
                       "region_px": int(region.sum())}
                for view_name, view in (("whole", whole[index]), ("masked", views[0]), ("crop", views[1])):
                    similarity = {p: float(view @ e) for p, e in text.items()}
                    row[f"{view_name}: prompt - null"] = similarity[prompt] - similarity[NULL]
                    for null_name, null in OTHER_NULLS.items():
                        row[f"{view_name}: prompt - '{null_name}'"] = similarity[prompt] - similarity[null]
                    row[f"{view_name}: prompt - max(null, generic)"] = (
                        similarity[prompt] - max(similarity[g] for g in [NULL, *GENERIC]))
                    row[f"{view_name}: prompt - mean of 3 nulls"] = similarity[prompt] - float(np.mean(
                        [similarity[n] for n in (NULL, *OTHER_NULLS.values())]))
                nulls = torch.stack([text[n] for n in NULL_PROMPTS]).numpy()
                row["engine: match_score(crop)"] = match_score(views[1:].numpy(), text[prompt].numpy(), nulls)
                row["old: relative change vs null"] = relative_change_score(maps[prompt][index], maps[NULL][index],
                                                                            body[index])
                row["directional vs null"] = directional(maps[prompt][index], maps[NULL][index], region, body[index])
                rows.append(row)
        print(f"{tower}: {count} images in {time.perf_counter() - t:.0f} s", flush=True)
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    columns = [c for c in rows[0] if c not in ("tower", "image", "group", "prompt", "region_px")]
    groups = ["right", "wrong shape", *WRONG_PROMPTS]
    print(f"\n{'score':38s} " + " ".join(f"{g:>13s}" for g in groups)
          + f" {'AUC':>5s} " + " ".join(f"{'AUC ' + g[:7]:>11s}" for g in groups[1:])
          + f" {'threshold':>9s} {'bal.acc':>7s} {'degenerate':>17s}")
    for column in columns:
        values = {g: [r[column] for r in rows if r["tower"] == "trained" and r["group"] == g] for g in groups}
        negative = [v for g in groups[1:] for v in values[g]]
        cut, accuracy = best_threshold(values["right"], negative)
        flat = [r[column] for r in rows if r["tower"] == "ignores text"]
        print(f"{column:38s} " + " ".join(f"{np.mean(values[g]):+.3f}±{np.std(values[g]):.3f}" for g in groups)
              + f" {auc(values['right'], negative):5.3f} "
              + " ".join(f"{auc(values['right'], values[g]):11.3f}" for g in groups[1:])
              + f" {cut:+9.4f} {accuracy:7.3f} {min(flat):+.1e}..{max(flat):+.1e}")
    print("\ncost: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in costs.items()))
    print(f"{len(rows)} rows ({len(images)} trained images, {2 * args.degenerate_images} degenerate) -> {args.out}; "
          f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
