"""`medclipsam label`: zero-shot labels for a whole cohort, written straight into an nnU-Net v2 raw dataset.

Per case: read, segment (models loaded once, each prompt's text embedding once), and then

- ``added``: image and label written to temporary files and renamed into ``imagesTr``/``labelsTr``;
- ``empty`` / ``low-score``: kept out of the training set (an all-background label teaches the wrong
  thing), recorded;
- ``failed``: the one-line reason recorded, and the run goes on.

Each case leaves a record ``medclipsam_labels/<case>.json`` (status, score, settings hash, model ids),
written before its files (state ``writing``) and after them (its final state), so an interrupted case
is redone and a finished one is skipped when the settings are the same. ``--num-parts K --part-id i``
splits the sorted cases for K processes; ``dataset.json`` and ``labels.csv`` are written from what is
on disk once every case has a record (by the last part, or ``--finalize``). ``--ray`` runs the same
per-case step on a Ray cluster.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..cases import IMAGE_SUFFIXES, case_id_of, listed_names, pair_files, unpaired_note
from ..errors import InputError, MedCLIPSAMError
from ..outputs import STAGING_FOLDER, add_output_option, check_folder, write_image, write_json, write_text
from ..settings import Settings

RECORDS = "medclipsam_labels"
TEMP = STAGING_FOLDER
FILE_ENDING = ".nii.gz"
MASK_MARKERS = ("_mask", "_label", "_seg")
FINAL = ("added", "empty", "low-score", "failed")
CSV_FIELDS = ["case", "status", "reason", "score", "faithfulness", "foreground_voxels", "target_slices",
              "saliency_slices", "seconds", "prompt", "image", "settings_hash", "review"]
"""``review``: what the review queue did with the case (reviewer-edited, reviewer-approved, excluded);
``faithfulness``: how much more the result looked like the prompt than like none (faithfulness.py; empty: not
checked)."""


@dataclass(frozen=True)
class LabelCase:
    case_id: str
    image: str
    prompt: str
    oracle_mask: str | None = None
    """Only for measuring the loop without BiomedCLIP: saliency made from this expert mask."""


@dataclass
class LabelJob:
    """Where and how a cohort is labelled (everything a worker needs, picklable for Ray)."""

    dataset: str
    label_name: str
    settings: dict[str, Any]
    modality: str = "MRI"
    min_score: float = 0.0
    overwrite: bool = False
    presets: bool = True
    oracle_saliency: bool = False
    settings_by_prompt: dict[str, Settings] = field(default_factory=dict)

    def settings_for(self, prompt: str) -> Settings:
        """Defaults, the prompt's preset, then the explicit options (as ``segment`` does); cached per prompt."""
        if prompt not in self.settings_by_prompt:
            from ..presets import apply_preset
            from ..settings import settings_from_dict

            base = Settings()
            if self.presets:
                base, _ = apply_preset(base, prompt, self.settings)
            self.settings_by_prompt[prompt] = settings_from_dict(self.settings, base)
        return self.settings_by_prompt[prompt]

    def settings_hash(self, prompt: str) -> str:
        from .. import __version__

        content = {"settings": self.settings_for(prompt).to_dict(), "prompt": prompt, "engine": __version__,
                   "oracle_saliency": self.oracle_saliency, "min_score": self.min_score}
        return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- which cases ---------------------------------------------------------------------------------------------

def find_label_cases(source: Path, prompt: str | None, oracle_saliency: bool = False,
                     note: Callable[[str], None] | None = None) -> list[LabelCase]:
    """Cases from a folder (image files and DICOM series folders; ``*_mask`` files are skipped) or a CSV
    manifest with columns ``image[,prompt][,case_id]``; sorted by case id, ids unique. ``note`` hears of
    images left out (with ``oracle_saliency``, those without a mask)."""
    source = Path(source)
    if oracle_saliency:
        pairs, unpaired = pair_files(source)
        if note and unpaired_note(unpaired):
            note(unpaired_note(unpaired))
        cases = [LabelCase(c.name, str(c.image), prompt or "target", str(c.mask)) for c in pairs]
    elif source.is_dir():
        cases = [LabelCase(case_id_of(p.name), str(p), _need_prompt(prompt, p.name)) for p in sorted(source.iterdir())
                 if _is_image(p)]
        cases += _loose_dicom_cases(source, prompt, note)
    elif source.is_file() and source.suffix.lower() == ".csv":
        cases = _manifest_cases(source, prompt)
    else:
        raise InputError(f"'{source}' is neither a folder of images nor a .csv manifest (image[,prompt][,case_id]).")
    if not cases:
        raise InputError(f"No images found in '{source}' (looked for {', '.join(IMAGE_SUFFIXES)} and DICOM folders).")
    ids = [c.case_id for c in cases]
    clashes = sorted({i for i in ids if ids.count(i) > 1})
    if clashes:
        raise InputError(f"Several images give the case id(s) {', '.join(clashes[:5])}; rename them or give case_id "
                         "in a manifest.")
    return sorted(cases, key=lambda c: c.case_id)


