"""Every knob of the pipeline in one dataclass shared by the CLI, Slicer and the tests.

Defaults follow the MedCLIP-SAMv2 paper and the authors' scripts unless the
docstring of a field says why we differ.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

from .errors import InputError, SettingError

BIOMEDCLIP_HUB_ID = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
SAM_BACKENDS = ("auto", "litemedsam", "vit_b", "vit_l", "vit_h")
PROMPT_MODES = ("boxes", "box_all", "points")
RUNTIMES = ("auto", "torch")


DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
"""Device names a run accepts; anything else would be a torch traceback."""


def check_device(name: str) -> str:
    """Refuse a device name torch cannot parse (``--device foo``), before torch is even imported."""
    if not isinstance(name, str) or not DEVICE_PATTERN.fullmatch(name):
        raise SettingError("device", f"Unknown {{name}} '{name}': use auto, cpu, cuda or cuda:N.", "device")
    return name


CT_WINDOWS: dict[str, tuple[float, float]] = {
    # name: (level, width) in Hounsfield units
    "lung": (-600.0, 1500.0),
    "soft_tissue": (40.0, 400.0),
    "brain": (40.0, 80.0),
    "bone": (400.0, 1800.0),
    "liver": (60.0, 160.0),
}


FAST_SALIENCY = {"saliency_stride": 4, "m2ib_samples": 3}
"""The CPU shortcuts that measured cheap (docs/benchmarks.md): M2IB on every 4th slice plus the target's
ends, 3 noise samples instead of 10 (10 steps kept: fewer steps measured costly)."""


WHOLE_NUMBER_RANGES: dict[str, tuple[int, int]] = {
    "m2ib_steps": (1, 100), "m2ib_samples": (1, 20), "clip_batch_size": (1, 32), "sam_batch_size": (1, 16),
    "max_components": (1, 20), "points_per_component": (1, 10), "saliency_stride": (1, 64),
    "refine_rounds": (0, 5), "bottleneck_layer": (0, 47),
}
"""Allowed ranges of the whole-number settings, one rule for the command line (an option error) and the
server (400): each upper end is several times what a run needs (paper: 10 steps, 10 samples; defaults:
batch 16 and 1-4), so a request cannot make one M2IB step or SAM batch run for minutes or fill the
device's memory (a job is cancelled between steps and model layers: docs/server.md)."""
MAX_SLICE_INDEX = 99_999
"""Slice ranges beyond any real volume are refused, not clipped."""


