"""The Task interface: everything the training loop must not know about a task.

The loop only calls these methods; classification implements them now, detection and
segmentation (boxes, masks, their collate and metrics) implement the same interface later.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torchmetrics import MetricCollection


class Task(ABC):
    name: str
    monitor: str = "acc"
    """Validation metric (higher is better) for the best checkpoint and early stopping."""

    @abstractmethod
    def loss(self, outputs: torch.Tensor, targets: Any) -> torch.Tensor:
        """Mean training loss of a batch."""

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
    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        """Model outputs -> final predictions (class indices, multi-hot labels, boxes...)."""

    def collate(self, samples: list[tuple[torch.Tensor, Any]]) -> tuple[torch.Tensor, Any]:
        """Samples -> batch. Fixed-size targets stack; detection overrides this with lists of boxes."""
        images, targets = zip(*samples)
        return torch.stack(images), torch.stack([torch.as_tensor(t) for t in targets])

    def to_device(self, targets: Any, device: torch.device) -> Any:
        return targets.to(device, non_blocking=True)

    def move_targets(self, targets: Any, affine: torch.Tensor | None, size: tuple[int, int]) -> Any:
        """Apply a per-sample geometric transform (N, 2, 3) to the targets.

        Class labels do not move with the image, so classification returns them unchanged;
        boxes, masks and keypoints will.
        """
        return targets
