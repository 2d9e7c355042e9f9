"""The zero-shot pipeline on volumes (a 2D image is a one-slice volume).

saliency per slice (batched M2IB) -> one volume-wide normalisation and Otsu ->
3D components ranked by confidence -> per-slice prompts from their cross-sections ->
SAM only on slices with prompts (batched encoder, embeddings freed per batch) ->
3D clean-up. Several prompts share the CLIP prefix tokens and the SAM embeddings.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage

from .errors import Cancelled, InputError, SettingError
from .faithfulness import NULL_PROMPTS, faithfulness_warning, prompt_faithfulness
from .imageio import (MIN_SIDE, Volume, as_volume, chosen_slices, image_to_gray, normalize_intensity, read_volume,
                      resolve_axis)
from .keyslices import end_midpoints, interpolate_between, key_slices
from .models.catalog import ProgressCallback
from .models.clip import ClipBundle, cached_clip, clip_files
from .models.onnx_runtime import EncoderRuntime, runtime_available
from .models.sam import SamBackend, load_sam, resolve_backend, sam_files
from .prompts import (Box, Component, ComponentRule, SlicePrompts, keep_largest_components, keep_overlapping,
                      normalize_saliency, otsu_mask, physical_floor, prompts_per_slice, select_by_rule)
from .saliency import M2IB, M2IBConfig, clip_inputs, maps_to_slices
from .result import SegmentationResult
from .result_match import embed_views
from .settings import Settings, check_device

BODY_INTENSITY = 25
"""uint8 level (10% of the normalised range) above which a pixel counts as body, not air."""
PromptSpec = str | Sequence[str]
"""A prompt: one text, or a list of sentences averaged as an ensemble (named after the first)."""


def auto_device(cuda: bool, mps: bool) -> str:
    """What "auto" means: an NVIDIA GPU, else Apple's Metal (Apple silicon Macs), else the CPU."""
    return "cuda" if cuda else "mps" if mps else "cpu"


def mps_problem() -> str | None:
    """Why this torch cannot run on Apple's Metal (None: it can). MPS is in torch's macOS arm64 builds only, and
    needs macOS 12.3 or later on Apple silicon."""
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_built():
        return "this torch was built without it (MPS is in torch for Apple silicon Macs only)"
    if not mps.is_available():
        return "torch has it, but this Mac cannot run it (it needs Apple silicon and macOS 12.3 or later)"
    return None


def resolve_device(name: str) -> torch.device:
    """The torch device for a device setting; one this machine lacks is refused here, not deep in torch."""
    check_device(name)
    if name == "auto":
        return torch.device(auto_device(torch.cuda.is_available(), mps_problem() is None))
    device = torch.device(name)
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        found = torch.cuda.device_count()
        raise SettingError("device", f"{{name}} '{name}' needs a CUDA GPU, and this machine has "
                           f"{found or 'none'}{' (numbered from 0)' if found else ''}; use cpu.", "Device")
    if device.type == "mps" and mps_problem() is not None:
        raise SettingError("device", f"{{name}} '{name}' needs Apple's Metal (MPS): {mps_problem()}; use cpu or auto.",
                           "Device")
    return device


def prompt_name(prompt: PromptSpec) -> str:
    return prompt if isinstance(prompt, str) else prompt[0]


def check_prompts(prompts: PromptSpec | Sequence[PromptSpec]) -> list[list[str]]:
    """Normalise to a list of sentence lists; refuse empty, non-text or duplicate prompts."""
    def not_text(value) -> InputError:
        return InputError(f"A prompt must be text or a list of sentences, not {type(value).__name__} ({value!r:.60}).")

    items = [prompts] if isinstance(prompts, str) else prompts
    if not isinstance(items, (list, tuple)):
        raise not_text(items)
    sentences = []
    for item in items:
        group = [item] if isinstance(item, str) else item
        if not isinstance(group, (list, tuple)) or not all(isinstance(s, str) for s in group):
            raise not_text(item)
        sentences.append(list(group))
    if not sentences:
        raise InputError("No prompt given: type what to segment, for example 'brain tumor'.")
    for group in sentences:
        if not group or any(not s.strip() for s in group):
            raise InputError("A prompt is empty: type what to segment, for example 'brain tumor'.")
    names = [g[0].strip() for g in sentences]
    if len({n.casefold() for n in names}) != len(names):
        raise InputError(f"Prompts must differ (ignoring case); got {names}.")
    return [[s.strip() for s in g] for g in sentences]


