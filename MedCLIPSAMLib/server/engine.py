"""The models a server holds and how one request becomes one pipeline run.

Which model files and which device are the server's choice, made when it starts: a request
can choose method settings and the SAM backend, never a path on the server's disk. Models
are loaded once (the loaders keep them per process) and shared by every job.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..errors import InputError
from ..imageio import Volume
from ..settings import SERVER_FIELDS, Settings, settings_from_dict, settings_object


@dataclass
class EngineConfig:
    clip_model: str
    sam_checkpoint: str | None = None
    device: str = "auto"
    compile: bool = False

    def base_settings(self) -> Settings:
        return Settings(clip_model=self.clip_model, sam_checkpoint=self.sam_checkpoint, device=self.device,
                        compile=self.compile)


class Engine:
    """Turns (volume, prompts, settings) into a pipeline run on the server's models."""

    def __init__(self, config: EngineConfig):
        from ..pipeline import resolve_device

        self.config = config
        self.device = resolve_device(config.device)  # an unknown or absent device is a SettingError
        self._lock = threading.Lock()

    def preload(self, sam_backend: str = "auto", progress: Callable | None = None) -> None:
        """Load CLIP and SAM now, so a wrong model fails at start-up and the first job starts at once."""
        from ..pipeline import Pipeline

        pipeline = Pipeline(self.config.base_settings().replace(sam_backend=sam_backend), progress=progress)
        pipeline.clip, pipeline.sam

    def settings_for(self, prompts: Sequence[Any], values: dict[str, Any] | None, presets: bool = True) -> Settings:
        """Server defaults, then the prompt's preset (one prompt), then the request's values."""
        from ..pipeline import check_prompts
        from ..presets import apply_preset

        values = dict(settings_object(values))
        server_owned = sorted(set(values) & set(SERVER_FIELDS))
        if server_owned:
            raise InputError(f"Setting(s) {', '.join(server_owned)} are chosen when the server starts "
                             "(medclipsam serve --clip-model / --sam-checkpoint / --device); leave them out.")
        groups = check_prompts(prompts)
        settings = self.config.base_settings()
        if presets and len(groups) == 1:
            settings, _ = apply_preset(settings, groups[0][0], explicit=values)
        settings = settings_from_dict(values, base=settings, hidden=SERVER_FIELDS)
        self.check_sam_at_hand(settings.sam_backend, "a job")
        return settings

    def check_sam_at_hand(self, sam_backend: str, who: str) -> str:
        """The backend's name, if this server has it loaded or its weights on disk; else an InputError (400): a
        client never makes the server download a model or swap out the one it preloaded for everyone."""
        from ..models.sam import backends_at_hand, resolve_backend

        name = resolve_backend(sam_backend or "auto", self.device)
        at_hand = backends_at_hand(self.config.sam_checkpoint)
        if name not in at_hand:
            raise InputError(f"SAM backend '{name:.20}' is not loaded on this server and its weights are not on its "
                             f"disk ({who} never downloads a model); use {' or '.join(at_hand)}, or download it on the "
                             "server first (medclipsam models --download).")
        return name

    def run(self, volume: Volume, prompts: Sequence[Any], settings: Settings,
            progress: Callable[[str, int, int], None], cancel: threading.Event, embeddings: Callable | None = None):
        """``embeddings``: SAM embeddings shared with sessions on the same volume (see ``Pipeline``)."""
        from ..pipeline import Pipeline

        with self._lock:
            pipeline = Pipeline(settings, progress=progress, cancel=cancel, embeddings=embeddings)
            return pipeline.run(volume, prompts, progress, cancel)

    def session_sam(self, sam_backend: str):
        """The SAM a correction session uses: the one a text run with the server's settings uses (same runtime and
        precision), so the two can share slice embeddings."""
        from ..pipeline import Pipeline

        settings = self.config.base_settings().replace(sam_backend=sam_backend)
        return Pipeline(settings).sam, settings

    def info(self) -> dict[str, Any]:
        from .. import __version__
        from ..models.sam import resolve_backend

        return {"version": __version__, "device": str(self.device), "clip_model": self.config.clip_model,
                "sam_checkpoint": self.config.sam_checkpoint,
                "default_sam": resolve_backend("auto", self.device)}