@dataclass
class Settings:
    """Parameters of one zero-shot segmentation run."""

    # --- CLIP and M2IB saliency (SPEC 2.2-2.3) ---
    clip_model: str = BIOMEDCLIP_HUB_ID
    """Hub id, local open_clip folder, or a fine-tuned checkpoint file."""
    bottleneck_layer: int = 9
    """0-based vision block whose output tokens carry the bottleneck (authors' scripts: 9)."""
    beta: float = 1.0
    """KL weight: 1.0 breast (authors), 2.0 brain; prompt presets override it."""
    m2ib_steps: int = 10
    m2ib_lr: float = 1.0
    m2ib_samples: int = 10
    """Noise samples per image and step."""
    seed: int = 0
    """Seed of the bottleneck noise, so the same input gives the same map."""

    # --- coarse mask and prompts (SPEC 2.4-2.5, 3) ---
    max_components: int = 1
    """K: at most this many salient components (and final mask components) are kept."""
    component_ratio: float = 0.0
    """Of those, keep each whose confidence is at least this fraction of the most confident one's, so a
    multi-focal target keeps its lesions and a single one drops dimmer noise (0: the K most confident)."""
    prompt_mode: str = "boxes"
    """boxes: one box per component; box_all: one box around all; points: positive points."""
    points_per_component: int = 3
    min_component_fraction: float = 0.001
    """Salient components smaller than this fraction of the processed voxels are noise ..."""
    min_component_mm: float = 5.0
    """... unless they are at least a sphere (a disc on one slice) of this diameter in mm: a relative floor
    alone drops every target under ~4 cm in a 512 x 512 x 300 CT. Files without spacing count 1 px as 1 mm;
    0: no physical floor."""

    # --- SAM (SPEC 2.6-2.7) ---
    sam_backend: str = "auto"
    """auto: LiteMedSAM on CPU (offline, fast), SAM ViT-H on CUDA (paper's best)."""
    sam_checkpoint: str | None = None
    """Local SAM checkpoint; None downloads the official one into the cache."""
    sam_input_size: int | None = None
    """CPU shortcut for the SAM ViT models: input side in px (e.g. 512); None: the model's own 1024."""
    refine_rounds: int = 2
    """Re-prompt SAM with its own mask's box (SPEC 2.7); 0 disables."""
    refine_margin: float = 0.0
    """The re-prompt box is the mask's box grown by this fraction of its size per side."""
    refine_keep_better: bool = False
    """Keep a re-prompted mask only when SAM's own IoU estimate does not fall."""
    refine_min_shrink: float = 0.05
    """Stop refining when no side of the mask's box lies more than this fraction of the box's size inside it:
    the box was already tight (measured on oracle boxes: tight boxes lose less, loose ones gain as before)."""
    zoom_below: float = 0.0
    """Zoom in (SAM on a crop at the model's full input size) for boxes whose longer side is under this
    fraction of the slice's; 0 never."""
    zoom_context: float = 1.0
    """Context around a zoomed box, in box sides per side."""
    split_fraction: float = 0.0
    """Give each piece of a box's first mask its own box when every piece is at least this fraction of the
    largest (two lungs merged in the saliency map); 0 never."""
    fill_holes: bool = False

    # --- volumes (SPEC 3) ---
    axis: int | None = None
    """Slice axis in array order (z, y, x) = (0, 1, 2); None: the through-plane axis."""
    slice_range: tuple[int, int] | None = None
    """Inclusive first and last slice to process; None: all."""
    window: str | None = None
    """CT window preset name (CT_WINDOWS); None: robust percentiles."""
    saliency_stride: int = 1
    """CPU shortcut: M2IB on every k-th slice and, found by bisection, where the target starts and ends; maps
    interpolated in between (1: every slice; measured cost in docs/benchmarks.md)."""
    min_body_fraction: float = 0.01
    """Slices where fewer than this fraction of pixels are above 10% intensity (air) are skipped."""
    flat_saliency_cv: float = 0.0
    """CPU shortcut: a slice whose M2IB map, after 2 of its steps, varies less than this (std / mean over its
    tokens) stops there and counts as showing nothing (the volume's lowest saliency); 0: off. Measured cost in
    docs/cpu-speed.md."""
    faithfulness_slices: int = 2
    """Prompt faithfulness check: on this many of each prompt's strongest slices, CLIP compares the crop around the
    result region with the prompt and with null prompts (faithfulness.py; measured cost in docs/benchmarks.md); 0: off."""

    # --- execution ---
    device: str = "auto"
    """auto: CUDA when available, else CPU."""
    bf16: bool = True
    """bfloat16 autocast on CUDA; on a CPU that multiplies bf16 in hardware (AMX or AVX512-BF16), M2IB's optimised
    blocks from a bfloat16 copy when ``runtime`` is auto (0.4-0.5x the CPU time there; never where bf16 would be
    emulated, e.g. AVX2-only laptops: models/cpu_paths.py, docs/cpu-speed.md)."""
    sam_encoder_bf16: bool = False
    """On a CPU with native bf16 (AMX, AVX512-BF16) and OpenVINO, LiteMedSAM's exported encoder in bfloat16: 2.4x
    faster than its fp32 with AMX, 1.8x with AVX512-BF16, but the oracle-saliency Dice moved by up to 0.7 points
    (lungs; docs/cpu-speed.md) and final masks by up to 0.08 DSC (docs/cpu-speed.md), so it is opt-in."""
    compile: bool = False
    """torch.compile the M2IB inner network (pays a one-off compile time per shape)."""
    runtime: str = "auto"
    """auto: the fastest exact path: on a CPU, SAM's image encoder in ONNX Runtime (exported at first use,
    checked against PyTorch), M2IB's last block for the class token only, and with ``bf16`` on a CPU with AMX
    M2IB's optimised blocks in bfloat16; torch: plain PyTorch in fp32 as before (the benchmark's baseline).
    The same result within the measured tolerances of docs/benchmarks.md."""
    clip_batch_size: int = 16
    sam_batch_size: int | None = None
    """Slices per SAM encoder call; None: 1 on a CPU, where batches measured slower per slice
    (LiteMedSAM encoder 1.37 s at 1, 1.63 s at 4: cache-bound), and 4 on CUDA."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Reject values that cannot work, before any model is loaded."""
        if self.sam_backend not in SAM_BACKENDS:
            raise SettingError("sam_backend", f"Unknown SAM backend '{self.sam_backend}' ({{name}}). "
                               f"Choose one of: {', '.join(SAM_BACKENDS)}.")
        if self.window is not None and self.window not in CT_WINDOWS:
            raise SettingError("window", f"Unknown CT window '{self.window}' ({{name}}). Choose one of: "
                               f"{', '.join(CT_WINDOWS)}.")
        if self.runtime not in RUNTIMES:
            raise SettingError("runtime", f"Unknown runtime '{self.runtime}' ({{name}}). Choose one of: "
                               f"{', '.join(RUNTIMES)}.")
        if self.prompt_mode not in PROMPT_MODES:
            raise SettingError("prompt_mode", f"Unknown prompt mode '{self.prompt_mode}' ({{name}}). "
                               f"Choose one of: {', '.join(PROMPT_MODES)}.")
        for name, (low, high) in WHOLE_NUMBER_RANGES.items():
            value = getattr(self, name)
            if value is not None and not low <= value <= high:
                raise SettingError(name, f"{{name}} must be between {low} and {high} (got {value}).")
        if not 0 <= self.faithfulness_slices <= 16:
            raise SettingError("faithfulness_slices", f"{{name}} must be between 0 (off) and 16 (got "
                               f"{self.faithfulness_slices}).")
        fractions = {"component_ratio": self.component_ratio, "zoom_below": self.zoom_below,
                     "split_fraction": self.split_fraction, "min_body_fraction": self.min_body_fraction,
                     "min_component_fraction": self.min_component_fraction,
                     "flat_saliency_cv": self.flat_saliency_cv}
        for name, value in fractions.items():
            if not 0 <= value <= 1:
                raise SettingError(name, f"{{name}} must be between 0 and 1 (got {value}).")
        spans = {"refine_margin": (self.refine_margin, 1.0), "refine_min_shrink": (self.refine_min_shrink, 0.5),
                 "zoom_context": (self.zoom_context, 4.0), "min_component_mm": (self.min_component_mm, 1000.0)}
        for name, (value, high) in spans.items():
            if not 0 <= value <= high:
                raise SettingError(name, f"{{name}} must be between 0 and {high:g} (got {value}).")
        if not 0 <= self.beta < math.inf:  # also refuses NaN
            raise SettingError("beta", f"{{name}} must be a finite number >= 0 (got {self.beta}).")
        if not 0 < self.m2ib_lr <= 100:
            raise SettingError("m2ib_lr", f"{{name}} must be above 0 and at most 100 (got {self.m2ib_lr}).")
        if not 0 <= self.seed < 2 ** 63:
            raise SettingError("seed", f"{{name}} must be between 0 and 2**63 - 1 (got {self.seed}).")
        size = self.sam_input_size
        if size is not None and not (64 <= size <= 1024 and size % 16 == 0):
            raise SettingError("sam_input_size", f"{{name}} must be a multiple of 16 between 64 and 1024 (got {size}).")
        if self.axis is not None and not -3 <= self.axis <= 2:
            raise SettingError("axis", f"{{name}} {self.axis} is out of range: use 0 (z), 1 (y) or 2 (x).", "Axis")
        if self.slice_range is not None:
            first, last = self.slice_range
            if first < 0 or last < first or last > MAX_SLICE_INDEX:
                raise SettingError("slice_range", f"{{name}} {first}-{last} is invalid: give FIRST-LAST with "
                                   f"0 <= FIRST <= LAST <= {MAX_SLICE_INDEX}.", "Slice range")
        check_device(self.device)

    def box_rules(self):
        """The SAM-stage rules (``box_rules.BoxRules``) these settings choose."""
        from .box_rules import BoxRules

        return BoxRules(refine_rounds=self.refine_rounds, refine_margin=self.refine_margin,
                        refine_keep_better=self.refine_keep_better, refine_min_shrink=self.refine_min_shrink,
                        zoom_below=self.zoom_below,
                        zoom_context=self.zoom_context, split_fraction=self.split_fraction)

    def sam_batch_for(self, device_type: str) -> int:
        """The SAM encoder batch on this device type ('cpu' or 'cuda')."""
        if self.sam_batch_size is not None:
            return self.sam_batch_size
        return 4 if device_type == "cuda" else 1

    def replace(self, **changes: Any) -> "Settings":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SERVER_FIELDS = ("clip_model", "sam_checkpoint", "device", "compile")
