"""Fault injection: the hook through which tests and ``bench/faults.py`` make a training step fail
the way real runs fail, on any machine.

Inert unless a ``Faults`` is active (``injected``). Steps are counted by ``train_one_epoch`` (the
user's run and the policy search's proxies; not the planning probes, which call the step
directly), from 1. ``nan_at`` poisons those steps' loss with NaN after the forward pass, as an
overflow would; ``oom_at`` raises ``torch.OutOfMemoryError`` when those steps first try their
whole batch, as a CUDA allocator would (a CPU never raises it: the host swaps or the kernel
kills the process instead).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator

import torch


@dataclass
class Faults:
    nan_at: set[int] = field(default_factory=set)
    oom_at: set[int] = field(default_factory=set)
    step: int = 0
    """The training step being run (1-based); 0 before the first."""
    raised: list[str] = field(default_factory=list)
    """What was injected, in order: ``nan@7``, ``oom@12``."""


_active: Faults | None = None


@contextlib.contextmanager
def injected(faults: Faults) -> Iterator[Faults]:
    global _active
    previous, _active = _active, faults
    try:
        yield faults
    finally:
        _active = previous


def next_step() -> None:
    if _active is not None:
        _active.step += 1


def before_forward(whole_batch: bool) -> None:
    """Raise an injected out-of-memory error on a chosen step's first, whole-batch attempt."""
    if _active is not None and whole_batch and _active.step in _active.oom_at:
        _active.oom_at.discard(_active.step)
        _active.raised.append(f"oom@{_active.step}")
        raise torch.OutOfMemoryError("CUDA out of memory (injected by visiondojo.engine.faults)")


def after_forward(loss: torch.Tensor) -> torch.Tensor:
    """``loss``, or NaN on a chosen step."""
    if _active is not None and _active.step in _active.nan_at:
        _active.nan_at.discard(_active.step)
        _active.raised.append(f"nan@{_active.step}")
        return loss * float("nan")
    return loss
