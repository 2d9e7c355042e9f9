"""The faithfulness check's CLIP side: image embeddings of what the CLIP model is shown (faithfulness.py).

Each view is a slice, or a crop of it around the prompt's result region resized back to the slice's shape
(so the views batch together and the crop is seen as large as a whole slice would be). A few image forwards
per prompt: cheap next to M2IB, which runs ten noise samples of ten steps per slice.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .faithfulness import View
from .models.clip import ClipBundle
from .saliency import clip_inputs


def view_images(slices: np.ndarray, views: list[View]) -> np.ndarray:
    """uint8 (len(views), H, W): each view's slice, cropped to its box and resized back to H x W."""
    height, width = slices.shape[1:]
    out = np.empty((len(views), height, width), dtype=np.uint8)
    for i, (z, box) in enumerate(views):
        if box is None:
            out[i] = slices[z]
            continue
        top, bottom, left, right = box
        patch = torch.as_tensor(slices[z, top:bottom, left:right], dtype=torch.float32)[None, None]
        resized = F.interpolate(patch, size=(height, width), mode="bilinear", align_corners=False)
        out[i] = resized[0, 0].round().clamp(0, 255).to(torch.uint8).numpy()
    return out


@torch.no_grad()
def image_embeddings(bundle: ClipBundle, images: np.ndarray, device: torch.device, batch: int = 8) -> np.ndarray:
    """L2-normalised CLIP image embeddings (n, d) of uint8 images (n, H, W)."""
    rows = []
    for start in range(0, len(images), max(1, batch)):
        pixels, _ = clip_inputs(images[start:start + batch], bundle, device)
        features = bundle.model.encode_image(pixels)
        rows.append(F.normalize(features.float(), dim=-1).cpu().numpy())
    return np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float32)


def embed_views(bundle: ClipBundle, slices: np.ndarray, views: list[View], device: torch.device,
                batch: int = 8) -> np.ndarray:
    """What ``prompt_faithfulness`` needs: one embedding per view of ``slices``."""
    return image_embeddings(bundle, view_images(slices, views), device, batch)
