"""M2IB saliency (MedCLIP-SAMv2 Eq. 16): where in the image is the information about the text?

A bottleneck on the output tokens of vision block L replaces each token x with
z = lambda * x + (1 - lambda) * eps, lambda = sigmoid(alpha), and alpha is optimised to
keep the image embedding close to the text (cosine) while passing little information
(beta * KL(N(lambda x, (1-lambda)^2) || N(0, 1))). The per-token KL is the map.

Blocks 0..L never see the bottleneck, so their output is computed once per image
(``prefix_tokens``) and only blocks L+1.. run in the 10 optimisation steps, for many
images at once. On a CPU that multiplies bf16 natively (AMX or AVX512-BF16) those blocks run from a
bfloat16 copy (``cpu_bf16``): 0.4-0.5x the CPU time, maps correlating with fp32's to 1 - 3e-6
(docs/cpu-speed.md). ``naive_saliency`` is the straightforward formulation (whole network
every step, one image at a time), kept as the reference the fast path is tested against.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError
from .models.class_token import class_token_only_applies, last_block_class_token
from .models.clip import ClipBundle
from .models.cpu_features import native_bf16_available
from .models.interrupt import interrupt_of


PROBE_STEPS = 2
"""Steps after which the flat-map test (``M2IBConfig.flat_cv``) looks at each image's map."""


def flat_maps(kl: torch.Tensor, prefix: int, threshold: float) -> torch.Tensor:
    """Which images' KL maps are flat (bool per image): the patch tokens' map (summed over channels) has a
    coefficient of variation under ``threshold``. Per image, so the test never depends on the batch."""
    token_map = kl.detach().sum(dim=-1)[:, 0, prefix:]
    variation = token_map.std(dim=1) / token_map.mean(dim=1).abs().clamp_min(1e-12)
    return variation < threshold


