"""Throughput and run length: plan the epochs so the schedule ends when the budget does.

Throughput is measured with real training steps (after a warm-up that primes kernels and
allocators) on a throwaway copy of the model, so the real run is unaffected.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

from torch import nn

from ..data.batches import Normalizer
from ..data.sources import Source
from ..engine.runtime import Runtime
from ..engine.step import eval_outputs, train_step
from ..plan import OptimizationParams
from ..tasks import Task
from .optimizers import build_optimizer
from .probe import endless_batches, model_copy, sync

SAFETY = 0.9
"""Share of the remaining budget that epochs are planned into; the rest absorbs machine noise."""


@dataclass
class Throughput:
    batch_size: int
    train_images_per_s: float
    eval_images_per_s: float
    seconds: float
    """Wall time the measurement took."""


def measure_throughput(model: nn.Module, task: Task, train: Source, runtime: Runtime, normalizer: Normalizer,
                       params: OptimizationParams, batch_size: int, *, seed: int = 0, warmup_steps: int = 2,
                       max_steps: int = 10, max_seconds: float = 3.0) -> Throughput:
    """Images/s of training steps (and of inference) at ``batch_size``."""
    start = time.perf_counter()
    step_s: list[float] = []
    eval_s: list[float] = []
    with model_copy(model, runtime) as probe:
        optimizer = build_optimizer(probe, params)
        batches = endless_batches(train, batch_size, runtime, seed)
        micro_batches = 1  # more after an out-of-memory error, as the run would train then
        for step in range(warmup_steps + max_steps):
            images, targets = next(batches)
            sync(runtime.device)
            t = time.perf_counter()
            micro_batches = train_step(probe, task, optimizer, runtime, normalizer(images), targets,
                                       settings=task.probe_settings, micro_batches=micro_batches).micro_batches
            sync(runtime.device)
            if step < warmup_steps:
                continue
            step_s.append(time.perf_counter() - t)
            if len(eval_s) < 2:  # inference speed on the same batches
                t = time.perf_counter()
                probe.eval()
                eval_outputs(probe, task, runtime, normalizer(images))
                probe.train()
                sync(runtime.device)
                eval_s.append(time.perf_counter() - t)
            if sum(step_s) > max_seconds:
                break
    # Medians: one step slowed by a page fault or another process must not set the plan.
    images = min(batch_size, len(train))
    return Throughput(batch_size, images / statistics.median(step_s), images / statistics.median(eval_s),
                      time.perf_counter() - start)


def epoch_seconds(throughput: Throughput, train_size: int, val_size: int) -> float:
    """Predicted seconds per epoch: training (whole batches only) plus validation."""
    batch = throughput.batch_size
    trained = (train_size // batch) * batch if train_size > batch else train_size
    return trained / throughput.train_images_per_s + val_size / throughput.eval_images_per_s


def plan_epochs(remaining_s: float, seconds_per_epoch: float) -> int:
    return max(1, math.floor(remaining_s * SAFETY / seconds_per_epoch))