def _loose_dicom_cases(folder: Path, prompt: str | None, note: Callable[[str], None] | None) -> list[LabelCase]:
    """A folder's own 2D DICOM files (an ultrasound or radiograph export), one case each, named by the file."""
    from ..dicom.series import DICOM_SUFFIX, loose_images

    images, skipped = loose_images(folder)
    if skipped and note:
        note(f"{len(skipped)} DICOM file(s) hold no image (a SEG, SR, ...) and are skipped: {listed_names(skipped)}.")
    return [LabelCase(case_id_of(p.stem if p.suffix.lower() == DICOM_SUFFIX else p.name), str(p),
                      _need_prompt(prompt, p.name)) for p in images]


def _is_image(path: Path) -> bool:
    name = path.name.lower()
    if path.is_dir():
        return any(child.suffix.lower() == ".dcm" for child in path.iterdir())
    if name.startswith(".") or not name.endswith(IMAGE_SUFFIXES):
        return False
    return not case_id_of(path.name).lower().endswith(MASK_MARKERS)


def _need_prompt(prompt: str | None, where: str) -> str:
    if not prompt or not prompt.strip():
        raise InputError(f"No prompt for '{where}': give --prompt, or a prompt column in a CSV manifest.")
    return prompt.strip()


def _manifest_cases(path: Path, prompt: str | None) -> list[LabelCase]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows, header = list(reader), reader.fieldnames or []
    except UnicodeDecodeError:
        raise InputError(f"'{path}' is not UTF-8 text; save the manifest as UTF-8 CSV.") from None
    if "image" not in header:
        raise InputError(f"'{path}' needs a header with an 'image' column (optional: prompt, case_id).")
    if not rows:
        raise InputError(f"'{path}' lists no cases: add one line per image under its header.")
    cases = []
    for number, row in enumerate(rows, start=2):
        image = (row.get("image") or "").strip()
        if not image:
            raise InputError(f"{path}, line {number}: the image is empty.")
        image_path = Path(image) if Path(image).is_absolute() else path.parent / image
        case = (row.get("case_id") or "").strip() or case_id_of(image_path.name)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", case):
            raise InputError(f"{path}, line {number}: case id '{case}' may only hold letters, digits, '_' and '-'.")
        cases.append(LabelCase(case, str(image_path), _need_prompt((row.get("prompt") or "").strip() or prompt,
                                                                   f"{path}, line {number}")))
    return cases


def part_of(cases: list[LabelCase], num_parts: int, part_id: int) -> list[LabelCase]:
    """Every ``num_parts``-th case from ``part_id`` on: parts are disjoint and together cover all cases."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise MedCLIPSAMError(f"--part-id must be between 0 and --num-parts - 1 (got part {part_id} of {num_parts}).")
    return cases[part_id::num_parts]


# --- one case --------------------------------------------------------------------------------------------------

def record_path(dataset: Path, case_id: str) -> Path:
    return dataset / RECORDS / f"{case_id}.json"


def read_record(dataset: Path, case_id: str) -> dict[str, Any] | None:
    try:
        return json.loads(record_path(dataset, case_id).read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, content: dict[str, Any]) -> None:
    write_json(path, content, overwrite=True)  # a record is this command's own state


SEGS = "medclipsam_seg"
"""A DICOM case's label as a DICOM SEG referring to its series (what ``--stow`` sends back to a PACS)."""


def seg_path(dataset: Path, case_id: str) -> Path:
    return dataset / SEGS / f"{case_id}.dcm"


def case_paths(dataset: Path, case_id: str) -> tuple[Path, Path]:
    return (dataset / "imagesTr" / f"{case_id}_0000{FILE_ENDING}", dataset / "labelsTr" / f"{case_id}{FILE_ENDING}")


