"""Gradient noise scale (McCandlish et al. 2018, "An Empirical Model of Large-Batch Training").

The critical batch size is B_noise = tr(Sigma) / |G|^2: the batch at which the gradient noise
matches the signal. Below it, doubling the batch nearly halves the steps needed; above it,
extra images per step buy little. It is estimated from the squared norms of gradients at two
batch sizes, obtained for free from one big batch split into ``micro`` micro-batches (each
micro-batch gradient is a small-batch sample; their mean is the big-batch gradient):

    |G|^2 ~= (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    S     ~= (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big)

Both are unbiased but noisy, so each is smoothed with a (bias-corrected) EMA before the ratio
B_noise = S_ema / |G|^2_ema is taken. The micro-batch gradients are summed into the big-batch
gradient and the probe model takes a real optimizer step with it, so the estimate follows a
model that is training, as it would in the run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..data.sources import Source
from ..engine.runtime import Runtime
from ..engine.step import forward_loss
from ..plan import OptimizationParams
from ..tasks import Task
from .gradient_noise import NoiseScaleEMA, unbiased_estimates
from .optimizers import build_optimizer
from .probe import endless_batches, model_copy


def micro_batch_gradients(params: list[torch.Tensor], batch_loss: Callable[[torch.Tensor, Any], torch.Tensor],
                          images: torch.Tensor, targets: Any, micro: int) -> tuple[float, float, list[torch.Tensor]]:
    """Split one batch into ``micro`` equal micro-batches.

    Returns |G_small|^2 (averaged over the micro-batches), |G_big|^2, and the big-batch gradient
    (the mean of the micro-batch gradients) per parameter.
    """
    total = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    small_sq = 0.0
    for chunk_images, chunk_targets in zip(images.chunk(micro), targets.chunk(micro)):
        grads = torch.autograd.grad(batch_loss(chunk_images, chunk_targets), params, allow_unused=True)
        for acc, grad in zip(total, grads):
            if grad is not None:
                acc.add_(grad.float())
        small_sq += float(sum(g.float().square().sum() for g in grads if g is not None))
    mean = [acc / micro for acc in total]
    big_sq = float(sum(m.square().sum() for m in mean))
    return small_sq / micro, big_sq, mean


@dataclass
class NoiseScale:
    b_noise: float
    b_small: int
    b_big: int
    steps: int
    stable: bool
    seconds: float
    trajectory: list[float] = field(default_factory=list)
    """B_noise after each step."""


def is_stable(trajectory: list[float], window: int, tolerance: float) -> bool:
    """The last ``window`` estimates are finite, positive and within ``tolerance`` of each other."""
    recent = trajectory[-window:]
    if len(recent) < window or not all(0 < b < float("inf") for b in recent):
        return False
    return max(recent) / min(recent) - 1 <= tolerance


def estimate_noise_scale(model: nn.Module, task: Task, train: Source, runtime: Runtime, normalizer: Any,
                         params: OptimizationParams, *, b_big: int, micro: int = 8, seed: int = 0,
                         min_steps: int = 10, max_steps: int = 60, window: int = 5, tolerance: float = 0.15,
                         max_seconds: float = 10.0) -> NoiseScale:
    """Train a probe copy with batches of ``b_big`` until B_noise is stable (or time is up)."""
    start = time.perf_counter()
    b_big -= b_big % micro
    ema = NoiseScaleEMA(b_big // micro, b_big)
    trajectory: list[float] = []
    with model_copy(model, runtime) as probe:
        optimizer = build_optimizer(probe, params)
        trainable = [p for p in probe.parameters() if p.requires_grad]
        batches = endless_batches(train, b_big, runtime, seed)
        def batch_loss(images: torch.Tensor, targets: Any) -> torch.Tensor:
            return forward_loss(probe, task, runtime, normalizer(images), targets).loss

        for step in range(max_steps):
            images, targets = next(batches)
            small_sq, big_sq, grads = micro_batch_gradients(trainable, batch_loss, images, targets, micro)
            trajectory.append(ema.update(small_sq, big_sq))
            for param, grad in zip(trainable, grads):
                param.grad = grad.to(param.dtype)
            optimizer.step()
            done = step + 1 >= min_steps and is_stable(trajectory, window, tolerance)
            if done or time.perf_counter() - start > max_seconds:
                break
    stable = is_stable(trajectory, window, tolerance)
    return NoiseScale(ema.b_noise, ema.b_small, b_big, len(trajectory), stable, time.perf_counter() - start,
                      [round(b, 2) for b in trajectory])

