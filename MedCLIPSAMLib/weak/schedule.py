"""The cyclic learning rate and snapshot choice of the weakly supervised nnU-Net (paper: 600 epochs,
3 cycles, lr 0.01, checkpoints over the last 10 epochs of each cycle: G = 30).

Two schedules:
- ``authors`` (default): as the authors' code runs it. Each cycle restarts at the initial rate and
  decays with the poly curve of the *whole* run, held flat after 80% of the cycle, so the snapshots
  (the cycle's last epochs) are taken while the rate still moves the weights (600/3: about 0.0076).
- ``restart``: nnU-Net's poly curve over each cycle, restarted; its snapshots come at a rate near 0
  (600/3: 8.5e-5 to 6.8e-4), so the snapshots of one cycle are near-identical.
"""
from __future__ import annotations

from ..errors import OptionError


def cycle_length(epochs: int, cycles: int) -> int:
    if not 1 <= cycles <= epochs:
        raise OptionError(f"--cycles must be between 1 and --epochs: {cycles} cycles do not fit in {epochs} epochs.")
    return epochs // cycles


SCHEDULES = ("authors", "restart")
PLATEAU = 0.8
"""authors: the fraction of a cycle after which the rate stops decaying (their gamma)."""


def cyclic_lr(epoch: int, initial_lr: float, length: int, exponent: float = 0.9, schedule: str = "restart",
              epochs: int | None = None) -> float:
    """The learning rate of ``epoch`` (0-based) in cycles of ``length`` epochs out of ``epochs`` in all."""
    position = epoch % length
    if schedule == "restart":
        return initial_lr * (1 - position / length) ** exponent
    if schedule != "authors":
        raise OptionError(f"Unknown schedule '{schedule}'; choose one of: {', '.join(SCHEDULES)}.")
    if epochs is None:
        raise ValueError("the authors' schedule decays over the whole run: give epochs")
    return initial_lr * (1 - min(position, int(PLATEAU * length)) / epochs) ** exponent


def is_snapshot_epoch(epoch: int, length: int, keep_last: int, epochs: int) -> bool:
    """True for the last ``keep_last`` epochs of every complete cycle (0-based epochs)."""
    if epoch >= (epochs // length) * length:
        return False
    return epoch % length >= length - keep_last


def snapshot_name(epoch: int, length: int) -> str:
    return f"checkpoint_cycle{epoch // length + 1}_epoch{epoch + 1:04d}.pth"
