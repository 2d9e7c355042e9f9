"""The last ViT block computed for the class token only: an exact shortcut for M2IB.

CLIP's image embedding is the class token after the last block (timm pooling ``token``), so of
the last block only the class token's query, attention output and MLP matter; the other tokens
contribute only their keys and values. Computing just that gives the same embedding with about
one sixth of the last block's arithmetic. M2IB runs blocks L+1.. forward and backward 10 times
per slice, so at BiomedCLIP's L = 9 (two blocks) this removes ~40 % of its work.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def class_token_only_applies(trunk: torch.nn.Module) -> bool:
    """True when the trunk pools its class token and its last block is timm's plain ``Block``.

    Anything else (average or attention pooling, other block or attention classes) takes the
    whole-block path, which is always right.
    """
    from timm.layers import Attention
    from timm.models.vision_transformer import Block

    blocks = getattr(trunk, "blocks", None)
    if not blocks or getattr(trunk, "attn_pool", None) is not None:
        return False
    if getattr(trunk, "global_pool", None) != "token" or getattr(trunk, "num_prefix_tokens", 0) < 1:
        return False
    last = blocks[-1]
    return type(last) is Block and type(last.attn) is Attention


def last_block_class_token(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm ``Block.forward`` (eval mode, no mask) restricted to the class token's output: (B, T, D) -> (B, 1, D)."""
    attn = block.attn
    batch, count, dim = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    h = block.norm1(x)
    weight, bias = attn.qkv.weight, attn.qkv.bias
    q = F.linear(h[:, :1], weight[:dim], None if bias is None else bias[:dim])
    kv = F.linear(h, weight[dim:], None if bias is None else bias[dim:])
    q = q.reshape(batch, 1, heads, head_dim).transpose(1, 2)
    k, v = kv.reshape(batch, count, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    out = F.scaled_dot_product_attention(q, k, v)
    out = attn.proj(attn.norm(out.transpose(1, 2).reshape(batch, 1, dim)))
    token = x[:, :1] + block.ls1(out)
    return token + block.ls2(block.mlp(block.norm2(token)))