def _bottleneck(alpha: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The bottleneck's mean and spread for tokens ``x``, and its per-element KL to N(0, 1): (B, 1, T, D) each."""
    lam = torch.sigmoid(alpha)
    mu, std = lam * x, 1.0 - lam
    return mu, std, 0.5 * (mu ** 2 + std ** 2 - 1.0) - torch.log(std)


def _keep_rows(optimizer: torch.optim.Adam, alpha: torch.Tensor, keep: torch.Tensor):
    """``alpha``'s rows ``keep`` as a new parameter with an Adam carrying their state on: the kept images'
    updates are exactly those they would have had in the full batch (Adam is elementwise)."""
    kept = alpha.detach()[keep].clone().requires_grad_(True)
    state = optimizer.state[alpha]
    fresh = torch.optim.Adam([kept], **{k: v for k, v in optimizer.defaults.items() if k in ("lr", "betas", "eps")})
    fresh.state[kept] = {"step": state["step"].clone() if torch.is_tensor(state["step"]) else state["step"],
                         "exp_avg": state["exp_avg"][keep].clone(), "exp_avg_sq": state["exp_avg_sq"][keep].clone()}
    return fresh, kept


def _bf16_copy(block: torch.nn.Module) -> torch.nn.Module:
    """A bfloat16 copy of a ViT block, its attention as plain matrix products: in bf16 on AMX they measured
    13 % faster than the fused kernel's backward (in fp32 the same; docs/benchmarks.md)."""
    copied = copy.deepcopy(block).to(torch.bfloat16)
    if hasattr(copied, "attn") and hasattr(copied.attn, "fused_attn"):
        copied.attn.fused_attn = False  # timm's switch between F.scaled_dot_product_attention and the math
    return copied


@dataclass
class M2IBConfig:
    layer: int = 9
    beta: float = 1.0
    steps: int = 10
    lr: float = 1.0
    samples: int = 10
    seed: int = 0
    init_alpha: float = 5.0
    flat_cv: float = 0.0
    """Skip test (``saliency_from_prefix``): after ``PROBE_STEPS`` steps, an image whose map varies less than this
    (standard deviation / mean over its patch tokens) stops there as flat; 0: every image gets every step."""

    @classmethod
    def from_settings(cls, settings) -> "M2IBConfig":
        """The M2IB part of a pipeline ``Settings``."""
        return cls(layer=settings.bottleneck_layer, beta=settings.beta, steps=settings.m2ib_steps,
                   lr=settings.m2ib_lr, samples=settings.m2ib_samples, seed=settings.seed,
                   flat_cv=settings.flat_saliency_cv)


@dataclass
class PadInfo:
    """Where a slice sits inside its padded square, to map saliency back exactly."""

    side: int
    top: int
    left: int
    height: int
    width: int


def pad_to_square(x: torch.Tensor) -> tuple[torch.Tensor, PadInfo]:
    """(B, 1, H, W) -> centred in a zero-padded square (B, 1, S, S), S = max(H, W)."""
    height, width = x.shape[-2:]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    return F.pad(x, (left, side - width - left, top, side - height - top)), PadInfo(side, top, left, height, width)


def clip_inputs(slices: np.ndarray, bundle: ClipBundle, device: torch.device) -> tuple[torch.Tensor, PadInfo]:
    """uint8 slices (B, H, W) -> normalised CLIP input (B, 3, S, S).

    The slice is padded to a centred square and resized, so the whole image is seen
    (the authors centre-crop, which cuts off the sides of non-square images).
    """
    x, pad = pad_to_square(torch.as_tensor(slices, device=device).float().div_(255.0)[:, None])
    x = F.interpolate(x, size=(bundle.image_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(bundle.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(bundle.std, device=device).view(1, 3, 1, 1)
    return (x.expand(-1, 3, -1, -1) - mean) / std, pad


def maps_to_slices(maps: torch.Tensor, pad: PadInfo, input_size: int) -> np.ndarray:
    """Token grids (B, g, g) -> maps at the slice size (B, H, W): up to the model input, then back."""
    x = F.interpolate(maps[:, None].float(), size=(input_size, input_size), mode="bilinear", align_corners=False)
    x = F.interpolate(x, size=(pad.side, pad.side), mode="bilinear", align_corners=False)
    x = x[:, 0, pad.top:pad.top + pad.height, pad.left:pad.left + pad.width]
    return x.cpu().numpy().astype(np.float32)


def oracle_maps(masks: np.ndarray, grid: int = 14, input_size: int = 224) -> np.ndarray:
    """Expert masks (B, H, W) as the sharpest map a ``grid`` x ``grid`` token map can be.

    Each mask is area-averaged onto the token grid of its padded square (BiomedCLIP:
    14 x 14 over 224 px) and brought back exactly as M2IB maps are: an upper bound
    for the saliency stage, used to measure the later stages and the CPU shortcuts.
    """
    x, pad = pad_to_square(torch.as_tensor(masks, dtype=torch.float32)[:, None])
    tokens = F.adaptive_avg_pool2d(x, grid)[:, 0]
    return maps_to_slices(tokens, pad, input_size)


class M2IB:
    """Batched M2IB over a frozen CLIP model."""

    def __init__(self, bundle: ClipBundle, config: M2IBConfig, device: torch.device, bf16: bool = False,
                 compile: bool = False, class_token_only: bool = True, cpu_bf16: bool = False):
        """``class_token_only``: the last block for the class token alone (exact; models.class_token).
        ``cpu_bf16``: on a CPU with native bf16 products (AMX, AVX512-BF16), blocks L+1.. from a bfloat16 copy
        (ignored on other CPUs, where bf16 is emulated and slower, and on GPUs)."""
        depth = len(bundle.blocks)
        if not 0 <= config.layer < depth - 1:
            raise InputError(f"Bottleneck layer {config.layer} is out of range: this model has {depth} vision "
                             f"blocks, so use 0..{depth - 2}.")
        self.bundle, self.config, self.device = bundle, config, device
        self.trunk = bundle.model.visual.trunk
        self.amp = bf16 and device.type == "cuda"
        self.interrupt = interrupt_of(bundle.model.visual)
        """Called every step and inside the layers: a run's cancel check (``interrupt.checking``) stops it there."""
        self.class_token_only = class_token_only and class_token_only_applies(self.trunk)
        bundle.model.to(device)
        self.suffix_dtype = torch.float32
        self.last_flat = 0
        """Images the last ``saliency_from_prefix`` stopped early as flat (``M2IBConfig.flat_cv``)."""
        self.suffix_blocks = list(self.trunk.blocks[config.layer + 1:])
        if cpu_bf16 and device.type == "cpu" and native_bf16_available():
            self.suffix_dtype = torch.bfloat16  # a copy: the CLIP features and other users keep fp32
            self.suffix_blocks = [_bf16_copy(block) for block in self.suffix_blocks]
        if compile:
            self._suffix_embedding = torch.compile(self._suffix_embedding, dynamic=False)

    def _autocast(self):
        if self.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def prefix_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Output tokens of block L (B, T, D): what the bottleneck sees, fixed during optimisation."""
        trunk = self.trunk
        with self._autocast():
            x = trunk.norm_pre(trunk.patch_drop(trunk._pos_embed(trunk.patch_embed(images))))
            for block in trunk.blocks[: self.config.layer + 1]:
                x = block(x)
        return x.float()

    def _suffix_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        """Blocks L+1.., final norm, pooling and projection: L2-normalised image embeddings."""
        trunk = self.trunk
        with self._autocast():
            x = tokens.to(self.suffix_dtype)
            last = len(self.suffix_blocks) - 1
            for index, block in enumerate(self.suffix_blocks):
                x = last_block_class_token(block, x) if index == last and self.class_token_only else block(x)
            x = self.bundle.model.visual.head(trunk.forward_head(trunk.norm(x.to(tokens.dtype))))
        return F.normalize(x.float(), dim=-1)

    def _noise(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=self.device)

    def saliency_from_prefix(self, tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Optimise one bottleneck per image; returns the KL map on the patch grid (B, g, g).

        Every image gets the same noise sequence, so a slice's map does not depend on
        which other slices share its batch. With ``flat_cv``, an image found flat after ``PROBE_STEPS``
        steps stops there: its map is NaN (the caller fills it) and ``last_flat`` counts them.
        """
        cfg = self.config
        batch, count, dim = tokens.shape
        x = tokens.detach()[:, None]  # (B, 1, T, D)
        alpha = torch.full((batch, 1, count, dim), cfg.init_alpha, device=self.device, requires_grad=True)
        optimizer = torch.optim.Adam([alpha], lr=cfg.lr)
        generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        text = text.to(self.device)
        prefix = self.trunk.num_prefix_tokens
        rows = torch.arange(batch, device=self.device)  # the images still optimised
        self.last_flat = 0
        kl = None
        with torch.enable_grad():
            for step in range(cfg.steps):
                self.interrupt()
                mu, std, kl = _bottleneck(alpha, x)
                if step == PROBE_STEPS and cfg.flat_cv > 0:
                    flat = flat_maps(kl, prefix, cfg.flat_cv)
                    if flat.any():
                        self.last_flat = int(flat.sum())
                        if flat.all():
                            rows = rows[:0]
                            break
                        keep = ~flat
                        optimizer, alpha = _keep_rows(optimizer, alpha, keep)
                        x, rows = x[keep], rows[keep]
                        mu, std, kl = _bottleneck(alpha, x)
                z = mu + std * self._noise((cfg.samples, count, dim), generator)  # (B, S, T, D)
                embedding = self._suffix_embedding(z.reshape(len(rows) * cfg.samples, count, dim))
                cosine = (embedding @ text).view(len(rows), cfg.samples)
                per_image = cfg.beta * kl.mean(dim=(1, 2, 3)) - cosine.mean(dim=1)
                optimizer.zero_grad(set_to_none=True)
                per_image.sum().backward()
                optimizer.step()
        grid = int(round((count - prefix) ** 0.5))
        maps = torch.full((batch, count - prefix), float("nan"), device=self.device)
        if len(rows):
            maps[rows] = kl.detach().sum(dim=-1)[:, 0, prefix:]  # drop CLS (and register) tokens
        return maps.view(batch, grid, grid)

    def saliency(self, slices: np.ndarray, text: torch.Tensor) -> np.ndarray:
        """uint8 slices (B, H, W) -> saliency maps at the slice size (B, H, W), fast path."""
        images, pad = clip_inputs(slices, self.bundle, self.device)
        maps = self.saliency_from_prefix(self.prefix_tokens(images), text)
        return maps_to_slices(maps, pad, self.bundle.image_size)

    def naive_saliency(self, slices: np.ndarray, text: torch.Tensor) -> np.ndarray:
        """Reference formulation: the whole network every step, a hook on block L, one image at a time."""
        cfg = self.config
        results = []
        for one in slices:
            images, pad = clip_inputs(one[None], self.bundle, self.device)
            state: dict[str, torch.Tensor] = {}
            generator = torch.Generator(device=self.device).manual_seed(cfg.seed)

            def bottleneck(_module, _inputs, output):
                lam = torch.sigmoid(state["alpha"])
                mu, std = lam * output.float(), 1.0 - lam
                state["kl"] = 0.5 * (mu ** 2 + std ** 2 - 1.0) - torch.log(std)
                return mu + std * self._noise((cfg.samples, *output.shape[1:]), generator)

            count, dim = self.prefix_tokens(images).shape[1:]
            hook = self.trunk.blocks[cfg.layer].register_forward_hook(bottleneck)
            try:
                state["alpha"] = torch.full((1, count, dim), cfg.init_alpha, device=self.device, requires_grad=True)
                optimizer = torch.optim.Adam([state["alpha"]], lr=cfg.lr)
                with torch.enable_grad():
                    for _ in range(cfg.steps):
                        with self._autocast():
                            embedding = self.bundle.model.encode_image(images)
                        cosine = F.normalize(embedding.float(), dim=-1) @ text.to(self.device)
                        loss = cfg.beta * state["kl"].mean() - cosine.mean()
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
            finally:
                hook.remove()
            token_map = state["kl"].detach().sum(dim=-1)[:1, self.trunk.num_prefix_tokens:]
            grid = int(round(token_map.shape[1] ** 0.5))
            results.append(maps_to_slices(token_map.view(1, grid, grid), pad, self.bundle.image_size))
        return np.concatenate(results)