"""Fields an engine server chooses when it starts (``medclipsam serve``), never a request: they name files
on the server or its hardware."""


def settings_object(values: Any) -> dict[str, Any]:
    """JSON-like settings as a dict (None: none); anything but an object is refused."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise InputError(f"Settings must be an object of field names and values, not {type(values).__name__}.")
    return values


def settings_from_dict(values: dict[str, Any], base: Settings | None = None, hidden: Iterable[str] = ()) -> Settings:
    """Settings from JSON-like values (a server request, a saved panel), checked field by field.

    Unknown names and values of the wrong type are refused with a message naming the field, instead
    of failing later inside the pipeline. ``hidden``: fields the caller may not set, left out of that list.
    """
    values = settings_object(values)
    defaults = Settings()
    known = {f.name for f in dataclasses.fields(Settings)}
    changes = {}
    for name, value in values.items():
        if name not in known:
            raise InputError(f"Unknown setting '{name}'. Known settings: {', '.join(sorted(known - set(hidden)))}.")
        changes[name] = _checked_value(name, value, getattr(defaults, name))
    return (base or defaults).replace(**changes)


_OPTIONAL = {"sam_checkpoint": str, "sam_input_size": int, "axis": int, "window": str, "sam_batch_size": int,
             "slice_range": tuple}
"""Fields whose default is None, with the type of a value that is not None."""


def _checked_value(name: str, value: Any, default: Any) -> Any:
    kind = _OPTIONAL.get(name, type(default))
    if value is None and name in _OPTIONAL:
        return None
    if kind is tuple:
        if (isinstance(value, (list, tuple)) and len(value) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            return (int(value[0]), int(value[1]))
        raise InputError(f"Setting '{name}' must be two whole numbers [first, last] (got {value!r:.60}).")
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise InputError(f"Setting '{name}' is too large (got a {len(str(value))}-digit number).") from None
    if kind is int and isinstance(value, bool):
        raise InputError(f"Setting '{name}' must be a whole number (got {value!r}).")
    if isinstance(value, kind):
        return value
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}
    raise InputError(f"Setting '{name}' must be {names.get(kind, kind.__name__)} (got {value!r:.60}).")
