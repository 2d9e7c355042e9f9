"""Cancel checks inside a model, so a cancelled run stops within one layer, not one whole batch.

A model that can run for long (CLIP's vision tower in M2IB, SAM's image encoder) gets one
``Interrupt`` for its lifetime: a forward pre-hook on every submodule and a backward pre-hook on
its linear layers call it, and it calls the check of the run now using the model (a pipeline's
``cancel`` test, which raises ``Cancelled``). No run: nothing is checked. Models are shared by
the runs of a process (one at a time), so the check is set per run with ``Interrupt.checking``.
"""
from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

Check = Callable[[], None]


class Interrupt:
    """Calls the current run's cancel check (set with ``checking``); a no-op between runs."""

    def __init__(self) -> None:
        self._check: Check | None = None
        self._lock = threading.Lock()

    def __call__(self, *_: object) -> None:
        check = self._check
        if check is not None:
            check()

    @contextmanager
    def checking(self, check: Check | None) -> Iterator[None]:
        """Use ``check`` while the block runs, then the one before (None: no check)."""
        with self._lock:
            previous, self._check = self._check, check
        try:
            yield
        finally:
            with self._lock:
                self._check = previous


_INTERRUPTS: "weakref.WeakKeyDictionary[torch.nn.Module, Interrupt]" = weakref.WeakKeyDictionary()


def interrupt_of(module: torch.nn.Module) -> Interrupt:
    """The module's Interrupt, hooked into its layers the first time it is asked for."""
    interrupt = _INTERRUPTS.get(module)
    if interrupt is None:
        interrupt = _INTERRUPTS[module] = Interrupt()
        for sub in module.modules():
            sub.register_forward_pre_hook(_forward_hook(interrupt))
            if isinstance(sub, torch.nn.Linear):  # the bulk of a backward pass; no in-place use of their outputs
                sub.register_full_backward_pre_hook(_backward_hook(interrupt))
    return interrupt


def _forward_hook(interrupt: Interrupt):
    @torch.compiler.disable
    def hook(_module: torch.nn.Module, _inputs: object) -> None:
        interrupt()
    return hook


def _backward_hook(interrupt: Interrupt):
    @torch.compiler.disable
    def hook(_module: torch.nn.Module, _grad_output: object) -> None:
        interrupt()
    return hook
