"""Learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks").

A probe copy trains for a few dozen steps while the learning rate grows exponentially from
``lr_start`` to ``lr_end``; the loss against the learning rate shows where learning is fastest
and where it diverges. The suggestion rule (``suggest_lr``) is built to survive real curves:

1. the curve ends at the first NaN or infinite loss (that learning rate diverged);
2. a running median over 5 steps removes isolated spikes, then a bias-corrected EMA smooths;
3. the curve also ends once the smoothed loss exceeds 4x its running minimum (divergence);
4. the first 10% of the steps never hold the minimum (early transients: BatchNorm statistics
   settling, a lucky first batch);
5. the suggestion is the learning rate at the smoothed minimum divided by 10: at the minimum
   the loss is about to blow up, one decade lower it still falls steeply and stays stable
   over a whole schedule.

When the batch changes, ``scale_lr`` moves a learning rate along the noise-scale relation
eps_opt(B) = eps_max / (1 + B_noise / B) (McCandlish et al. 2018).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..data.sources import Source
from ..engine.runtime import Runtime
from ..engine.step import train_step
from ..plan import OptimizationParams
from ..tasks import Task
from .optimizers import build_optimizer
from .probe import endless_batches, model_copy

MEDIAN_WINDOW = 5
EMA_DECAY = 0.8
DIVERGENCE_FACTOR = 4.0
SKIP_SHARE = 0.1
BELOW_MINIMUM = 10.0


@dataclass
class LRSuggestion:
    lr: float
    index: int
    """Step whose learning rate, divided by BELOW_MINIMUM, is the suggestion."""
    smoothed: list[float]
    usable: int
    """Number of leading steps kept (the rest diverged)."""


def _running_median(values: list[float], window: int) -> list[float]:
    half = window // 2
    return [statistics.median(values[max(0, i - half): i + half + 1]) for i in range(len(values))]


def suggest_lr(lrs: list[float], losses: list[float]) -> LRSuggestion:
    """The learning rate to train with, from a range test's (lr, loss) pairs; rule in the module docstring."""
    if len(lrs) != len(losses) or len(lrs) < 3:
        raise ValueError("suggest_lr needs at least 3 (lr, loss) pairs of equal length")
    finite = next((i for i, loss in enumerate(losses) if not math.isfinite(loss)), len(losses))
    if finite < 3:
        raise ValueError("the loss diverged in the first steps of the range test; start it lower")
    medians = _running_median(list(losses[:finite]), MEDIAN_WINDOW)
    smoothed, average = [], 0.0
    for i, value in enumerate(medians):
        average = EMA_DECAY * average + (1 - EMA_DECAY) * value
        smoothed.append(average / (1 - EMA_DECAY ** (i + 1)))
    usable = len(smoothed)
    best = smoothed[0]
    for i, value in enumerate(smoothed):
        if value > DIVERGENCE_FACTOR * best and i > 0:
            usable = i
            break
        best = min(best, value)
    skip = min(int(SKIP_SHARE * usable), usable - 1)
    index = min(range(skip, usable), key=smoothed.__getitem__)
    return LRSuggestion(lrs[index] / BELOW_MINIMUM, index, smoothed, usable)


def scale_lr(lr: float, from_batch: int, to_batch: int, b_noise: float) -> float:
    """Move ``lr`` tuned at ``from_batch`` to ``to_batch`` with eps(B) = eps_max / (1 + B_noise / B)."""
    eps_max = lr * (1 + b_noise / from_batch)
    return eps_max / (1 + b_noise / to_batch)


@dataclass
class RangeTest:
    suggestion: float
    batch_size: int
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    seconds: float = 0.0
    stopped: str = "planned steps"
    """Why the test ended: ``planned steps``, ``diverged`` or ``time`` (``max_seconds`` ran out first)."""


LR_RANGES = {"adamw": (1e-6, 1.0), "lamb": (1e-5, 10.0), "sgd": (1e-4, 10.0), "lars": (1e-3, 100.0)}


def lr_range_test(model: nn.Module, task: Task, train: Source, runtime: Runtime, normalizer: Any,
                  params: OptimizationParams, batch_size: int, *, seed: int = 0, steps: int = 80,
                  max_seconds: float = 15.0) -> RangeTest:
    """Run the range test with the plan's optimizer on a probe copy and suggest a learning rate."""
    start = time.perf_counter()
    lr_start, lr_end = LR_RANGES.get(params.optimizer, (1e-6, 1.0))
    growth = (lr_end / lr_start) ** (1 / max(steps - 1, 1))
    lrs, losses = [], []
    stopped = "planned steps"
    with model_copy(model, runtime) as probe:
        optimizer = build_optimizer(probe, params)
        batches = endless_batches(train, batch_size, runtime, seed)
        micro_batches = 1  # more after an out-of-memory error, as the run would train then
        for step in range(steps):
            lr = lr_start * growth ** step
            for group in optimizer.param_groups:
                group["lr"] = lr
            images, targets = next(batches)
            trained = train_step(probe, task, optimizer, runtime, normalizer(images), targets,
                                 micro_batches=micro_batches)
            loss, micro_batches = float(trained.loss), trained.micro_batches
            lrs.append(lr)
            losses.append(loss)
            if not math.isfinite(loss) or (len(losses) > 5 and loss > 2 * DIVERGENCE_FACTOR * min(losses)):
                stopped = "diverged"
                break
            if time.perf_counter() - start > max_seconds and step + 1 < steps:
                stopped = "time"
                break
    found = suggest_lr(lrs, losses)
    return RangeTest(found.lr, batch_size, [float(f"{x:.4g}") for x in lrs], [round(x, 5) for x in losses],
                     [round(x, 5) for x in found.smoothed], time.perf_counter() - start, stopped)
