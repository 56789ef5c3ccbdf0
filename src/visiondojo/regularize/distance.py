"""How far each (transform, magnitude) pair moves the data, as the model sees it.

The model is a briefly trained copy (the search's first proxy: the start of a real run; no
pretrained network is available offline). For a few thousand training images, clean and
augmented, we take its features (``Task.features``: a classifier's penultimate features, the
input of its head; a detector's backbone feature maps, averaged over space) and compare their
Gaussian statistics with a simplified Fréchet distance, diagonal covariance:

    d^2 = ||mu_a - mu_c||^2 + sum_k (sigma_a,k - sigma_c,k)^2,

divided by the clean features' total variance sum_k sigma_c,k^2, so the figure is scale-free
("how many clean spreads away") and comparable across models and layers. The full-covariance
FID needs a matrix square root of a D x D matrix, costly and ill-conditioned for a few thousand
samples in hundreds of dimensions; the diagonal form keeps the mean shift and the spread change,
which is what separates a mild op from a destructive one. Next to it, for tasks with per-sample
losses, the loss shift: the mean loss on augmented images minus the mean on clean ones (how much
harder the op makes the task); a detector's loss needs the boxes moved and the model in training
mode, so it has none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..augment import Augmenter
from ..data.batches import Normalizer
from ..engine.runtime import Runtime
from ..plan import AugmentOp
from ..tasks import Task

MAGNITUDES = (0.2, 0.4, 0.6, 0.8, 1.0)
"""The magnitude grid each op is measured at."""


@dataclass
class Distance:
    op: str
    magnitude: float
    distance: float
    """Simplified Fréchet distance over the clean features' total variance."""
    loss_shift: float | None
    """None for a task without per-sample losses (a detector)."""


@dataclass
class FeatureStats:
    mean: torch.Tensor
    std: torch.Tensor
    loss: float | None


def frechet_diagonal(a: FeatureStats, clean: FeatureStats) -> float:
    """Diagonal-covariance Fréchet distance between two feature distributions, over the clean spread."""
    squared = (a.mean - clean.mean).square().sum() + (a.std - clean.std).square().sum()
    return float(squared / clean.std.square().sum().clamp_min(1e-12))


@torch.no_grad()
def feature_stats(model: nn.Module, task: Task, pixels: torch.Tensor, targets: Any, normalizer: Normalizer,
                  runtime: Runtime, batch_size: int = 256) -> FeatureStats:
    """Mean and std of the task's features (``Task.features``), and the mean loss when the task has
    per-sample losses, over ``pixels`` in [0, 1] units."""
    with_loss = task.capabilities.per_sample_loss
    was_training = model.training
    model.eval()
    captured, losses = [], []
    try:
        for start in range(0, len(pixels), batch_size):
            with runtime.autocast():
                features, outputs = task.features(model, normalizer.standardize(pixels[start:start + batch_size]))
            captured.append(features.float())
            if with_loss:
                losses.append(task.per_sample_loss(outputs, targets[start:start + batch_size]))
    finally:
        model.train(was_training)
    features = torch.cat(captured)
    return FeatureStats(features.mean(dim=0), features.std(dim=0), float(torch.cat(losses).mean()) if losses else None)


def measure_distances(model: nn.Module, task: Task, pixels: torch.Tensor, targets: Any, ops: list[str],
                      normalizer: Normalizer, runtime: Runtime, seed: int = 0,
                      magnitudes: tuple[float, ...] = MAGNITUDES) -> list[Distance]:
    """Distance and loss shift of every (op, magnitude) pair on the same images and random draws."""
    clean = feature_stats(model, task, pixels, targets, normalizer, runtime)
    rows = []
    for name in ops:
        for magnitude in magnitudes:
            generator = torch.Generator(device=pixels.device).manual_seed(seed)  # same draws for every pair
            augmented, applied = Augmenter([AugmentOp(name, magnitude)])(pixels, generator)
            moved = task.move_targets(targets, applied)  # class labels stay; masks and boxes follow the op
            stats = feature_stats(model, task, augmented, moved, normalizer, runtime)
            shift = None if stats.loss is None or clean.loss is None else round(stats.loss - clean.loss, 6)
            rows.append(Distance(name, magnitude, round(frechet_diagonal(stats, clean), 6), shift))
    return rows