@dataclass
class Target:
    """One prompt after the saliency stage, in slice order (the slicing axis first)."""

    name: str
    saliency: np.ndarray
    """Volume-normalised saliency in [0, 1]."""
    components: list[Component]
    prompts: list[SlicePrompts]
    faithfulness: float | None = None
    """How much more the result region looks like the prompt than like null prompts (faithfulness.py); None: not
    checked."""

    @property
    def coarse(self) -> np.ndarray:
        """The kept salient components: the saliency stage's own mask."""
        if not self.components:
            return np.zeros(self.saliency.shape, dtype=bool)
        return np.logical_or.reduce([c.mask for c in self.components])

    @property
    def score(self) -> float:
        """Mean confidence of the kept components; 0 when nothing was found."""
        return float(np.mean([c.confidence for c in self.components])) if self.components else 0.0


@dataclass
class Located:
    """The saliency stage's output for every prompt."""

    slices: np.ndarray
    """uint8 slices, slicing axis first."""
    axis: int
    targets: list[Target]
    messages: list[str]
    timings: dict[str, float]
    saliency_slices: int


class _Runner:
    """State of one run: progress, cancel and per-stage timing."""

    def __init__(self, progress: ProgressCallback | None, cancel: threading.Event | None):
        self.progress, self.cancel = progress, cancel
        self.timings: dict[str, float] = {}
        self.cpu_timings: dict[str, float] = {}
        self.slices: dict[str, int] = {}
        """Slices each stage touched (``touched``)."""
        self._counts: dict[str, list[int]] = {}
        self._cpu_at: dict[float, float] = {}

    def check(self) -> None:
        """Raise Cancelled once the run's cancel event is set (called between batches, steps and layers)."""
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("Segmentation cancelled; nothing was changed.")

    def report(self, stage: str, done: int, total: int) -> None:
        self.check()
        if self.progress is not None:
            self.progress(stage, done, total)

    def begin(self, stage: str, total: int, done: int = 0) -> None:
        """Start (or extend) a counted stage; ``step`` then advances it."""
        self._counts[stage] = [done, total]
        self.report(stage, done, total)

    def done(self, stage: str) -> int:
        return self._counts.get(stage, [0, 0])[0]

    def step(self, stage: str, count: int) -> None:
        done, total = self._counts[stage]
        self._counts[stage] = [done + count, total]
        self.report(stage, done + count, total)

    def start(self) -> float:
        """A stage's start (wall seconds, passed to ``timed``); the process CPU time is noted with it."""
        now = time.perf_counter()
        self._cpu_at[now] = time.process_time()
        return now

    def timed(self, stage: str, start: float) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start
        cpu = self._cpu_at.pop(start, None)
        if cpu is not None:
            self.cpu_timings[stage] = self.cpu_timings.get(stage, 0.0) + time.process_time() - cpu

    def touched(self, stage: str, count: int) -> None:
        self.slices[stage] = self.slices.get(stage, 0) + int(count)


class SameSlices:
    """Slices equal to one seen earlier in this run (same uint8 pixels): the models give them the same result,
    so it is computed once and copied (duplicated slices of a resampled thick-slice scan, repeated frames)."""

    def __init__(self, slices: np.ndarray):
        self._keys = [hashlib.blake2b(np.ascontiguousarray(one).tobytes(), digest_size=16).digest() for one in slices]
        self._last = {key: z for z, key in enumerate(self._keys)}
        self._first: dict[bytes, int] = {}
        self._source: dict[int, int] = {}

    def unseen(self, part: np.ndarray) -> np.ndarray:
        """The slices of ``part`` to compute: the first of each distinct content; the rest are noted as copies."""
        fresh = []
        for z in part.tolist():
            source = self._first.setdefault(self._keys[z], z)
            if source == z:
                fresh.append(z)
            else:
                self._source[z] = source
        return np.array(fresh, dtype=int)

    def source(self, z: int) -> int:
        """The earliest computed slice equal to ``z`` (``z`` itself when it is the first)."""
        return self._source.get(z, z)

    def has_copies_after(self, z: int, last: int) -> bool:
        """Whether a slice after ``last`` has ``z``'s pixels (and may still copy its result)."""
        return self._last[self._keys[z]] > last

    def copies(self, part: np.ndarray) -> list[tuple[int, int]]:
        """(slice, the earlier equal slice it copies) for the copies in ``part``."""
        return [(z, self._source[z]) for z in part.tolist() if z in self._source]