def decide(case: LabelCase, job: LabelJob) -> str | None:
    """Why this case is not (re)done now, or None to do it."""
    from ..review_state import left_alone_note

    dataset = Path(job.dataset)
    reviewed = left_alone_note(dataset, case.case_id)
    if reviewed is not None:
        return reviewed  # a reviewer's label (or exclusion) outranks any zero-shot run
    record = read_record(dataset, case.case_id)
    if record is not None and record.get("status") in FINAL and record.get("status") != "failed":
        if record.get("settings_hash") == job.settings_hash(case.prompt):
            return "done with the same settings"
        if not job.overwrite:
            return "done with other settings (pass --overwrite to redo)"
    if record is None and any(p.exists() for p in case_paths(dataset, case.case_id)) and not job.overwrite:
        return "already in the dataset, not labelled by this command (pass --overwrite to replace it)"
    return None


def label_case(pipeline, case: LabelCase, job: LabelJob) -> dict[str, Any]:
    """Segment one case and write it into the dataset (or record why not); returns its record."""
    dataset = Path(job.dataset)
    settings = job.settings_for(case.prompt)
    record: dict[str, Any] = {"case": case.case_id, "image": case.image, "prompt": case.prompt,
                              "settings_hash": job.settings_hash(case.prompt), "clip_model": settings.clip_model,
                              "sam": settings.sam_backend, "sam_checkpoint": settings.sam_checkpoint,
                              "status": "failed", "reason": "", "score": 0.0, "faithfulness": None,
                              "foreground_voxels": 0,
                              "target_slices": 0, "saliency_slices": 0}
    start = time.perf_counter()
    try:
        volume, mask, result = _segment(pipeline, case, settings, job.oracle_saliency)
        faithfulness = result.faithfulness.get(result.names[0])
        record.update(score=round(float(result.scores[result.names[0]]), 6), foreground_voxels=int(mask.sum()),
                      faithfulness=None if faithfulness is None else round(float(faithfulness), 6),
                      target_slices=int(np.moveaxis(mask, result.axis, 0).reshape(mask.shape[result.axis], -1)
                                        .any(axis=1).sum()),
                      saliency_slices=int(result.saliency_slices))
        if not mask.any():
            record.update(status="empty", reason="no foreground: kept out of the training set")
        elif record["score"] < job.min_score:
            record.update(status="low-score", reason=f"score {record['score']:.3f} under --min-score {job.min_score}")
        else:
            _write_json(record_path(dataset, case.case_id), {**record, "status": "writing"})
            write_case(dataset, case.case_id, volume, mask)
            if volume.dicom_files:
                from ..dicom.seg import write_label_seg

                record["seg"] = str(write_label_seg(seg_path(dataset, case.case_id), mask.astype(np.uint8),
                                                    [case.prompt], volume, overwrite=True))
            record.update(status="added", reason="")
    except MedCLIPSAMError as exc:
        record["reason"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    except Exception as exc:  # one bad case must not stop a cohort: record it and go on
        record["reason"] = f"internal error ({type(exc).__name__}: {exc})"
    if record["status"] != "added":
        _remove_case(dataset, case.case_id)  # a redo that no longer qualifies leaves no stale label behind
    record["seconds"] = round(time.perf_counter() - start, 3)
    _write_json(record_path(dataset, case.case_id), record)
    return record


def _segment(pipeline, case: LabelCase, settings: Settings, oracle_saliency: bool):
    from ..imageio import read_volume, resolve_axis

    volume = read_volume(case.image)
    if pipeline.settings != settings:
        pipeline.settings = settings  # per prompt (presets); the models stay loaded
    if oracle_saliency:
        from ..saliency import oracle_maps

        truth = read_volume(case.oracle_mask).array > 0
        if truth.shape != volume.array.shape:
            raise InputError(f"Mask '{case.oracle_mask}' has shape {truth.shape}, its image {volume.array.shape}.")
        axis = resolve_axis(settings.axis, volume)
        maps = np.moveaxis(oracle_maps(np.moveaxis(truth, axis, 0)), 0, axis)
        result = pipeline.run(volume, [case.prompt], saliency=[maps])
    else:
        result = pipeline.run(volume, [case.prompt])
    return volume, result.masks[result.names[0]], result


def write_case(dataset: Path, case_id: str, volume, mask: np.ndarray) -> None:
    """Image and 0/1 label on the image's grid, each written atomically (staged outside imagesTr/labelsTr)."""
    import SimpleITK as sitk

    image_path, label_path = case_paths(dataset, case_id)
    data = mask[0] if volume.is_2d else mask
    label = sitk.GetImageFromArray(data.astype(np.uint8))
    label.CopyInformation(volume.reference)
    for image, target in ((volume.reference, image_path), (label, label_path)):
        write_image(image, target, overwrite=True, staging=dataset / TEMP)


def _remove_case(dataset: Path, case_id: str) -> None:
    for path in (*case_paths(dataset, case_id), seg_path(dataset, case_id)):
        path.unlink(missing_ok=True)


# --- the whole cohort --------------------------------------------------------------------------------------------

def label_cases(cases: Iterable[LabelCase], job: LabelJob, progress=None, pipeline=None) -> list[dict[str, Any]]:
    """Label cases one after another in this process (models loaded once); returns one row per case."""
    from ..pipeline import Pipeline

    rows = []
    cases = list(cases)
    for done, case in enumerate(cases):
        skip = decide(case, job)
        if skip is not None:
            rows.append({**(read_record(Path(job.dataset), case.case_id) or {"case": case.case_id}),
                         "skipped": skip})
        else:
            if pipeline is None:
                pipeline = Pipeline(job.settings_for(case.prompt))
            rows.append(label_case(pipeline, case, job))
        if progress is not None:
            progress("label", done + 1, len(cases))
    return rows


class RayLabeller:
    """A Ray Data actor: holds the models, labels the cases streamed to it through the same per-case path."""

    def __init__(self, job: dict[str, Any]):
        self.job = LabelJob(**job)
        self.pipeline = None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ..pipeline import Pipeline

        statuses = []
        for values in zip(*(batch[name] for name in ("case_id", "image", "prompt", "oracle_mask"))):
            case = LabelCase(*(None if v is None or v == "" else str(v) for v in values))
            skip = decide(case, self.job)
            if skip is not None:
                statuses.append("skipped")
                continue
            if self.pipeline is None:
                self.pipeline = Pipeline(self.job.settings_for(case.prompt))
            statuses.append(label_case(self.pipeline, case, self.job)["status"])
        return {"case_id": np.asarray(batch["case_id"]), "status": np.asarray(statuses)}


def label_with_ray(cases: list[LabelCase], job: LabelJob, address: str | None = None, actors: int = 1,
                   gpus_per_actor: float = 0.0) -> dict[str, str]:
    """The same labelling on Ray (a local Ray when ``address`` is None): case -> status."""
    try:
        import ray
    except ImportError:
        raise MedCLIPSAMError("--ray needs Ray: pip install 'medclipsam[ray]'.") from None
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False,
                 include_dashboard=False, **({} if address else {"num_cpus": max(1, os.cpu_count() or 1)}))
    items = [{**asdict(c), "oracle_mask": c.oracle_mask or ""} for c in cases]
    dataset = ray.data.from_items(items)
    job_dict = {k: v for k, v in asdict(job).items() if k != "settings_by_prompt"}
    out = dataset.map_batches(RayLabeller, fn_constructor_kwargs={"job": job_dict}, batch_size=1, concurrency=actors,
                              num_gpus=gpus_per_actor or None, num_cpus=1)
    return {row["case_id"]: row["status"] for row in out.take_all()}


