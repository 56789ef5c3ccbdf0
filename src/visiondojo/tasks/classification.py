"""Binary (one sigmoid logit), multi-class (softmax) and multi-label (per-class sigmoid) classification.

Losses are computed in float32 even under bf16 autocast: logits are few, and a low-precision
log-sum-exp costs accuracy for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    AUROC,
    Accuracy,
    ExactMatch,
    F1Score,
    Precision,
    Recall,
)

from .base import Capabilities, Review, Task


@dataclass
class Predictions:
    """What ``Run.predict`` returns for classification."""

    labels: torch.Tensor
    """(N,) class indices, or (N, K) 0/1 for multi-label."""
    scores: torch.Tensor
    """(N, K) probabilities."""
    class_names: list[str]

    def names(self) -> list[str] | list[list[str]]:
        if self.labels.ndim == 2:
            return [[self.class_names[k] for k in row.nonzero()[:, 0].tolist()] for row in self.labels]
        return [self.class_names[int(i)] for i in self.labels]


CLASSIFICATION = Capabilities(soft_labels=True, mixes=("mixup", "cutmix"), per_sample_loss=True, class_balance=True)


class ClassificationTask(Task):
    """What the three classification tasks share: predictions of new images."""

    capabilities = CLASSIFICATION

    def predictions(self, outputs: list[Any], class_names: list[str]) -> Predictions:
        logits = torch.cat([o.float().cpu() for o in outputs])
        return Predictions(self.predict(logits), self.scores(logits), class_names)


class MultiClassTask(ClassificationTask):
    name = "multiclass"

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.smoothing_classes = num_classes

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
        if class_weights is None or not targets.is_floating_point():
            return F.cross_entropy(outputs.float(), targets, weight=class_weights)
        # Soft targets: the weighted mean that torch computes for index targets,
        # sum_i sum_c w_c y_ic l_ic / sum_i sum_c w_c y_ic, so smoothing or mixing a one-hot
        # target never changes what the class weights mean.
        weighted = targets * class_weights
        return -(weighted * outputs.float().log_softmax(dim=1)).sum() / weighted.sum().clamp_min(1e-12)

    def soft_targets(self, targets: torch.Tensor) -> torch.Tensor:
        if targets.is_floating_point():
            return targets
        return F.one_hot(targets, self.num_classes).float()

    def soft_from_scores(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.float()

    def per_sample_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.float(), targets, reduction="none")

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float().softmax(dim=1)

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.argmax(dim=1)

    def correct(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.scores(outputs).argmax(dim=1) == targets.to(outputs.device)

    def review(self, scores: torch.Tensor, targets: torch.Tensor, losses: torch.Tensor, class_names: list[str],
               limit: int) -> Review:
        """Confusion matrix and the highest-loss misclassified images, captioned "true -> predicted"."""
        predicted = scores.argmax(dim=1)
        k = self.num_classes
        confusion = np.bincount((targets * k + predicted).numpy(), minlength=k * k).reshape(k, k)
        captions = [f"{class_names[int(t)]} -> {class_names[int(p)]}" for t, p in zip(targets, predicted)]
        return Review(confusion, worst_mistakes(predicted != targets, losses, captions, limit))

    def metrics(self) -> MetricCollection:
        k = self.num_classes
        return MetricCollection({
            "acc": Accuracy(task="multiclass", num_classes=k),
            "f1_macro": F1Score(task="multiclass", num_classes=k, average="macro"),
            "precision": Precision(task="multiclass", num_classes=k, average="none"),
            "recall": Recall(task="multiclass", num_classes=k, average="none"),
            "auroc": AUROC(task="multiclass", num_classes=k),
        })


class BinaryTask(MultiClassTask):
    """One logit, sigmoid + BCE. Metrics reuse the two-class view [1 - p, p], which gives
    per-class precision/recall for both classes and an AUROC equal to the binary one."""

    name = "binary"

    def __init__(self) -> None:
        super().__init__(num_classes=2)
        self.smoothing_classes = 2

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
        targets = targets.float()
        if class_weights is None:
            return F.binary_cross_entropy_with_logits(outputs.float()[:, 0], targets)
        # (2,): weight of class 0 and class 1, blended for soft targets; a weighted mean, as torch's
        # cross entropy takes, so class weights shift the balance, not the loss scale.
        weight = torch.lerp(class_weights[0], class_weights[1], targets)
        losses = F.binary_cross_entropy_with_logits(outputs.float()[:, 0], targets, reduction="none")
        return (weight * losses).sum() / weight.sum().clamp_min(1e-12)

    def soft_targets(self, targets: torch.Tensor) -> torch.Tensor:
        return targets.float()

    def soft_from_scores(self, scores: torch.Tensor) -> torch.Tensor:
        return scores[:, 1].float()  # the two-class view [1 - p, p] back to p

    def per_sample_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(outputs.float()[:, 0], targets.float(), reduction="none")

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        p = outputs.float()[:, 0].sigmoid()
        return torch.stack([1 - p, p], dim=1)

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        return (outputs[:, 0] > 0).long()


class MultiLabelTask(ClassificationTask):
    name = "multilabel"

    def __init__(self, num_labels: int, threshold: float = 0.5):
        self.num_labels = num_labels
        self.threshold = threshold

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
        targets = targets.float()
        if class_weights is None:
            return F.binary_cross_entropy_with_logits(outputs.float(), targets)
        # (K,): scales each label's positive term, negatives keep weight 1; a weighted mean, so the
        # weights shift the balance between positives and negatives, not the loss scale.
        weight = 1 + targets * (class_weights - 1)
        losses = F.binary_cross_entropy_with_logits(outputs.float(), targets, reduction="none")
        return (weight * losses).sum() / weight.sum().clamp_min(1e-12)

    def soft_targets(self, targets: torch.Tensor) -> torch.Tensor:
        return targets.float()

    def soft_from_scores(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.float()

    def per_sample_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(outputs.float(), targets.float(), reduction="none").mean(dim=1)

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float().sigmoid()

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        return (self.scores(outputs) > self.threshold).long()

    unit = "image labels"

    def correct(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return ((self.scores(outputs) > self.threshold) == targets.to(outputs.device).bool()).reshape(-1)

    def review(self, scores: torch.Tensor, targets: torch.Tensor, losses: torch.Tensor, class_names: list[str],
               limit: int) -> Review:
        """The highest-loss images with any label wrong, captioned "true labels -> predicted labels"."""
        predicted = (scores > self.threshold).long()

        def labels(row: torch.Tensor) -> str:
            return "+".join(class_names[k] for k in row.nonzero()[:, 0].tolist()) or "none"

        captions = [f"{labels(t)} -> {labels(p)}" for t, p in zip(targets, predicted)]
        return Review(None, worst_mistakes((predicted != targets.long()).any(dim=1), losses, captions, limit))

    def metrics(self) -> MetricCollection:
        k, t = self.num_labels, self.threshold
        return MetricCollection({
            "acc": Accuracy(task="multilabel", num_labels=k, threshold=t),
            "exact_match": ExactMatch(task="multilabel", num_labels=k, threshold=t),
            "f1_macro": F1Score(task="multilabel", num_labels=k, threshold=t, average="macro"),
            "precision": Precision(task="multilabel", num_labels=k, threshold=t, average="none"),
            "recall": Recall(task="multilabel", num_labels=k, threshold=t, average="none"),
            "auroc": AUROC(task="multilabel", num_labels=k),
        })


def worst_mistakes(wrong: torch.Tensor, losses: torch.Tensor, captions: list[str], limit: int) -> list[tuple[int, str]]:
    """Up to ``limit`` wrong samples, highest loss first, with their captions."""
    ranked = torch.where(wrong, losses, torch.full_like(losses, -1.0))
    order = ranked.argsort(descending=True)[: min(limit, int(wrong.sum()))]
    return [(int(i), captions[int(i)]) for i in order]