def _fill_flat(maps: list[np.ndarray], flat: list[set[int]], done: set[int]) -> None:
    """Maps of slices found flat (NaN from M2IB) take their map's lowest computed value: they show nothing, and the
    volume-wide min-max normalisation stays what the other slices give it."""
    for target, skipped in zip(maps, flat):
        if not skipped:
            continue
        shown = [z for z in done if z not in skipped]
        floor = float(min(target[z].min() for z in shown)) if shown else 0.0
        target[sorted(skipped)] = floor


def _with_oom_retry(fn: Callable[[np.ndarray], None], indices: np.ndarray, batch_size: int) -> int:
    """Run ``fn`` batch by batch; on CUDA out-of-memory halve the batch and retry where it failed."""
    position = 0
    while position < len(indices):
        part = indices[position:position + batch_size]
        try:
            fn(part)
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise InputError("Out of GPU memory even with one slice per batch; use --device cpu.") from None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            batch_size //= 2
            continue
        position += len(part)
    return batch_size


class Pipeline:
    """Loaded models plus settings; ``run`` segments one volume for one or more prompts."""

    def __init__(self, settings: Settings | None = None, clip: ClipBundle | None = None,
                 sam: SamBackend | None = None, progress: ProgressCallback | None = None,
                 cancel: threading.Event | None = None, embeddings: Callable | None = None):
        """``embeddings(sam, axis, window, slices)``: an object whose ``get_many(indices)`` gives the slices'
        SAM embeddings, encoding only the missing ones (the server's cache shared with correction sessions,
        interactive/shared_embeddings.py); None: every run encodes its slices itself."""
        settings = settings or Settings()
        self.embeddings = embeddings
        self.device = resolve_device(settings.device)
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, os.cpu_count() or 1))
        self._clip, self._sam_backend, self._load_callbacks = clip, sam, (progress, cancel)
        self._clip_source = settings.clip_model
        self._texts: dict[tuple[str, ...], torch.Tensor] = {}
        self._encoders = EncoderRuntime(progress)
        self.settings = settings

    @property
    def settings(self) -> Settings:
        return self._settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        """New method settings take effect on the next run; device and models stay as constructed."""
        self._settings = settings
        self._m2ib: M2IB | None = None

    @property
    def clip(self) -> ClipBundle:
        """Loaded on first use, so a run on given saliency maps never loads CLIP."""
        if self._clip is None:
            self._clip = cached_clip(self._clip_source, *self._load_callbacks)
        return self._clip

    def _text(self, sentences: list[str]) -> torch.Tensor:
        """A prompt's text embedding, computed once per pipeline (a cohort reuses it for every case)."""
        key = tuple(sentences)
        if key not in self._texts:
            self._texts[key] = self.clip.encode_text(list(sentences), self.device)
        return self._texts[key]

    @property
    def m2ib(self) -> M2IB:
        if self._m2ib is None:
            s = self.settings
            self._m2ib = M2IB(self.clip, M2IBConfig.from_settings(s), self.device, bf16=s.bf16, compile=s.compile,
                              class_token_only=s.runtime != "torch", cpu_bf16=s.bf16 and s.runtime != "torch")
        return self._m2ib

    def check_model_files(self) -> None:
        """Every model file this run needs (CLIP's folder or checkpoint, the SAM ViT checkpoint) on disk, downloads
        included, before anything slow (loading, the SAM encoder's export): a missing file is one error line now.
        Models already given or loaded are not looked for again."""
        if self._clip is None:
            clip_files(self._clip_source, *self._load_callbacks)
        if self._sam_backend is None:
            s = self.settings
            sam_files(s.sam_backend, s.sam_checkpoint, str(self.device), *self._load_callbacks)

    @property
    def sam(self) -> SamBackend:
        """Loaded on first use, so the saliency stage alone never loads SAM."""
        if self._sam_backend is None:
            s = self.settings
            self._sam_backend = load_sam(s.sam_backend, s.sam_checkpoint, str(self.device), s.bf16,
                                         *self._load_callbacks, input_size=s.sam_input_size)
        if self._onnx_runtime_applies():
            return self._encoders.sam(self._sam_backend, self.settings.bf16 and self.settings.sam_encoder_bf16)
        return self._sam_backend

    def _onnx_runtime_applies(self) -> bool:
        """The exported SAM encoder (OpenVINO or ONNX Runtime): on a CPU, where it is faster, unless turned off."""
        return self.settings.runtime == "auto" and self.device.type == "cpu" and runtime_available()

    def run(self, volume: Volume | np.ndarray, prompts: PromptSpec | Sequence[PromptSpec],
            progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
            saliency: Sequence[np.ndarray] | None = None) -> SegmentationResult:
        """Saliency, prompts and SAM for every prompt; the full zero-shot result.

        ``saliency``: raw maps (input array order), one per prompt, used instead of M2IB:
        to re-run the later stages with other settings without recomputing the maps, or to
        measure them on oracle maps (``medclipsam evaluate --oracle-saliency``).
        """
        start = time.perf_counter()
        runner = _Runner(progress, cancel)
        self.sam  # load (or download) SAM now: a bad checkpoint must fail before minutes of saliency
        located = self._locate(volume, prompts, runner, saliency)
        masks = self._sam(located.slices, [t.prompts for t in located.targets], runner, located.axis)
        t = runner.start()
        result = self._assemble(located, masks)
        runner.timed("cleanup", t)
        runner.timings["total"] = time.perf_counter() - start
        result.timings, result.cpu_timings, result.stage_slices = runner.timings, runner.cpu_timings, runner.slices
        return result

    def locate(self, volume: Volume | np.ndarray, prompts: PromptSpec | Sequence[PromptSpec],
               progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
               saliency: Sequence[np.ndarray] | None = None) -> "Located":
        """The saliency stage alone: maps, kept components and per-slice prompts (no SAM)."""
        return self._locate(volume, prompts, _Runner(progress, cancel), saliency)

    def _locate(self, volume: Volume | np.ndarray, prompts: PromptSpec | Sequence[PromptSpec],
                runner: _Runner, given: Sequence[np.ndarray] | None = None) -> "Located":
        s = self.settings
        groups = check_prompts(prompts)
        volume = volume if isinstance(volume, Volume) else as_volume(volume)
        axis = resolve_axis(s.axis, volume)
        slices = np.moveaxis(normalize_intensity(volume.array, s.window), axis, 0)
        if min(slices.shape[1:]) < MIN_SIDE:
            raise InputError(f"Slicing along axis {axis} gives {slices.shape[1]}x{slices.shape[2]} slices, "
                             "too small to segment; choose another axis.")
        active = self._active_slices(slices)
        messages = self._encoders.take_notes()
        if active.size == 0:
            messages.append("Every slice in the range is blank (constant); nothing to segment.")
        rule = self._component_rule(volume, axis)
        if given is None:
            messages += self.clip.truncation_notes([s for g in groups for s in g])
            texts = [self._text(g) for g in groups]
            saliency = self._saliency(slices, active, texts, runner, rule)
            faithfulness = self._faithfulness(slices, active, saliency, texts, runner)
        else:
            saliency = self._given_saliency(given, len(groups), volume.array.shape, axis, active, runner, rule)
            faithfulness = [None] * len(groups)  # given maps: no text to check
        computed = runner.done("saliency")
        if computed < active.size:
            messages.append(f"Saliency computed on {computed} of {active.size} slices (stride {s.saliency_stride}); "
                            "the others were interpolated between them.")
        t = runner.start()
        valid = np.zeros(slices.shape[0], dtype=bool)
        valid[active] = True
        valid3d = np.broadcast_to(valid[:, None, None], slices.shape)
        voxels = int(valid3d.sum())
        mode = self._prompt_mode(messages)
        targets = []
        for group, raw, faithful in zip(groups, saliency, faithfulness):
            normalised = normalize_saliency(raw, valid3d)
            components, too_small = select_by_rule(otsu_mask(normalised, valid3d), normalised, rule, voxels)
            if too_small:
                messages.append(f"'{group[0]}': {too_small} salient region(s) under {rule.min_size(voxels)} voxels "
                                f"were dropped as noise (min component fraction {s.min_component_fraction:g}, "
                                f"or a {s.min_component_mm:g} mm target).")
            if not components and active.size:
                messages.append(f"No salient region found for '{group[0]}': the result is empty. Try another "
                                "wording, a prompt preset, or another bottleneck layer.")
            warning = faithfulness_warning(group[0], faithful)
            if warning:
                messages.append(warning)
            targets.append(Target(group[0], normalised, components,
                                  prompts_per_slice(components, normalised, mode, s.points_per_component), faithful))
        runner.timed("prompts", t)
        return Located(slices, axis, targets, messages, runner.timings, computed)

    def _component_rule(self, volume: Volume, axis: int) -> ComponentRule:
        """K, the confidence ratio and the size floor: relative to the processed voxels, but never above a
        target of ``min_component_mm`` (a sphere in a volume, a disc in a 2D image)."""
        s = self.settings
        spacing = [float(v) for v in volume.spacing_zyx]
        in_plane = [v for i, v in enumerate(spacing) if i != axis % 3]
        floor = (physical_floor(s.min_component_mm, tuple(in_plane) if volume.array.shape[axis] == 1 else
                                tuple(spacing)) if s.min_component_mm > 0 else float("inf"))
        return ComponentRule(s.max_components, s.component_ratio, s.min_component_fraction, floor)

    def _prompt_mode(self, messages: list[str]) -> str:
        """Boxes instead of points for LiteMedSAM, which was trained with box prompts only.

        Measured with ``evaluate --oracle-saliency`` on the lung X-rays: LiteMedSAM DSC 24.8 % with
        points, 78.3 % with boxes (docs/results.md).
        """
        mode = self.settings.prompt_mode
        backend = (self._sam_backend.name if self._sam_backend is not None
                   else resolve_backend(self.settings.sam_backend, self.device))
        if mode == "points" and backend == "litemedsam":
            messages.append("LiteMedSAM takes box prompts only, so boxes were used instead of points; "
                            "choose a SAM ViT model for point prompts.")
            return "boxes"
        return mode

    def _active_slices(self, slices: np.ndarray) -> np.ndarray:
        """Slices in the range that show anything: constant or nearly all-air slices get no CLIP/SAM pass."""
        chosen = chosen_slices(slices.shape[0], self.settings.slice_range)
        flat = slices[chosen].reshape(len(chosen), -1)
        varies = flat.max(axis=1) > flat.min(axis=1)
        body = (flat > BODY_INTENSITY).mean(axis=1) >= self.settings.min_body_fraction
        return chosen[varies & body]

    def _given_saliency(self, given: Sequence[np.ndarray], count: int, shape: tuple[int, ...], axis: int,
                        active: np.ndarray, runner: _Runner, rule: ComponentRule) -> list[np.ndarray]:
        """Caller's maps, read on the same slices as M2IB would be and interpolated between them."""
        if len(given) != count:
            raise InputError(f"Got {len(given)} saliency maps for {count} prompts; give one map per prompt.")
        sources = []
        for raw in given:
            if np.shape(raw) != shape:
                raise InputError(f"A saliency map has shape {np.shape(raw)} but the volume has {shape}; "
                                 "give maps in the volume's array order and size.")
            sources.append(np.moveaxis(np.asarray(raw, dtype=np.float32), axis, 0))
        maps = [np.zeros(sources[0].shape, dtype=np.float32) for _ in sources]

        def compute(part: np.ndarray) -> None:
            for target, source in zip(maps, sources):
                target[part] = source[part]
            runner.step("saliency", len(part))

        return self._fill_maps(maps, active, compute, runner, rule)

    def _saliency(self, slices: np.ndarray, active: np.ndarray, texts: list[torch.Tensor],
                  runner: _Runner, rule: ComponentRule) -> list[np.ndarray]:
        """Raw M2IB maps per prompt; one CLIP prefix pass per slice batch serves every prompt."""
        maps = [np.zeros(slices.shape, dtype=np.float32) for _ in texts]
        same = SameSlices(slices)
        flat: list[set[int]] = [set() for _ in texts]
        done: set[int] = set()

        def batch(part: np.ndarray) -> None:
            fresh = same.unseen(part)  # a slice equal to one already computed takes its maps (below)
            if fresh.size:
                t = runner.start()
                images, pad = clip_inputs(slices[fresh], self.clip, self.device)
                tokens = self.m2ib.prefix_tokens(images)
                runner.timed("clip_features", t)
                runner.touched("clip_features", len(fresh))
                t = runner.start()
                for target, text, skipped in zip(maps, texts, flat):
                    grid = self.m2ib.saliency_from_prefix(tokens, text)
                    target[fresh] = maps_to_slices(grid, pad, self.clip.image_size)
                    skipped.update(int(z) for z in fresh[np.isnan(target[fresh]).reshape(len(fresh), -1).any(axis=1)])
                    runner.touched("m2ib", len(fresh) - self.m2ib.last_flat)
                    runner.touched("m2ib_flat_skipped", self.m2ib.last_flat)
                runner.timed("m2ib", t)
            for z, source in same.copies(part):
                for target, skipped in zip(maps, flat):
                    target[z] = target[source]
                    if source in skipped:
                        skipped.add(int(z))
                runner.touched("saliency_reused", 1)
            done.update(int(z) for z in part)
            _fill_flat(maps, flat, done)
            runner.step("saliency", len(part))

        with self.m2ib.interrupt.checking(runner.check):
            return self._fill_maps(maps, active,
                                   lambda part: _with_oom_retry(batch, part, self.settings.clip_batch_size), runner, rule)

    def _faithfulness(self, slices: np.ndarray, active: np.ndarray, maps: list[np.ndarray],
                      texts: list[torch.Tensor], runner: _Runner) -> list[float | None]:
        """Does the crop around each prompt's result region, on its strongest computed slices, look more like the
        prompt than like the null prompts? A few CLIP image forwards (faithfulness.py, result_match.py)."""
        count = self.settings.faithfulness_slices
        if not count or not active.size:
            return [None] * len(maps)
        t = runner.start()
        nulls = np.stack([self._text([null]).cpu().numpy() for null in NULL_PROMPTS])

        def embed(views: list) -> np.ndarray:
            runner.begin("faithfulness", len(views))
            runner.check()
            embedded = embed_views(self.clip, slices, views, self.device, self.settings.clip_batch_size)
            runner.step("faithfulness", len(views))
            return embedded

        candidates = key_slices(active, self.settings.saliency_stride)  # computed, never interpolated
        scores = prompt_faithfulness(maps, candidates, slices > BODY_INTENSITY, count,
                                     [text.cpu().numpy() for text in texts], nulls, embed)
        runner.timed("faithfulness", t)
        return scores

    def _fill_maps(self, maps: list[np.ndarray], active: np.ndarray, compute: Callable[[np.ndarray], None],
                   runner: _Runner, rule: ComponentRule) -> list[np.ndarray]:
        """``compute`` the maps on the key slices and, with a stride, bisect to where the target starts
        and ends; interpolate the rest (see keyslices)."""
        s = self.settings
        computed = key_slices(active, s.saliency_stride)
        runner.begin("saliency", len(computed))
        compute(computed)
        while s.saliency_stride > 1:
            middles = end_midpoints(maps, computed, active, rule)
            if not middles.size:
                break
            runner.begin("saliency", len(computed) + len(middles), done=len(computed))
            compute(middles)
            computed = np.union1d(computed, middles)
        for target in maps:
            interpolate_between(target, computed, active)
        return maps

    def _sam(self, slices: np.ndarray, prompts: list[list[SlicePrompts]], runner: _Runner,
             axis: int | None = None) -> list[np.ndarray]:
        """SAM masks per prompt, encoding each slice that has any prompt once (or taking it from ``embeddings``)."""
        masks = [np.zeros(slices.shape, dtype=bool) for _ in prompts]
        needed = np.array([z for z in range(slices.shape[0]) if any(p[z] for p in prompts)], dtype=int)
        rules = self.settings.box_rules()
        runner.begin("sam", len(needed))
        shared = None
        if self.embeddings is not None and axis is not None and needed.size:
            shared = self.embeddings(self.sam, axis, self.settings.window, slices)

        same, kept = SameSlices(slices), {}

        def batch(part: np.ndarray) -> None:
            t = runner.start()
            if shared is not None:
                encoded = shared.get_many(part.tolist())
            else:  # a slice equal to an earlier one (same pixels) reuses its embedding
                fresh = same.unseen(part)
                kept.update(zip(fresh.tolist(), self.sam.encode(slices[fresh]) if fresh.size else []))
                encoded = [kept[same.source(z)] for z in part.tolist()]
                runner.touched("sam_encoder", len(fresh))
                runner.touched("sam_encoder_reused", len(part) - len(fresh))
            runner.timed("sam_encoder", t)
            t = runner.start()
            for z, enc in zip(part, encoded):
                for target, slice_prompts in zip(masks, prompts):
                    p = slice_prompts[z]
                    if p:
                        target[z] = self.sam.segment(enc, boxes=p.boxes or None, points=p.points or None,
                                                     rules=rules)
                        runner.touched("sam_decoder", 1)
            runner.timed("sam_decoder", t)
            for z in part.tolist():  # free embeddings no later slice can reuse (only copies of earlier ones)
                if same.source(z) == z and not same.has_copies_after(z, part[-1]):
                    kept.pop(z, None)
            runner.step("sam", len(part))

        with self.sam.interrupt.checking(runner.check):
            _with_oom_retry(batch, needed, self.settings.sam_batch_for(self.device.type))
        return masks

    def _assemble(self, located: "Located", masks: list[np.ndarray]) -> SegmentationResult:
        """3D clean-up, label map, and everything moved back to the input's array order."""
        s, axis = self.settings, located.axis
        labels = np.zeros(located.slices.shape, dtype=np.uint8 if len(masks) < 255 else np.uint16)
        out_masks, out_saliency, out_boxes, scores, faithfulness = {}, {}, {}, {}, {}
        for index, (target, mask) in enumerate(zip(located.targets, masks)):
            if target.components:
                mask = keep_largest_components(keep_overlapping(mask, target.coarse), s.max_components)
            if s.fill_holes:
                mask = np.stack([ndimage.binary_fill_holes(m) for m in mask])
            covered = int((mask & (labels > 0)).sum())
            if covered:
                located.messages.append(
                    f"'{target.name}': {covered} of its {int(mask.sum())} voxels are also in an earlier prompt's "
                    "mask and carry that prompt's label in the label map (earlier prompts win); its whole mask "
                    "is in result.masks, or segment it alone.")
            labels[mask & (labels == 0)] = index + 1
            out_masks[target.name] = np.moveaxis(mask, 0, axis)
            out_saliency[target.name] = np.moveaxis(target.saliency, 0, axis)
            out_boxes[target.name] = {z: list(p.boxes) for z, p in enumerate(target.prompts) if p.boxes}
            scores[target.name] = target.score
            faithfulness[target.name] = target.faithfulness
        return SegmentationResult(labels=np.moveaxis(labels, 0, axis), masks=out_masks, saliency=out_saliency,
                                  boxes=out_boxes, scores=scores, axis=axis, messages=located.messages,
                                  saliency_slices=located.saliency_slices, faithfulness=faithfulness)


