"""What the page shows, as one typed trame state (the logic writes it, the UI binds to it)."""
from __future__ import annotations

from dataclasses import dataclass, field

NO_TOOL, BOX_TOOL, INCLUDE_TOOL, EXCLUDE_TOOL = "none", "box", "include", "exclude"
"""The slice-view tool: none (the views' own navigation, window/level), a box drag, an include or exclude click."""


@dataclass
class SegmentRow:
    """One segment of the output segmentation as the panel lists it."""

    segment_id: str = ""
    name: str = ""
    color: str = "#ffffff"
    faithfulness: str = ""
    """The prompt-faithfulness score as text ("" for a segment that did not come from a prompt)."""
    warning: str = ""


@dataclass
class ReviewRow:
    case: str = ""
    uncertainty: str = ""
    status: str = ""


@dataclass
class PacsStudyRow:
    study_uid: str = ""
    title: str = ""


@dataclass
class PacsSeriesRow:
    series_uid: str = ""
    title: str = ""


@dataclass
class PanelState:
    volume_name: str = ""
    prompt: str = ""
    presets: list[str] = field(default_factory=list)
    running: bool = False
    progress: float = 0.0
    """0..100; -1 while the stage has no count (the bar runs indeterminate)."""
    stage: str = ""
    message: str = ""
    message_kind: str = "info"
    """info, success, warning or error: the colour of the message line."""
    engine_gone: bool = False
    """The engine process ended: the page offers Restart the engine."""
    segments: list[SegmentRow] = field(default_factory=list)
    selected_segment: str = ""
    show_saliency: bool = True
    has_saliency: bool = False
    tool: str = NO_TOOL
    correcting: bool = False
    can_undo: bool = False
    correction_message: str = ""
    export_folder: str = ""
    exported: list[str] = field(default_factory=list)
    dataset_folder: str = ""
    dataset_name: str = "MedCLIPSAM"
    review_folder: str = ""
    review_rows: list[ReviewRow] = field(default_factory=list)
    review_case: str = ""
    latency_ms: float = 0.0
    """How long the last correction took on the server side of the page (request to segment written)."""
    interactions: int = 0
    """Corrections applied so far (a browser benchmark waits for this to change)."""
    pacs_url: str = ""
    """The DICOMweb server the page browses ("" without --dicomweb: the PACS section is hidden)."""
    pacs_studies: list[PacsStudyRow] = field(default_factory=list)
    pacs_study: str = ""
    pacs_series: list[PacsSeriesRow] = field(default_factory=list)
    pacs_selected_series: str = ""
