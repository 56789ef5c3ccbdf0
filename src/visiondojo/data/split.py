"""Carve a validation split out of the training data when the user gives none."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from .sources import Source


def validation_split(source: Source, fraction: float, seed: int) -> tuple[Source, Source]:
    """Stratified on the targets' ``stratify_key`` (the class of single-label targets, the rarest
    class of an image's objects); a seeded random split for targets without one (multi-hot labels).

    The validation part gets ``fraction`` of the data, at least one sample per class where the
    classes allow it, and at most 10,000 samples (enough for a stable accuracy estimate).
    """
    n = len(source)
    key = source.targets.stratify_key()
    num_classes = int(key.max()) + 1 if key is not None else 1
    val_size = int(round(n * fraction))
    val_size = min(max(val_size, num_classes), 10_000, n - 1)
    if val_size < 1:
        raise ValueError("need at least two samples to carve out a validation split")
    stratify = key.numpy() if key is not None else None
    # Only classes that occur count: labels 1..K leave class 0 empty, which is no reason to give up stratifying.
    if key is not None and int(_present_counts(key).min()) < 2:
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
    if stratify is not None:
        train_idx, val_idx = _cover_every_class(stratify, train_idx, val_idx)
    return source.subset(torch.from_numpy(train_idx)), source.subset(torch.from_numpy(val_idx))


def _present_counts(targets: torch.Tensor) -> torch.Tensor:
    counts = torch.bincount(targets)
    return counts[counts > 0]


def _cover_every_class(labels: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Give every class at least one validation sample.

    scikit-learn's stratified allocation rounds a small class's share down to zero, which leaves
    its validation precision and recall undefined. For each such class, one of its training
    samples trades places with a validation sample of the class that has the most validation
    samples (there is one with two or more, since the validation part has at least as many
    samples as there are classes). Both index arrays are already seeded shuffles, so taking the
    first candidate keeps the split deterministic.
    """
    train_idx, val_idx = train_idx.copy(), val_idx.copy()
    for k in np.unique(labels):
        val_labels = labels[val_idx]
        if (val_labels == k).any():
            continue
        counts = np.bincount(val_labels, minlength=int(labels.max()) + 1)
        donor = int(counts.argmax())
        if counts[donor] < 2:
            break
        give = int(np.flatnonzero(val_labels == donor)[0])
        take = int(np.flatnonzero(labels[train_idx] == k)[0])
        val_idx[give], train_idx[take] = train_idx[take], val_idx[give]
    return train_idx, val_idx