def finalize(cases: list[LabelCase], job: LabelJob) -> dict[str, Any] | None:
    """dataset.json and labels.csv from the records and files on disk, once every case has a final record.

    Cases the review queue excluded are kept outside labelsTr, so dataset.json never counts them.
    Returns the summary, or None while cases of other parts are still missing.
    """
    from ..review_state import EXCLUDED, read_states, review_column
    from .export import write_dataset_json

    dataset = Path(job.dataset)
    records = {c.case_id: read_record(dataset, c.case_id) for c in cases}
    pending = [case for case, record in records.items() if record is None or record.get("status") not in FINAL]
    if pending:
        return None
    for path in sorted((dataset / RECORDS).glob("*.json")):  # cases of earlier runs on other inputs stay listed
        earlier = records.get(path.stem) or read_record(dataset, path.stem)
        if earlier is not None and earlier.get("status") in FINAL:
            records[path.stem] = earlier
    reviews = read_states(dataset)
    rows = [{**records[case], "review": review_column(reviews.get(case))} for case in sorted(records)]
    (dataset / "labelsTr").mkdir(parents=True, exist_ok=True)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(dataset / "labels.csv", table.getvalue(), overwrite=True)
    content = write_dataset_json(dataset, job.label_name, job.modality)
    shutil.rmtree(dataset / TEMP, ignore_errors=True)
    counts = {status: sum(r["status"] == status for r in rows) for status in FINAL}
    excluded = sum(r["review"] == review_column({"state": EXCLUDED}) for r in rows)
    return {"numTraining": content["numTraining"], **counts, "excluded": excluded}


