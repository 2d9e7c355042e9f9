"""Which case a reviewer should look at next: the dataset's labels.csv (and nnU-Net's uncertainty.csv)
ordered by need.

Order: interrupted reviews first (a crash left them half done), then cases without a label (failed, then
empty), then the labelled cases by lowest zero-shot score (those whose result did not look like the prompt,
faithfulness under its threshold, first), or, when a predictions folder is given, by
highest mean nnU-Net entropy (cases it did not predict follow, by score); reviewed cases last.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..faithfulness import is_unfaithful
from ..inputs import read_text
from ..weak.export import case_paths, read_dataset_json
from ..review_state import DONE, EXCLUDED, INTERRUPTED, excluded_paths, read_states, review_column

NO_LABEL = ("failed", "empty")
SOURCES = ("zero-shot score", "nnU-Net entropy")


@dataclass
class QueueItem:
    case: str
    status: str
    """labels.csv status: added, empty, low-score or failed."""
    score: float | None
    entropy: float | None
    """Mean entropy (bits) of nnU-Net's ensemble, when a predictions folder was given."""
    review: dict[str, Any] | None
    reason: str = ""
    faithfulness: float | None = None
    """labels.csv's faithfulness: under the threshold, the result did not look more like the prompt than like none."""

    @property
    def state(self) -> str:
        """pending, accepted, excluded, accepting or excluding."""
        return (self.review or {}).get("state", "pending")

    @property
    def reviewed(self) -> bool:
        return self.state in DONE

    def describe(self) -> str:
        """One line for the panel's list."""
        if self.reviewed:
            dsc = (self.review or {}).get("dsc")
            detail = f", DSC {dsc:.3f} vs pseudo-label" if self.state != EXCLUDED and dsc is not None else ""
            return f"[{review_column(self.review)}] {self.case}{detail}"
        if self.state in INTERRUPTED:
            return f"[interrupted: {self.state}] {self.case}"
        if self.status in NO_LABEL:
            return f"{self.case}: {self.status}" + (f" ({self.reason})" if self.reason else "")
        measures = [f"entropy {self.entropy:.3f} bits" if self.entropy is not None else "",
                    f"score {self.score:.3f}" if self.score is not None else "",
                    f"faithfulness {self.faithfulness:.2g} (result does not look like the prompt)"
                    if is_unfaithful(self.faithfulness) else "", self.status]
        return f"{self.case}: " + ", ".join(m for m in measures if m)


@dataclass
class ReviewDataset:
    """An nnU-Net raw dataset written by ``medclipsam label``, as the review sees it."""

    folder: Path
    rows: dict[str, dict[str, str]]
    """labels.csv, case -> row."""
    predictions: Path | None = None
    uncertainty: dict[str, dict[str, str]] | None = None

    @property
    def label_name(self) -> str:
        labels = (read_dataset_json(self.folder) or {}).get("labels", {})
        named = [name for name, value in labels.items() if value == 1]
        if named:
            return named[0]
        prompts = [row.get("prompt", "") for row in self.rows.values() if row.get("prompt")]
        return prompts[0] if prompts else "target"

    @property
    def source(self) -> str:
        return SOURCES[1] if self.uncertainty is not None else SOURCES[0]

    def image_path(self, case: str) -> Path:
        """The case's image: in imagesTr, kept aside by an exclusion, or (not in the set) the source image."""
        row = self.row(case)
        candidates = [case_paths(self.folder, case)[0], excluded_paths(self.folder, case)[0]]
        if row.get("image"):
            candidates.append(Path(row["image"]))
        for path in candidates:
            if path.exists():
                return path
        raise InputError(f"Case '{case}': its image is missing (looked for {', '.join(str(p) for p in candidates)}); "
                         "restore the image, or exclude the case.")

    def label_path(self, case: str) -> Path | None:
        """The case's current label (in labelsTr, or kept aside by an exclusion); None when it has none."""
        self.row(case)
        return next((p for p in (case_paths(self.folder, case)[1], excluded_paths(self.folder, case)[1])
                     if p.exists()), None)

    def entropy_path(self, case: str) -> Path | None:
        """nnU-Net's entropy map of the case (``nnunet-predict`` writes ``<case>_entropy.nii.gz``)."""
        if self.predictions is None:
            return None
        path = self.predictions / f"{case}_entropy.nii.gz"
        return path if path.is_file() else None

    def row(self, case: str) -> dict[str, str]:
        if case not in self.rows:
            raise InputError(f"Case '{case}' is not in {self.folder / 'labels.csv'}; pick a case of the queue.")
        return self.rows[case]

    def queue(self) -> list[QueueItem]:
        states = read_states(self.folder)
        items = [QueueItem(case, row.get("status", ""), _number(row.get("score")),
                           _number((self.uncertainty or {}).get(case, {}).get("mean_entropy_bits")),
                           states.get(case), row.get("reason", ""), _number(row.get("faithfulness")))
                 for case, row in self.rows.items()]
        return sorted(items, key=priority)


