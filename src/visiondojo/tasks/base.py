"""The Task interface: everything the training loop must not know about a task.

The loop only calls these methods; classification implements them now, detection and
segmentation (boxes, masks, their collate and metrics) implement the same interface later.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torchmetrics import MetricCollection

from ..augment.geometry import Geometry


class Task(ABC):
    name: str
    monitor: str = "acc"
    """Validation metric (higher is better) for the best checkpoint and early stopping."""

    @abstractmethod
    def loss(self, outputs: torch.Tensor, targets: Any, class_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Mean training loss of a batch. ``targets`` may be hard or soft (from ``soft_targets``,
        possibly smoothed or mixed); ``class_weights`` (K,) reweight classes (class balance)."""

    def soft_targets(self, targets: Any) -> torch.Tensor:
        """Hard targets -> float targets of the loss's shape, which label smoothing and mixing blend."""
        raise NotImplementedError(f"{self.name}: soft labels are not supported")

    def soft_from_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """Probabilities (``scores``) -> float targets of the loss's shape: a teacher's soft labels."""
        raise NotImplementedError(f"{self.name}: soft labels are not supported")

    smoothing_classes: int = 2
    """Classes label smoothing spreads over: K for softmax tasks, 2 for each sigmoid output."""

    @abstractmethod
    def per_sample_loss(self, outputs: torch.Tensor, targets: Any) -> torch.Tensor:
        """(N,) loss per sample: ranks the worst mistakes for the report."""

    @abstractmethod
    def metrics(self) -> MetricCollection:
        """Fresh torchmetrics collection; updated with ``(scores(outputs), targets)``."""

    @abstractmethod
    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        """Model outputs -> probabilities."""

    @abstractmethod
    def correct(self, scores: torch.Tensor, targets: Any) -> torch.Tensor:
        """Bool tensor: which validation units the ``scores`` get right (an image, or an image x label
        for multi-label tasks): what paired tests between two models count (``visiondojo.paired``)."""

    @abstractmethod
    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        """Model outputs -> final predictions (class indices, multi-hot labels, boxes...)."""

    def collate(self, samples: list[tuple[torch.Tensor, Any]]) -> tuple[torch.Tensor, Any]:
        """Samples -> batch. Fixed-size targets stack; detection overrides this with lists of boxes."""
        images, targets = zip(*samples)
        return torch.stack(images), torch.stack([torch.as_tensor(t) for t in targets])

    def to_device(self, targets: Any, device: torch.device) -> Any:
        return targets.to(device, non_blocking=True)

    def move_targets(self, targets: Any, geometry: Geometry) -> Any:
        """Move the targets with their images (``visiondojo.augment.Geometry``: one matrix per sample).

        Class labels do not move with the image, so classification returns them unchanged;
        detection and segmentation move boxes, masks and keypoints with ``augment.warp_*``.
        """
        return targets