# --- command line -------------------------------------------------------------------------------------------------

def register_cli(sub) -> None:
    from ..setting_options import add_setting_options
    from ..options import at_least, number
    from .export import channel_name_option, dataset_id_option, dataset_name_option

    parser = sub.add_parser("label", help="zero-shot labels for every case of a folder or manifest, into an nnU-Net "
                                          "dataset")
    parser.add_argument("input", help="folder of images (files or DICOM series folders), a CSV manifest "
                                      "(image[,prompt][,case_id]), or a DICOMweb root URL (a PACS)")
    parser.add_argument("--prompt", "-p", help="what to segment (a manifest's prompt column wins)")
    add_output_option(parser, "--raw", kind="folder", required=True, help="nnU-Net raw folder")
    parser.add_argument("--dataset-id", type=dataset_id_option, required=True)
    parser.add_argument("--name", type=dataset_name_option, required=True, help="dataset name (Dataset<NNN>_<name>)")
    parser.add_argument("--label-name", help="the label's name in dataset.json (default: the prompt)")
    parser.add_argument("--modality", type=channel_name_option, default="MRI", help="channel name: CT, MRI, US ...")
    parser.add_argument("--min-score", type=number(), default=0.0, help="keep cases under this score out of the set")
    parser.add_argument("--overwrite", action="store_true", help="redo cases labelled with other settings, and "
                        "replace cases this command did not write")
    parser.add_argument("--num-parts", type=at_least(1), default=1, help="split the cases for this many processes")
    parser.add_argument("--part-id", type=at_least(0), default=0, help="which part this process labels (0-based)")
    parser.add_argument("--finalize", action="store_true", help="only write dataset.json and labels.csv")
    parser.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                        help="label on a Ray cluster (no ADDRESS: a local Ray)")
    parser.add_argument("--ray-actors", type=at_least(1), default=1, help="model-holding actors (one per GPU)")
    parser.add_argument("--ray-gpus-per-actor", type=number(0), default=0.0)
    parser.add_argument("--oracle-saliency", action="store_true",
                        help="measurement only: saliency from the expert masks of <case> + <case>_mask pairs")
    parser.add_argument("--quiet", "-q", action="store_true")
    pacs = parser.add_argument_group("a DICOMweb server (PACS) as the input")
    pacs.add_argument("--study", metavar="UID", help="only this study (StudyInstanceUID)")
    pacs.add_argument("--pacs-modality", metavar="MODALITY", help="only series of this DICOM modality (MR, CT, "
                      "US ...; --modality names the dataset's channel)")
    pacs.add_argument("--pacs-token-file", help="file holding a bearer token for the server")
    # A cache, not an output: what is in it is reused on purpose (whole series only), so it is never refused.
    pacs.add_argument("--pacs-cache", help="where retrieved series are kept (default: medclipsam_dicom in the "
                      "dataset folder); a re-run retrieves only what is missing")
    pacs.add_argument("--stow", action="store_true", help="store each added case's DICOM SEG back on the server "
                      "(STOW-RS)")
    add_setting_options(parser)
    parser.set_defaults(func=cmd_label)


