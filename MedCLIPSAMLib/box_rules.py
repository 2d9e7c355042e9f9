"""The SAM stage's rules for turning one box into one mask (refinement, zoom, split): plain values that
``Settings`` chooses and ``models.box_prompting`` applies, kept below both so the settings never import a
model module."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BoxRules:
    """How each box prompt becomes a mask."""

    refine_rounds: int = 2
    """Re-prompt SAM with its own mask's box (SPEC 2.7)."""
    refine_margin: float = 0.0
    """The re-prompt box is the mask's box grown by this fraction of its size per side: box-trained SAMs saw
    slightly loose boxes, and a tight re-prompt box closes in on a lesion's dark core."""
    refine_keep_better: bool = False
    """Keep a re-prompted mask only when SAM's own IoU estimate does not fall."""
    refine_step: float = 1.0
    """Each round moves every side of the box this fraction of the way to the mask's box (1: all the way)."""
    refine_min_shrink: float = 0.0
    """Stop when no side of the mask's box moved in by more than this fraction of the box's size: the box was
    already tight, and re-prompting a tight box closes in on a lesion's core."""
    refine_below_fill: float = 1.0
    """Refine only when the first mask covers less than this fraction of its prompt box (1: always). A tight
    box is mostly lesion (an ellipse fills ~0.78 of its box) and re-prompting it closes in on the core; a
    loose box is mostly background, which is what refinement removes."""
    zoom_below: float = 0.0
    """Zoom when the box's longer side is under this fraction of the slice's longer side (0: never). As a
    fraction it means the same number of embedding tokens for LiteMedSAM (256 px) and SAM ViT (1024 px)."""
    zoom_context: float = 1.0
    """The zoomed crop: the box plus this many box sides of context on each side (square)."""
    split_fraction: float = 0.0
    """When a box's first mask falls apart into pieces, each at least this fraction of the largest, each
    piece gets its own box (two lungs under one box); 0: never."""