def segment_volume(volume: Volume | np.ndarray | str | os.PathLike, prompts: PromptSpec | Sequence[PromptSpec],
                   settings: Settings | None = None, progress: ProgressCallback | None = None,
                   cancel: threading.Event | None = None, **models) -> SegmentationResult:
    """Segment a volume (path, Volume or (z, y, x) array) for one or more prompts."""
    if isinstance(volume, (str, os.PathLike)):
        volume = read_volume(volume)
    pipeline = Pipeline(settings, progress=progress, cancel=cancel, **models)
    return pipeline.run(volume, prompts, progress, cancel)


@dataclass
class ImageResult:
    """A 2D result: mask and saliency at the image's size, boxes in pixels, and a score."""

    mask: np.ndarray
    saliency: np.ndarray
    boxes: list[Box]
    score: float
    messages: list[str]
    timings: dict[str, float]


def segment_image(image: np.ndarray | str | os.PathLike, prompt: PromptSpec, settings: Settings | None = None,
                  progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
                  **models) -> ImageResult:
    """Segment one 2D image (array (H, W) / (H, W, 3), or a file) for one prompt."""
    volume = read_volume(image) if isinstance(image, (str, os.PathLike)) else as_volume(image_to_gray(image))
    if volume.array.shape[0] != 1:
        raise InputError("segment_image takes a 2D image; use segment_volume for volumes.")
    result = segment_volume(volume, [prompt], settings, progress, cancel, **models)
    name = result.names[0]
    return ImageResult(mask=result.masks[name][0], saliency=result.saliency[name][0],
                       boxes=result.boxes[name].get(0, []), score=result.scores[name],
                       messages=result.messages, timings=result.timings)
