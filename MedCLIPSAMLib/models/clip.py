"""BiomedCLIP (or any open_clip model with a Hugging Face text tower), loaded offline-first.

Sources, in the order ``load_clip`` tries them:
- a fine-tuned checkpoint file written by ``save_clip_checkpoint`` (config + weights);
- a local folder in the hub layout: ``open_clip_config.json``, ``open_clip_pytorch_model.bin``
  (or ``open_clip_model.safetensors``) and the text tower's ``config.json`` + ``vocab.txt``;
- a hub id (``hf-hub:org/repo``): the files are downloaded once into the cache folder and
  then loaded as a local folder, so every source takes the same code path.
The text tower is always built from its local config (``hf_model_pretrained`` off: the
weights come from the CLIP checkpoint), so no hub lookup happens after the download.
"""
from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError, ModelError
from .catalog import ProgressCallback, ensure_model, load_catalog


CONFIG_NAME = "open_clip_config.json"
WEIGHT_NAMES = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.pt")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ClipBundle:
    """A loaded CLIP model with what the saliency stage needs to feed it."""

    model: torch.nn.Module
    tokenizer: Any
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    context_length: int
    source: str
    config: dict

    @property
    def blocks(self) -> torch.nn.ModuleList:
        return self.model.visual.trunk.blocks

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids with the model's own tokenizer, cut to its context length (see ``truncation_notes``)."""
        return self.tokenizer(texts)

    def token_count(self, text: str) -> int:
        """Tokens of ``text`` before truncation (``verbose=False``: the tokenizer's own warning about
        "indexing errors" does not apply, since ``tokenize`` truncates)."""
        return len(self.tokenizer.tokenizer(text, verbose=False)["input_ids"])

    def truncation_notes(self, texts: list[str]) -> list[str]:
        """One note per prompt longer than the context length, saying how much of it the model reads."""
        notes = []
        for text in texts:
            count = self.token_count(text)
            if count > self.context_length:
                notes.append(f"The prompt '{text[:40]}...' has {count} tokens; the model reads only the first "
                             f"{self.context_length}, so the rest was left out. Shorten it.")
        return notes

    @torch.no_grad()
    def encode_text(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        """One L2-normalised embedding per prompt; a list of sentences is averaged (ensemble)."""
        tokens = self.tokenize(prompts).to(device)
        features = torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)
        return torch.nn.functional.normalize(features.mean(dim=0), dim=-1)


def biomedclip_model_config(text_folder: str, vision_model: str = "vit_base_patch16_224",
                            context_length: int = 256, image_size: int = 224) -> dict:
    """BiomedCLIP's open_clip model config with the text tower pointing at a local folder.

    Used for the real architecture with random weights (benchmarks) and, with
    ``vit_tiny_patch16_224``, for small offline test models.
    """
    return {
        "embed_dim": 512,
        "vision_cfg": {"timm_model_name": vision_model, "timm_model_pretrained": False,
                       "timm_pool": "", "timm_proj": "linear", "image_size": image_size},
        "text_cfg": {"hf_model_name": text_folder, "hf_tokenizer_name": text_folder,
                     "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                     "context_length": context_length, "hf_model_pretrained": False},
    }


def _localise_text_tower(model_cfg: dict, folder: Path) -> dict:
    """Point the Hugging Face text tower at ``folder`` when it holds the tower's config."""
    cfg = copy.deepcopy(model_cfg)
    text_cfg = cfg.get("text_cfg", {})
    if "hf_model_name" in text_cfg:
        if not (folder / "config.json").is_file():
            raise ModelError(f"'{folder}' lacks the text tower's config.json (and vocab.txt); copy them from "
                             f"the Hugging Face repository '{text_cfg['hf_model_name']}' into that folder.")
        text_cfg["hf_model_name"] = str(folder)
        text_cfg["hf_tokenizer_name"] = str(folder)
        text_cfg["hf_model_pretrained"] = False
    return cfg


def build_clip(model_cfg: dict) -> torch.nn.Module:
    """The open_clip model class for a config, with random weights and no network access."""
    import open_clip

    cfg = copy.deepcopy(model_cfg)
    cfg.pop("custom_text", None)
    model = open_clip.CustomTextCLIP(**cfg) if "hf_model_name" in cfg.get("text_cfg", {}) else open_clip.CLIP(**cfg)
    size = cfg.get("vision_cfg", {}).get("image_size", 224)
    trunk = getattr(model.visual, "trunk", None)
    if trunk is not None and hasattr(model.visual, "set_input_size") and tuple(trunk.patch_embed.img_size) != (size, size):
        model.visual.set_input_size(size)  # open_clip keeps timm's default size otherwise
    return model


def make_bundle(model: torch.nn.Module, model_cfg: dict, preprocess_cfg: dict, source: str) -> ClipBundle:
    from open_clip.tokenizer import HFTokenizer

    text_cfg = model_cfg["text_cfg"]
    context_length = int(text_cfg.get("context_length", 77))
    if "hf_tokenizer_name" not in text_cfg:
        raise ModelError(f"{source}: only CLIP models with a Hugging Face text tower (like BiomedCLIP) are supported.")
    tokenizer = HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=context_length)
    if not hasattr(getattr(model.visual, "trunk", None), "blocks"):
        raise ModelError(f"{source}: the vision tower is not a timm ViT; M2IB needs its transformer blocks.")
    model.eval().requires_grad_(False)
    size = model_cfg["vision_cfg"].get("image_size", 224)
    return ClipBundle(model=model, tokenizer=tokenizer, image_size=int(size if isinstance(size, int) else size[0]),
                      mean=tuple(preprocess_cfg.get("mean", CLIP_MEAN)), std=tuple(preprocess_cfg.get("std", CLIP_STD)),
                      context_length=context_length, source=source, config=model_cfg)