def priority(item: QueueItem) -> tuple:
    """Sort key: smaller is reviewed first."""
    if item.reviewed:
        return (4, item.case)
    if item.state in INTERRUPTED:
        return (0, item.case)
    if item.status in NO_LABEL:
        return (1, NO_LABEL.index(item.status), item.case)
    score = item.score if item.score is not None else math.inf
    if item.entropy is not None:
        return (2, -item.entropy, score, item.case)
    return (3, not is_unfaithful(item.faithfulness), score, item.case)


def upcoming(queue: list[QueueItem], current: str | None = None, order: list[str] | None = None) -> list[QueueItem]:
    """The cases still to review, in queue order from the one after ``current`` on, then the ones before it
    (``current`` last, if still pending).

    ``order``: the case order when ``current`` was opened; accepting a case moves it to the end of the queue,
    and the reviewer should still go on from where it stood."""
    pending = [item for item in queue if not item.reviewed]
    order = order or [item.case for item in queue]
    if current not in order:
        return pending
    after = set(order[order.index(current) + 1:])
    return ([item for item in pending if item.case in after]
            + [item for item in pending if item.case not in after and item.case != current]
            + [item for item in pending if item.case == current])


def next_case(queue: list[QueueItem], current: str | None = None) -> QueueItem | None:
    """The first case still to review after ``current``, else None."""
    return next(iter(upcoming(queue, current)), None)


def _number(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _read_csv(path: Path, what: str, needed: tuple[str, ...]) -> list[dict[str, str]]:
    text = read_text(path, what)
    reader = csv.DictReader(text.splitlines())
    missing = [name for name in needed if name not in (reader.fieldnames or [])]
    if missing:
        raise InputError(f"{what} '{path}' has no {', '.join(missing)} column; it is not the file MedCLIP-SAM wrote.")
    return list(reader)


def open_dataset(folder: str | Path, predictions: str | Path | None = None) -> ReviewDataset:
    """Check and read a dataset (and optional predictions folder); every problem is a one-line error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"Dataset folder '{folder}' does not exist; choose the Dataset<NNN>_<Name> folder that "
                         "'medclipsam label' wrote.")
    if not any((folder / name).exists() for name in ("dataset.json", "imagesTr", "labelsTr")):
        raise InputError(f"'{folder}' is not an nnU-Net raw dataset (no dataset.json, imagesTr or labelsTr); choose "
                         "the Dataset<NNN>_<Name> folder that 'medclipsam label' wrote.")
    if not (folder / "labels.csv").is_file():
        raise InputError(f"'{folder}' has no labels.csv; run 'medclipsam label' on it to the end (or with --finalize) "
                         "first.")
    rows = {row["case"]: row for row in _read_csv(folder / "labels.csv", "Label list", ("case", "status"))
            if row.get("case")}
    if not rows:
        raise InputError(f"'{folder / 'labels.csv'}' lists no case; run 'medclipsam label' on this dataset first.")
    read_dataset_json(folder)  # a damaged dataset.json is reported now, not at the first accept
    read_states(folder)
    if predictions is None:
        return ReviewDataset(folder, rows)
    predictions = Path(predictions)
    if not (predictions / "uncertainty.csv").is_file():
        raise InputError(f"Predictions folder '{predictions}' has no uncertainty.csv; give the --out folder of "
                         "'medclipsam nnunet-predict', or no predictions folder to order by zero-shot score.")
    uncertainty = {row["case"]: row for row in _read_csv(predictions / "uncertainty.csv", "Uncertainty table",
                                                         ("case", "mean_entropy_bits")) if row.get("case")}
    return ReviewDataset(folder, rows, predictions, uncertainty)
