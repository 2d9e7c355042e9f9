"""One SAM decoder pass with any mix of prompts: a box, labelled clicks, the previous mask's logits.

``SamBackend.decode`` takes boxes or positive points (what the text pipeline makes); an interaction
also needs negative clicks, a box together with clicks, and the slice's previous low-resolution
logits as the mask prompt, all of which SAM's prompt encoder accepts in one call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..prompts import Box

if TYPE_CHECKING:
    from ..models.sam import EncodedSlice, SamBackend

Click = tuple[int, int, bool]
"""x, y in slice pixels, and True for a positive (add) click, False for a negative (remove) one."""


@dataclass
class Decoded:
    mask: np.ndarray
    """Binary mask at the slice's size."""
    iou: float
    """SAM's own estimate of the mask's IoU."""
    logits: torch.Tensor
    """Low-resolution logits (1, 1, 4h, 4w): the mask prompt of a later pass on the same slice."""


def _model_coords(xy: np.ndarray, encoded: "EncodedSlice") -> np.ndarray:
    (height, width), (new_h, new_w) = encoded.original_hw, encoded.input_hw
    return xy * np.array([new_w / width, new_h / height], dtype=np.float32)


def decode(backend: "SamBackend", encoded: "EncodedSlice", box: Box | None = None,
           clicks: Sequence[Click] = (), mask_logits: torch.Tensor | None = None) -> Decoded:
    """SAM's single mask for a box and/or clicks (and optionally the previous logits) on one slice."""
    return _decode(backend, encoded, box, clicks, mask_logits, multimask=False)[0]


def decode_candidates(backend: "SamBackend", encoded: "EncodedSlice", box: Box) -> list[Decoded]:
    """SAM's single mask for a box and its three multimask candidates (whole, part, sub-part in SAM's training),
    from one decoder pass: the answers a click's fallback chooses from (see honour.py)."""
    return _decode(backend, encoded, box, (), None, multimask=True)


@torch.no_grad()
def _decode(backend: "SamBackend", encoded: "EncodedSlice", box: Box | None, clicks: Sequence[Click],
            mask_logits: torch.Tensor | None, multimask: bool) -> list[Decoded]:
    if box is None and not clicks:
        raise ValueError("decode needs a box or at least one click")
    device = backend.device
    points = None
    if clicks:
        coords = _model_coords(np.array([[x, y] for x, y, _ in clicks], dtype=np.float32), encoded)
        labels = np.array([1 if positive else 0 for _, _, positive in clicks], dtype=np.float32)
        if box is None:  # SAM's convention: a padding point (label -1) when no box follows the clicks
            coords = np.concatenate([coords, np.zeros((1, 2), np.float32)])
            labels = np.concatenate([labels, [-1.0]]).astype(np.float32)
        points = (torch.as_tensor(coords[None], device=device), torch.as_tensor(labels[None], device=device))
    boxes = None
    if box is not None:
        corners = _model_coords(np.asarray(box, dtype=np.float32).reshape(2, 2), encoded).reshape(1, 4)
        boxes = torch.as_tensor(corners, device=device)
    sparse, dense = backend.model.prompt_encoder(points=points, boxes=boxes, masks=mask_logits)
    decoder = backend.model.mask_decoder
    inputs = dict(image_embeddings=encoded.embedding, image_pe=backend.model.prompt_encoder.get_dense_pe(),
                  sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)
    if multimask:  # every output token at once (the forward pass keeps either the first or the other three)
        low_res, iou = decoder.predict_masks(**inputs)
    else:
        low_res, iou = decoder(**inputs, multimask_output=False)
    low_res = low_res.float()
    logits = F.interpolate(low_res, size=(backend.image_size,) * 2, mode="bilinear", align_corners=False)
    logits = logits[..., :encoded.input_hw[0], :encoded.input_hw[1]]
    logits = F.interpolate(logits, size=encoded.original_hw, mode="bilinear", align_corners=False)
    return [Decoded((logits[0, k] > 0).cpu().numpy(), float(iou[0, k]), low_res[:, k:k + 1])
            for k in range(low_res.shape[1])]
