"""What every meta-learner needs: a throwaway copy of the model, endless batches, and a clock.

Meta-learners measure on a deep copy inside a forked RNG, so the real run starts from the
same weights and random state whether or not they ran (a replayed plan trains identically).
"""

from __future__ import annotations

import contextlib
import copy
import time
from typing import Iterator

import torch
from torch import nn

from ..data.batches import make_batches
from ..data.sources import Source
from ..engine.runtime import Runtime

Batch = tuple[torch.Tensor, torch.Tensor]


@contextlib.contextmanager
def model_copy(model: nn.Module, runtime: Runtime) -> Iterator[nn.Module]:
    """A training-mode copy of ``model`` on the run's device, inside a forked RNG."""
    devices = [runtime.device] if runtime.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield runtime.prepare_model(copy.deepcopy(model)).train()


def endless_batches(source: Source, batch_size: int, runtime: Runtime, seed: int,
                    num_workers: int | None = None) -> Iterator[Batch]:
    """Training batches of ``batch_size``, epoch after epoch, for as long as a probe needs them."""
    batches = make_batches(source, batch_size, runtime.device, train=True, seed=seed + 7919, num_workers=num_workers)
    epoch = 0
    while True:
        batches.set_epoch(epoch)
        yield from batches
        epoch += 1


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Seconds since creation."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start
