"""Scaled-dot-product attention for SAM's ViT image encoder (an exact reformulation).

segment_anything computes attention as explicit matrices plus a decomposed relative-position
term. The same result is softmax(q k^T * scale + bias) v with the relative-position bias as
an additive mask, which ``F.scaled_dot_product_attention`` runs with fused kernels (much less
memory traffic on a GPU). Patched per module instance; the weights are untouched.
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F


def _relative_bias(module, q: torch.Tensor, height: int, width: int) -> torch.Tensor:
    from segment_anything.modeling.image_encoder import get_rel_pos

    rel_h = get_rel_pos(height, height, module.rel_pos_h)
    rel_w = get_rel_pos(width, width, module.rel_pos_w)
    r_q = q.reshape(q.shape[0], height, width, -1)
    bias_h = torch.einsum("bhwc,hkc->bhwk", r_q, rel_h)
    bias_w = torch.einsum("bhwc,wkc->bhwk", r_q, rel_w)
    bias = bias_h[:, :, :, :, None] + bias_w[:, :, :, None, :]
    return bias.reshape(q.shape[0], height * width, height * width)


def _sdpa_forward(self, x: torch.Tensor) -> torch.Tensor:
    batch, height, width, _ = x.shape
    qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, heads, HW, C)
    bias = None
    if self.use_rel_pos:
        flat_q = q.reshape(batch * self.num_heads, height * width, -1)
        bias = _relative_bias(self, flat_q, height, width).view(batch, self.num_heads, height * width, -1).to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    out = out.view(batch, self.num_heads, height, width, -1).permute(0, 2, 3, 1, 4).reshape(batch, height, width, -1)
    return self.proj(out)


def use_sdpa(image_encoder: torch.nn.Module) -> int:
    """Switch every attention module of a SAM ViT image encoder to SDPA; returns how many."""
    from segment_anything.modeling.image_encoder import Attention

    count = 0
    for module in image_encoder.modules():
        if isinstance(module, Attention):
            module.forward = types.MethodType(_sdpa_forward, module)
            count += 1
    return count
