"""The cyclic learning rate and snapshot choice of the weakly supervised nnU-Net (paper: 600 epochs,
3 cycles, lr 0.01, checkpoints over the last 10 epochs of each cycle: G = 30)."""
from __future__ import annotations

from ..errors import OptionError


def cycle_length(epochs: int, cycles: int) -> int:
    if not 1 <= cycles <= epochs:
        raise OptionError(f"--cycles must be between 1 and --epochs: {cycles} cycles do not fit in {epochs} epochs.")
    return epochs // cycles


def cyclic_lr(epoch: int, initial_lr: float, length: int, exponent: float = 0.9) -> float:
    """nnU-Net's poly decay restarted at ``initial_lr`` every ``length`` epochs."""
    position = epoch % length
    return initial_lr * (1 - position / length) ** exponent


def is_snapshot_epoch(epoch: int, length: int, keep_last: int, epochs: int) -> bool:
    """True for the last ``keep_last`` epochs of every complete cycle (0-based epochs)."""
    if epoch >= (epochs // length) * length:
        return False
    return epoch % length >= length - keep_last


def snapshot_name(epoch: int, length: int) -> str:
    return f"checkpoint_cycle{epoch // length + 1}_epoch{epoch + 1:04d}.pth"
