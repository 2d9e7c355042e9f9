"""`medclipsam finetune`'s settings, without torch: the command line builds its options from them and checks
them before any data or model loads."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import SettingError
from ..settings import BIOMEDCLIP_HUB_ID, check_device

LOSSES = ("dhn-nce", "infonce", "dcl", "hn-nce")


@dataclass
class FinetuneConfig:
    clip: str = BIOMEDCLIP_HUB_ID
    loss: str = "dhn-nce"
    tau: float = 0.6
    beta1: float = 0.15
    beta2: float = 0.15
    lr: float = 1e-6
    weight_decay: float = 0.1
    epochs: int = 10
    batch_size: int = 64
    accumulation: int = 1
    warmup_fraction: float = 0.05
    validation_fraction: float = 0.1
    eval_batch: int = 50
    seed: int = 0
    device: str = "auto"
    workers: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse values that cannot train, before data or model load (the command line names the option)."""
        if self.loss not in LOSSES:
            raise SettingError("loss", f"Unknown loss '{self.loss}' ({{name}}); choose one of {', '.join(LOSSES)}.")
        for name in ("epochs", "batch_size", "accumulation", "eval_batch"):
            if getattr(self, name) < 1:
                raise SettingError(name, f"{{name}} must be at least 1 (got {getattr(self, name)}).")
        for name in ("lr", "tau"):
            if not getattr(self, name) > 0:
                raise SettingError(name, f"{{name}} must be above 0 (got {getattr(self, name)}).")
        for name in ("beta1", "beta2", "weight_decay", "workers"):
            if not getattr(self, name) >= 0:
                raise SettingError(name, f"{{name}} must be at least 0 (got {getattr(self, name)}).")
        for name in ("warmup_fraction", "validation_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise SettingError(name, f"{{name}} must be at least 0 and below 1 (got {getattr(self, name)}).")
        check_device(self.device)


OUTPUT_FILES = ("best.pt", "last.pt", "history.json", "training.png")
"""What ``finetune`` writes into --out, besides epoch_NNN.pt."""
