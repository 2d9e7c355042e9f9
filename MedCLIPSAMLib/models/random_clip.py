"""Offline CLIP models with random weights: the real classes, no hub lookup at all.

Used by the tests (tiny ViT + tiny BERT, seconds on a CPU) and by the benchmark (the
BiomedCLIP architecture: ViT-B/16 + a PubMedBERT-sized BERT; weights do not change cost).
The text tower's config, vocabulary and tokenizer config are written to a local folder,
which is then loaded through the same ``load_clip_folder`` path as real weights.
"""
from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from .clip import ClipBundle, biomedclip_model_config, build_clip, load_clip_folder, make_bundle, save_clip_folder

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BASIC_WORDS = ("a an the of in on with and or no to is are bright dark round square disk circle shape "
               "tumor tumour brain breast lung lungs liver kidney lesion mass nodule heart bone image "
               "left right small large ultrasound x-ray ray ct mri scan benign malignant chest").split()

TEXT_SIZES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
    "pubmedbert": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}
VISION_MODELS = {"tiny": "vit_tiny_patch16_224", "pubmedbert": "vit_base_patch16_224"}


def write_vocab(folder: Path, size: int | None = None) -> int:
    """A WordPiece vocabulary of special tokens, characters, word pieces and common words."""
    tokens = list(SPECIAL_TOKENS)
    chars = string.ascii_lowercase + string.digits + string.punctuation
    tokens += list(chars) + [f"##{c}" for c in chars] + [w for w in BASIC_WORDS if w not in tokens]
    if size is not None:
        tokens += [f"[unused{i}]" for i in range(size - len(tokens))]
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")
    return len(tokens)


def write_text_tower(folder: Path, size: str = "tiny", context_length: int = 256) -> Path:
    """BERT config + vocabulary + tokenizer config for an offline text tower."""
    from transformers import BertConfig

    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = write_vocab(folder, 30522 if size == "pubmedbert" else None)
    BertConfig(vocab_size=vocab_size, max_position_embeddings=max(512, context_length),
               **TEXT_SIZES[size]).save_pretrained(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": context_length}))
    return folder


def make_random_clip(folder: Path, size: str = "tiny", seed: int = 0, context_length: int = 256,
                     image_size: int = 224) -> ClipBundle:
    """Create (or reuse) a random-weight CLIP folder and load it like real weights."""
    folder = Path(folder)
    if not (folder / "open_clip_config.json").is_file():
        write_text_tower(folder, size, context_length)
        model_cfg = biomedclip_model_config(str(folder), VISION_MODELS[size], context_length, image_size)
        torch.manual_seed(seed)
        save_clip_folder(build_clip(model_cfg), model_cfg, folder)
    return load_clip_folder(folder)


def random_clip_in_memory(folder: Path, size: str = "pubmedbert", seed: int = 0) -> ClipBundle:
    """The same model built in memory (only the small text-tower files go to ``folder``).

    For benchmarks of the full-size architecture: skips writing and reading ~800 MB of weights.
    """
    folder = Path(folder)
    write_text_tower(folder, size)
    model_cfg = biomedclip_model_config(str(folder), VISION_MODELS[size])
    torch.manual_seed(seed)
    return make_bundle(build_clip(model_cfg), model_cfg, {}, f"random {size} CLIP")
