"""The command-line options every pipeline command shares (evaluate, label, segment ...), and what they
build: the run's Settings, a progress bar. They sit below the commands that register them, so a module's
own subcommand (``register_cli``) takes them from here instead of reaching up into ``cli``."""
from __future__ import annotations

import argparse
import re
import sys

from .errors import InputError, OptionError
from .inputs import read_text
from .settings import FAST_SALIENCY, PROMPT_MODES, RUNTIMES, SAM_BACKENDS, Settings


STAGE_UNITS = {"evaluate": "case", "label": "case"}
"""Unit of a stage's progress bar when it does not count slices."""


class TqdmProgress:
    """(stage, done, total) callback drawing one tqdm bar per stage on stderr."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.bar, self.stage = enabled, None, None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm
        if stage != self.stage:
            self.close()
            self.stage = stage
            unit = "B" if stage.startswith("download") else STAGE_UNITS.get(stage, "slice")
            self.bar = tqdm(total=total, desc=stage, unit=unit,
                            unit_scale=stage.startswith("download"), file=sys.stderr, leave=True)
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _slice_range(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if not match:
        raise argparse.ArgumentTypeError(f"'{text}' is not a slice or range; write N or FIRST-LAST, e.g. 10-20.")
    first = int(match.group(1))
    return first, int(match.group(2)) if match.group(2) else first


SETTING_OPTIONS = {  # option dest -> Settings field
    "clip_model": "clip_model", "layer": "bottleneck_layer", "beta": "beta", "steps": "m2ib_steps",
    "samples": "m2ib_samples", "k": "max_components", "prompt_mode": "prompt_mode",
    "points_per_component": "points_per_component", "sam": "sam_backend", "sam_checkpoint": "sam_checkpoint",
    "refine_rounds": "refine_rounds", "fill_holes": "fill_holes", "axis": "axis", "slices": "slice_range",
    "window": "window", "device": "device", "clip_batch_size": "clip_batch_size",
    "sam_batch_size": "sam_batch_size", "seed": "seed", "stride": "saliency_stride",
    "compile": "compile", "sam_input_size": "sam_input_size", "component_ratio": "component_ratio",
    "min_component_mm": "min_component_mm", "refine_margin": "refine_margin",
    "refine_min_shrink": "refine_min_shrink", "zoom_below": "zoom_below",
    "zoom_context": "zoom_context", "split_fraction": "split_fraction", "runtime": "runtime",
    "faithfulness_slices": "faithfulness_slices", "bf16": "bf16",
    "sam_encoder_bf16": "sam_encoder_bf16", "flat_saliency_cv": "flat_saliency_cv",
}


def option_name(field: str, args: argparse.Namespace | None = None) -> str:
    """The command-line name of a setting: the command's own option of that name, else the shared setting
    option (``--k`` for ``max_components``), else the field itself."""
    if args is not None and field in vars(args):
        return f"--{field.replace('_', '-')}"
    dest = next((d for d, f in SETTING_OPTIONS.items() if f == field), None)
    return f"--{dest.replace('_', '-')}" if dest else f"'{field}'"


def add_setting_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that runs the zero-shot pipeline (default: Settings' defaults)."""
    g = parser.add_argument_group("model and method (defaults: see Settings; prompt presets may set some)")
    g.add_argument("--clip-model", help="hf-hub id, local open_clip folder, or fine-tuned checkpoint")
    g.add_argument("--layer", type=int, help="M2IB bottleneck block (0-based)")
    g.add_argument("--beta", type=float, help="M2IB KL weight")
    g.add_argument("--steps", type=int, help="M2IB optimisation steps")
    g.add_argument("--samples", type=int, help="M2IB noise samples per step")
    g.add_argument("--stride", type=int,
                   help="CPU shortcut: saliency on every k-th slice and at the target's ends, interpolated inside")
    g.add_argument("--fast", action="store_true",
                   help="CPU shortcuts that measured cheap: --stride 4 --samples 3 (explicit options win)")
    g.add_argument("--k", type=int, help="at most this many salient components (and mask components) are kept")
    g.add_argument("--component-ratio", type=float,
                   help="keep components at least this fraction as confident as the best (0: the K most confident)")
    g.add_argument("--min-component-mm", type=float,
                   help="a salient component this wide (mm, sphere or disc) is never dropped as noise")
    g.add_argument("--prompt-mode", choices=PROMPT_MODES)
    g.add_argument("--points-per-component", type=int)
    g.add_argument("--sam", choices=SAM_BACKENDS, help="SAM backend (auto: LiteMedSAM on CPU, ViT-H on CUDA)")
    g.add_argument("--sam-checkpoint", help="local SAM ViT checkpoint (.pth) instead of downloading")
    g.add_argument("--sam-input-size", type=int, help="CPU shortcut: SAM ViT input side in px, e.g. 512")
    g.add_argument("--refine-rounds", type=int, help="box refinement rounds (0-5)")
    g.add_argument("--refine-margin", type=float, help="re-prompt box margin, a fraction of its size per side")
    g.add_argument("--refine-min-shrink", type=float,
                   help="stop refining when the mask's box is within this fraction of the box on every side")
    g.add_argument("--zoom-below", type=float,
                   help="SAM on a zoomed crop for boxes under this fraction of the slice's side (0: never)")
    g.add_argument("--zoom-context", type=float, help="context around a zoomed box, in box sides per side")
    g.add_argument("--split-fraction", type=float,
                   help="a box whose mask falls into pieces this large (vs the largest) gets a box per piece")
    g.add_argument("--fill-holes", action="store_const", const=True)
    g.add_argument("--axis", type=int, help="slice axis in (z, y, x) array order; default: through-plane")
    g.add_argument("--slices", type=_slice_range, help="slice N or range FIRST-LAST (inclusive)")
    g.add_argument("--window", help="CT window preset: lung, soft_tissue, brain, bone, liver")
    g.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    g.add_argument("--clip-batch-size", type=int, help="slices per M2IB batch (default 16)")
    g.add_argument("--sam-batch-size", type=int, help="slices per SAM encoder call (default: 1 on CPU, 4 on CUDA)")
    g.add_argument("--seed", type=int)
    g.add_argument("--compile", action="store_const", const=True, help="torch.compile the M2IB network")
    g.add_argument("--faithfulness-slices", type=int,
                   help="prompt check: does the result look like the prompt? CLIP on this many of each prompt's "
                        "strongest slices (default 2; 0: off)")
    g.add_argument("--runtime", choices=RUNTIMES,
                   help="auto: SAM's encoder exported to OpenVINO / ONNX Runtime on a CPU, and the M2IB shortcuts "
                        "(faster; the same result within the tolerances in docs/benchmarks.md); torch: PyTorch only, "
                        "fp32 on a CPU")
    g.add_argument("--sam-encoder-bf16", action="store_const", const=True,
                   help="on a CPU with AMX or AVX512-BF16: LiteMedSAM's encoder in bfloat16 (1.8-2.4x faster "
                        "encoder; Dice moved by up to 0.7 points, docs/cpu-speed.md)")
    g.add_argument("--fp32", dest="bf16", action="store_const", const=False,
                   help="no bfloat16 anywhere (GPUs, and CPUs with AMX or AVX512-BF16, use it by default: faster, "
                        "maps within the tolerances in docs/cpu-speed.md)")
    g.add_argument("--flat-saliency-cv", type=float,
                   help="CPU shortcut: M2IB stops after 2 steps on slices whose map varies less than this (0: off)")
    g.add_argument("--no-preset", action="store_true", help="ignore prompt presets")


