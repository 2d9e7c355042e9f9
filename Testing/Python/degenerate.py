"""A degenerate text tower for the faithfulness tests and measurement: its output ignores the text.

The last BERT layer's output LayerNorm gets weight 0 and a fixed bias, so every token's final state,
hence the pooled and projected embedding, is the same whatever the tokens say. It is an ordinary
state dict change: the model saves and loads like any other (a server can serve it from a folder).
"""
from __future__ import annotations

import torch


def ignore_text(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Make ``model``'s (open_clip + Hugging Face BERT) text tower ignore its input, in place."""
    norm = model.text.transformer.encoder.layer[-1].output.LayerNorm
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.weight.zero_()
        norm.bias.copy_(torch.randn(norm.bias.shape, generator=generator))
    return model