def _load_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _apply_weights(model: torch.nn.Module, state: dict, source: str) -> None:
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = model.state_dict()
    wrong_shape = [k for k, v in state.items() if k in expected and expected[k].shape != v.shape]
    if wrong_shape:
        raise ModelError(f"The weights in {source} do not match the model configuration (wrong shape for "
                         f"{wrong_shape[:3]}); the checkpoint belongs to another architecture.")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise ModelError(f"The weights in {source} do not match the model configuration "
                         f"({len(missing)} missing, {len(result.unexpected_keys)} unexpected tensors, e.g. "
                         f"{(missing + result.unexpected_keys)[:3]}).")


def clip_folder_files(folder: Path) -> tuple[dict, dict, Path]:
    """(config, model config with a local text tower, weights file) of a folder in the hub layout, or the
    one-line error naming the file that is missing: file checks only, nothing is loaded."""
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise ModelError(f"'{folder}' is not an open_clip model folder: {CONFIG_NAME} is missing.")
    config = json.loads(config_path.read_text())
    model_cfg = _localise_text_tower(config["model_cfg"], folder)
    weights = next((folder / n for n in WEIGHT_NAMES if (folder / n).is_file()), None)
    if weights is None:
        raise ModelError(f"'{folder}' holds no weights file (one of {', '.join(WEIGHT_NAMES)}).")
    return config, model_cfg, weights


def load_clip_folder(folder: Path) -> ClipBundle:
    """Load a local folder in the hub layout (see module docstring)."""
    config, model_cfg, weights = clip_folder_files(folder)
    model = build_clip(model_cfg)
    _apply_weights(model, _load_state_dict(weights), str(weights))
    return make_bundle(model, model_cfg, config.get("preprocess_cfg", {}), str(folder))


def save_clip_folder(bundle_or_model: ClipBundle | torch.nn.Module, model_cfg: dict, folder: Path,
                     preprocess_cfg: dict | None = None) -> Path:
    """Write a model in the hub layout (tests, fine-tuning output, offline copies)."""
    model = bundle_or_model.model if isinstance(bundle_or_model, ClipBundle) else bundle_or_model
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {"mean": CLIP_MEAN, "std": CLIP_STD}}
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    torch.save(model.state_dict(), folder / WEIGHT_NAMES[0])
    return folder


def load_clip_checkpoint(path: Path) -> ClipBundle:
    """A fine-tuned checkpoint: a torch file with ``state_dict`` and ``base`` (folder or hub id)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files
        raise ModelError(f"'{path}' is not a readable PyTorch checkpoint ({type(exc).__name__}).") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "base" not in checkpoint:
        raise ModelError(f"'{path}' is not a MedCLIP-SAM CLIP checkpoint (needs 'state_dict' and 'base'); "
                         "write it with `medclipsam finetune` or pass the model folder instead.")
    bundle = load_clip(checkpoint["base"])
    _apply_weights(bundle.model, checkpoint["state_dict"], str(path))
    bundle.model.eval().requires_grad_(False)
    bundle.source = str(path)
    return bundle


def _hub_folder(hub_id: str, progress: ProgressCallback | None, cancel: threading.Event | None) -> Path:
    for key, entry in load_catalog().items():
        if entry.hub_id == hub_id:
            return ensure_model(key, progress, cancel)
    raise ModelError(f"'{hub_id}' is not in the model catalog. Download it yourself (open_clip_config.json, "
                     "weights, and the text tower's config.json + vocab.txt) and pass the folder.")


_LOADED: dict[str, ClipBundle] = {}


def cached_clip(source: str, progress: ProgressCallback | None = None,
                cancel: threading.Event | None = None) -> ClipBundle:
    """``load_clip`` once per process: Slicer and batch runs reuse the loaded model."""
    if source not in _LOADED:
        _LOADED.clear()
        _LOADED[source] = load_clip(source, progress, cancel)
    return _LOADED[source]


def clip_files(source: str, progress: ProgressCallback | None = None,
               cancel: threading.Event | None = None) -> Path:
    """The folder or checkpoint file ``source`` names, its files checked (a hub id's downloaded first), without
    loading anything: a run checks this before any slow step, so a missing file costs seconds, not an export."""
    source = str(source)
    path = Path(source).expanduser()
    if source.startswith("hf-hub:"):
        path = _hub_folder(source, progress, cancel)
    if path.is_dir():
        clip_folder_files(path)
        return path
    if path.is_file():
        return path
    raise InputError(f"CLIP model '{source}' not found: give a hub id (hf-hub:...), a model folder "
                     "or a checkpoint file.")


def load_clip(source: str, progress: ProgressCallback | None = None,
              cancel: threading.Event | None = None) -> ClipBundle:
    """Load BiomedCLIP or a compatible model from a hub id, a local folder or a checkpoint file."""
    path = clip_files(source, progress, cancel)
    return load_clip_folder(path) if path.is_dir() else load_clip_checkpoint(path)
