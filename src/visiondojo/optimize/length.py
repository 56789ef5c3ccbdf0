"""Run length from measured throughput: plan the epochs so the schedule ends when the budget does.

The probe runs a few real training steps on a throwaway copy of the model (RNG state forked,
so the real run is unaffected), times them after a warm-up, and times evaluation batches.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from ..data.batches import Normalizer, make_batches
from ..data.sources import Source
from ..plan import Plan
from ..tasks import Task

SAFETY = 0.93
"""Share of the remaining budget that epochs are planned into; the rest absorbs machine noise."""


@dataclass
class Throughput:
    train_images_per_s: float
    eval_images_per_s: float
    probe_s: float


def measure_throughput(model: nn.Module, task: Task, plan: Plan, train: Source, runtime, normalizer: Normalizer,
                       *, warmup_steps: int = 3, max_steps: int = 12, max_seconds: float = 4.0) -> Throughput:
    from ..engine.loop import train_step
    from ..optimize.optimizers import build_optimizer

    start = time.perf_counter()
    probe = runtime.prepare_model(copy.deepcopy(model)).train()
    optimizer = build_optimizer(probe, plan.optimization)
    batches = make_batches(train, plan.optimization.batch_size, runtime.device, train=True, seed=plan.seed,
                           num_workers=plan.runtime.num_workers or None)
    with torch.random.fork_rng(devices=[runtime.device] if runtime.device.type == "cuda" else []):
        timed_images, timed_s, steps = 0, 0.0, 0
        eval_images, eval_s = 0, 0.0
        iterator = iter(batches)
        while steps < warmup_steps + max_steps:
            try:
                images, targets = next(iterator)
            except StopIteration:
                iterator = iter(batches)
                continue
            _sync(runtime.device)
            t = time.perf_counter()
            train_step(probe, task, optimizer, runtime, normalizer, images, targets)
            _sync(runtime.device)
            if steps >= warmup_steps:
                timed_s += time.perf_counter() - t
                timed_images += len(images)
                if steps - warmup_steps < 3:  # evaluation speed on the same batches
                    t = time.perf_counter()
                    with torch.no_grad(), runtime.autocast():
                        probe.eval()
                        probe(normalizer(images))
                        probe.train()
                    _sync(runtime.device)
                    eval_s += time.perf_counter() - t
                    eval_images += len(images)
            steps += 1
            if timed_s > max_seconds:
                break
    return Throughput(timed_images / max(timed_s, 1e-9), eval_images / max(eval_s, 1e-9),
                      time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def epoch_seconds(throughput: Throughput, train_size: int, val_size: int, batch_size: int) -> float:
    """Predicted seconds per epoch: training (whole batches only) plus validation."""
    trained = (train_size // batch_size) * batch_size if train_size > batch_size else train_size
    return trained / throughput.train_images_per_s + val_size / throughput.eval_images_per_s


def plan_epochs(remaining_s: float, seconds_per_epoch: float) -> int:
    return max(1, math.floor(remaining_s * SAFETY / seconds_per_epoch))
