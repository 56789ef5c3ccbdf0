"""Carve a validation split out of the training data when the user gives none."""

from __future__ import annotations

import warnings

import torch
from sklearn.model_selection import train_test_split

from .sources import Source


def validation_split(source: Source, fraction: float, seed: int) -> tuple[Source, Source]:
    """Stratified by class for single-label targets; a seeded random split for multi-label ones.

    The validation part gets ``fraction`` of the data, at least one sample per class where the
    classes allow it, and at most 10,000 samples (enough for a stable accuracy estimate).
    """
    n = len(source)
    targets = source.targets
    num_classes = int(targets.max()) + 1 if targets.ndim == 1 else targets.shape[1]
    val_size = int(round(n * fraction))
    val_size = min(max(val_size, num_classes if targets.ndim == 1 else 1), 10_000, n - 1)
    if val_size < 1:
        raise ValueError("need at least two samples to carve out a validation split")
    stratify = targets.numpy() if targets.ndim == 1 else None
    if stratify is not None and torch.bincount(targets).min() < 2:
        warnings.warn(
            f"{source.origin}: some class has fewer than 2 samples, so the validation split is random, not stratified",
            stacklevel=2,
        )
        stratify = None
    if stratify is not None and val_size < num_classes:
        stratify = None
    train_idx, val_idx = train_test_split(
        torch.arange(n).numpy(), test_size=val_size, stratify=stratify, random_state=seed
    )
    return source.subset(torch.from_numpy(train_idx)), source.subset(torch.from_numpy(val_idx))