def settings_from_args(args: argparse.Namespace, prompt: str | None) -> Settings:
    """Settings defaults, then the prompt's preset, then the user's explicit options."""
    from .presets import apply_preset

    explicit = {field: getattr(args, dest) for dest, field in SETTING_OPTIONS.items()
                if getattr(args, dest, None) is not None}
    settings = Settings()
    if prompt is not None and not args.no_preset:
        settings, _ = apply_preset(settings, prompt, explicit)
    if getattr(args, "fast", False):
        explicit = {**FAST_SALIENCY, **explicit}
    if explicit.get("sam_backend") == "litemedsam":
        for field, option in (("sam_checkpoint", "--sam-checkpoint"), ("sam_input_size", "--sam-input-size")):
            if field in explicit:
                raise OptionError(f"{option} is for the SAM ViT models (--sam vit_b/vit_l/vit_h); LiteMedSAM uses "
                                  "its own weights at 256 px: drop the option.")
    return settings.replace(**explicit)


def prompt_sentences(path: str) -> list[str]:
    """The sentences of a prompt file (one per line), averaged as one ensemble prompt."""
    sentences = [line.strip() for line in read_text(path, "Prompt file").splitlines() if line.strip()]
    if not sentences:
        raise InputError(f"Prompt file '{path}' holds no sentences.")
    return sentences