def cmd_label(args: argparse.Namespace) -> int:
    from ..setting_options import SETTING_OPTIONS, TqdmProgress
    from ..settings import FAST_SALIENCY
    from .export import dataset_dir

    folder = dataset_dir(args.raw, args.dataset_id, args.name)
    pacs = _open_pacs(args, folder)
    skipped = []
    if pacs is not None:
        cases, skipped = pacs
    else:
        cases = find_label_cases(Path(args.input), args.prompt, args.oracle_saliency,
                                 note=lambda text: print(f"note: {text}", file=sys.stderr))
    label_name = (args.label_name or args.prompt or (cases[0].prompt if cases else "")).strip()
    if not label_name:
        raise MedCLIPSAMError("Give --label-name (or --prompt): the label's name in dataset.json.")
    explicit = {f: getattr(args, d) for d, f in SETTING_OPTIONS.items() if getattr(args, d, None) is not None}
    if args.fast:
        explicit = {**FAST_SALIENCY, **explicit}
    check_folder(args.raw, "--raw")
    job = LabelJob(str(folder), label_name, explicit, args.modality, args.min_score, args.overwrite,
                   not args.no_preset, args.oracle_saliency)
    for prompt in sorted({c.prompt for c in cases}):
        job.settings_for(prompt)  # every prompt's settings checked before any model loads
    mine = part_of(cases, args.num_parts, args.part_id)
    start = time.perf_counter()
    if not args.finalize:
        if args.ray is not None:
            statuses = label_with_ray(mine, job, args.ray or None, args.ray_actors, args.ray_gpus_per_actor)
            rows = [{"case": c, "status": s} for c, s in sorted(statuses.items())]
        else:
            progress = TqdmProgress(not args.quiet)
            try:
                rows = label_cases(mine, job, progress)
            finally:
                progress.close()
        done = [r for r in rows if "skipped" not in r and r.get("status") != "skipped"]
        failed = sum(r.get("status") == "failed" for r in done)
        print(f"part {args.part_id + 1}/{args.num_parts}: {len(done) - failed} labelled, {failed} failed, "
              f"{len(rows) - len(done)} skipped in {time.perf_counter() - start:.0f} s")
        for row in rows:
            if row.get("status") == "failed" and "skipped" not in row:
                print(f"  {row['case']}: failed: {row.get('reason', '')}", file=sys.stderr)
            elif row.get("skipped", "done with the same settings") != "done with the same settings":
                print(f"note: {row['case']}: {row['skipped']}", file=sys.stderr)  # left alone: say so
    summary = finalize(cases, job)
    code = _close_pacs(args, folder, mine, skipped) if pacs is not None else 0
    if summary is None:
        missing = sum(read_record(folder, c.case_id) is None for c in cases)
        print(f"{missing} case(s) of other parts are not labelled yet; the last part (or --finalize) writes "
              "dataset.json and labels.csv.")
        return code
    excluded = f", excluded by review {summary['excluded']}" if summary["excluded"] else ""
    bad = f", skipped series {len(skipped)}" if pacs is not None and skipped else ""
    print(f"{folder}: {summary['numTraining']} training cases; added {summary['added']}, empty {summary['empty']}, "
          f"low score {summary['low-score']}, failed {summary['failed']}{excluded}{bad} (labels.csv)")
    return code


def _open_pacs(args: argparse.Namespace, folder: Path):
    """For a DICOMweb URL input: the checked cases and the skipped series (``weak.pacs``); else None."""
    from ..dicom.dicomweb import connect, is_dicomweb_url

    pacs_only = [option for option, value in (("--study", args.study), ("--pacs-modality", args.pacs_modality),
                                              ("--pacs-token-file", args.pacs_token_file),
                                              ("--pacs-cache", args.pacs_cache), ("--stow", args.stow)) if value]
    if not is_dicomweb_url(args.input):
        if pacs_only:
            raise MedCLIPSAMError(f"{', '.join(pacs_only)} need(s) a DICOMweb URL as the input, e.g. "
                                  "http://pacs:8042/dicom-web.")
        return None
    if args.oracle_saliency or args.ray is not None:
        raise MedCLIPSAMError("--oracle-saliency and --ray take a folder or manifest, not a DICOMweb URL.")
    from ..setting_options import TqdmProgress
    from .pacs import CACHE_FOLDER, pacs_series

    prompt = _need_prompt(args.prompt, args.input)
    check_folder(args.raw, "--raw")
    client = connect(args.input, args.pacs_token_file)
    progress = TqdmProgress(not args.quiet)
    try:
        series, skipped = pacs_series(client, Path(args.pacs_cache or folder / CACHE_FOLDER), args.study,
                                      args.pacs_modality, progress)
    finally:
        progress.close()
    return [LabelCase(case_id, str(path), prompt) for case_id, path in series], skipped


def _close_pacs(args: argparse.Namespace, folder: Path, cases: list[LabelCase], skipped) -> int:
    """With --stow: each added case's SEG not stored yet goes to the server (its record then says so); prints
    what was skipped or not stored, and returns the exit code (3 when anything was)."""
    from ..dicom.dicomweb import connect
    from .pacs import report, stow_files

    failures: list[str] = []
    if args.stow and not args.finalize:
        records = {c.case_id: read_record(folder, c.case_id) or {} for c in cases}
        todo = [(case, seg_path(folder, case)) for case, record in records.items()
                if record.get("status") == "added" and not record.get("stowed")]
        stored, failures = stow_files(connect(args.input, args.pacs_token_file), todo)
        for case in stored:
            _write_json(record_path(folder, case), {**records[case], "stowed": True})
        print(f"stored {len(stored)} SEG(s) on {args.input}")
    return report(skipped, failures)
