"""The Task interface: everything the training loop must not know about a task.

Every place that runs a model goes through a Task: the training forward (``forward_train``: model
and batch -> loss and logged terms), the evaluation forward (``forward_eval``: -> outputs in the
task's own form) and the metric update (``update_metrics``). The defaults call ``model(inputs)``
and read its output as the task's ``loss`` and ``scores`` expect (the classification shape); a
detector, whose torchvision protocol returns a loss dict in training and a list of dicts in eval,
overrides the three. ``capabilities`` tells the policy search and the SSL stages which of their
tools apply (soft labels, mixing, per-sample losses); ``features`` gives the policy search's
distance analysis what it compares, and ``correct`` the units its paired tests count.

Batching and device transfer are not per task: every task's targets live in one container
(``data.targets``: dense tensors or ragged objects with offsets) whose ``gather`` builds a batch
and whose batch ``to`` moves it, so a task sees its targets already batched on the device, as a
tensor or as a ``RaggedBatch``. What is per task is how targets move with augmented images
(``move_targets``) and what smoothing and mixing do to them (``capabilities.mixes``, ``mix_targets``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torchmetrics import MetricCollection

from ..augment.erase import hidden_share
from ..augment.geometry import warp_boxes
from ..augment.mixing import mix, smooth
from ..augment.policy import Applied
from ..data.targets import RaggedBatch
from ..errors import ModelError
from ..models.adapt import find_head


@dataclass(frozen=True)
class Capabilities:
    """What a task supports, for the stages that choose regularization and semi-supervised learning."""

    soft_labels: bool = False
    """Float targets that label smoothing and a teacher's soft labels blend."""
    mixes: tuple[str, ...] = ()
    """The mixes of two samples the targets can follow (``mix_targets``): ``mixup`` and ``cutmix``
    for class labels; ``cutmix`` alone for masks (a pixel cannot take two classes, so a blend of two
    images has no mask, while a pasted rectangle carries its own)."""
    per_sample_loss: bool = False
    """``per_sample_loss`` exists: the worst-mistakes gallery and the distance measures use it."""
    class_balance: bool = False
    """Each sample has one class that the loss can weight or the sampler draw by (class balance)."""
    pixel_balance: bool = False
    """Class counts are pixel counts: class balance reweights the loss per pixel, never resamples
    (``regularize.class_balance.choose_pixel_balance``)."""
    dice: bool = False
    """A Dice term can join the loss (``LossSettings.dice``): per-pixel classes (segmentation)."""
    box_mixing: bool = False
    """Mosaic and box mixup can build an image from several, its boxes from theirs: ragged targets
    with ``boxes`` (``augment.detection_mix``)."""


@dataclass(frozen=True)
class LossSettings:
    """What the plan sets in a training loss, built once per training (``regularize.batch.loss_settings``).

    Label smoothing of soft targets (classification) happens in the target stage, before mixing
    (``mix_targets``), so a mixed pair blends smoothed targets; a task whose targets stay hard
    (masks: a class index per pixel) smooths inside its loss with ``label_smoothing`` instead.
    """

    class_weights: torch.Tensor | None = None
    """(K,) loss weight per class (class balance), or None."""
    label_smoothing: float = 0.0
    """Read by losses of hard targets only (see above)."""
    dice: float = 0.0
    """Weight of a soft Dice term beside the cross-entropy (``capabilities.dice``)."""


@dataclass
class StepLoss:
    """The training forward's result: the mean loss to backpropagate and the terms worth logging
    (a detector's box and class losses; empty for a single-term loss)."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    stepped: bool = True
    """After a training step: False when it was skipped (its gradients were not finite)."""
    micro_batches: int = 1
    """After a training step: the parts its batch was trained in (more after out-of-memory errors)."""


@dataclass
class Review:
    """What a task shows of one evaluated split in the report, beside the metrics."""

    confusion: np.ndarray | None = None
    """(K, K) counts, true class by row: single-label classification."""
    mistakes: list[tuple[int, str]] = field(default_factory=list)
    """(sample index in the split, caption), worst first: the gallery of the worst mistakes."""


class Task(ABC):
    name: str
    monitor: str = "acc"
    """Validation metric (higher is better) for the best checkpoint and early stopping."""
    capabilities: Capabilities = Capabilities()
    first_batch_candidate: int = 64
    """The smallest batch the throughput scan tries: below 64 a classifier of small images spends
    its step on overhead, while a detector's images are costly enough to keep a CPU busy at 8."""
    probe_settings: LossSettings = LossSettings()
    """The loss the memory and throughput probes train with: the costliest the plan may still
    choose after them (the target stage comes later), so the batch they size fits whatever it picks."""
    min_visible_box: float = 0.0
    """A moved box keeping less than this share of its area inside the image is dropped (``move_targets``)."""

    def forward_train(self, model: nn.Module, inputs: torch.Tensor, targets: Any,
                      settings: LossSettings = LossSettings()) -> StepLoss:
        """The training forward on model-ready ``inputs`` (the caller holds the autocast context)."""
        return StepLoss(self.loss(model(inputs), targets, settings.class_weights))

    def forward_eval(self, model: nn.Module, inputs: torch.Tensor) -> Any:
        """The evaluation forward (model in eval mode, no grad): outputs in the form ``scores``,
        ``predict``, ``per_sample_loss`` and ``update_metrics`` take."""
        return model(inputs)

    def finish_metrics(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The computed metrics as the run reports them (a task may align or drop entries)."""
        return values

    def update_metrics(self, metrics: MetricCollection, outputs: Any, targets: Any) -> None:
        """Add one evaluated batch to ``metrics`` (a collection from ``self.metrics()``)."""
        metrics.update(self.scores(outputs), targets.long() if targets.dtype.is_floating_point else targets)

    def loss(self, outputs: torch.Tensor, targets: Any, class_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Mean training loss of a batch. ``targets`` may be hard or soft (from ``soft_targets``,
        possibly smoothed or mixed); ``class_weights`` (K,) reweight classes (class balance).
        A task whose model computes its own loss (a detector) overrides ``forward_train`` instead."""
        raise NotImplementedError(f"{self.name}: the loss comes from forward_train")

    def mix_targets(self, pixels: torch.Tensor, targets: Any, label_smoothing: float, mixup: float, cutmix: float,
                    generator: torch.Generator) -> tuple[torch.Tensor, Any]:
        """The target stage of a training batch (pixels in [0, 1] units): soft targets
        (``soft_targets``), smoothed, then mixup and CutMix of images and targets alike."""
        soft = self.soft_targets(targets)
        if label_smoothing > 0:
            soft = smooth(soft, label_smoothing, self.smoothing_classes)
        pixels, soft, _ = mix(pixels, soft, mixup, cutmix, generator)
        return pixels, soft

    def soft_targets(self, targets: Any) -> torch.Tensor:
        """Hard targets -> float targets of the loss's shape, which label smoothing and mixing blend."""
        raise NotImplementedError(f"{self.name}: soft labels are not supported")

    def soft_from_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """Probabilities (``scores``) -> float targets of the loss's shape: a teacher's soft labels."""
        raise NotImplementedError(f"{self.name}: soft labels are not supported")

    smoothing_classes: int = 2
    """Classes label smoothing spreads over: K for softmax tasks, 2 for each sigmoid output."""

    def per_sample_loss(self, outputs: torch.Tensor, targets: Any) -> torch.Tensor:
        """(N,) loss per sample: ranks the worst mistakes for the report (``capabilities.per_sample_loss``)."""
        raise NotImplementedError(f"{self.name}: no per-sample loss")

    @abstractmethod
    def metrics(self) -> MetricCollection:
        """Fresh torchmetrics collection; updated with ``(scores(outputs), targets)``."""

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        """Model outputs -> probabilities (tasks with per-sample losses: paired tests and the report read them)."""
        raise NotImplementedError(f"{self.name}: no per-image class scores")

    unit: str = "images"
    """What ``correct`` counts, as the plan's evidence names it."""

    def correct(self, outputs: Any, targets: Any) -> torch.Tensor:
        """Bool tensor: which validation units the ``forward_eval`` outputs of a batch get right (an
        image; an image x label for multi-label tasks; a true object for detection): what the paired
        tests between two models count (``visiondojo.paired``)."""
        raise NotImplementedError(f"{self.name}: no per-unit correctness for paired tests")

    min_proxy_right: float = 0.0
    """The policy search stops when its first proxy gets fewer of its validation units right: a
    model that has learned next to nothing differs from another by noise. A classifier's proxies
    are above chance after a few epochs; a detector's may find almost no object."""

    def units_per_sample(self, targets: Any) -> float:
        """Mean validation units per sample in ``targets`` (a split's target container): sizes the
        validation subset of the policy search. One image is one unit; multi-label tasks count
        images too, the conservative choice (their labels are not independent)."""
        return 1.0

    def feature_source(self, model: nn.Module) -> str | None:
        """Where ``features`` reads this model (for the plan's evidence), or None when it cannot:
        then the policy search does not run."""
        return "the classifier head's input" if find_head(model) is not None else None

    def features(self, model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """((N, D) float features, ``forward_eval`` outputs or None) of model-ready ``inputs``, model in
        eval mode: the augmentation distances compare the features' statistics on clean and
        augmented images (``regularize.distance``), and the outputs give the loss shift when the
        task has per-sample losses. Here: the input of the classifier head (``models.adapt.find_head``),
        read by a hook during one evaluation forward."""
        head = find_head(model)
        if head is None:
            raise ModelError("augmentation distances need the model's classifier head (a last Linear or 1x1 conv); "
                             "pin regularization.augment to skip the policy search")
        captured: list[torch.Tensor] = []
        hook = head[1].register_forward_pre_hook(lambda module, args: captured.append(pooled(args[0])))
        try:
            outputs = self.forward_eval(model, inputs)
        finally:
            hook.remove()
        return captured[0], outputs

    def predict(self, outputs: Any) -> Any:
        """Model outputs -> final predictions (class indices, multi-hot labels, boxes...)."""
        return outputs

    def predictions(self, outputs: list[Any], class_names: list[str]) -> Any:
        """``forward_eval`` outputs of new images, chunk by chunk -> what ``Run.predict`` returns."""
        raise NotImplementedError(f"{self.name}: prediction of new images is not supported yet")

    def kept_outputs(self, outputs: Any) -> torch.Tensor:
        """What ``engine.evaluate(collect=True)`` keeps of a batch's outputs for ``review``: the
        scores (probabilities) by default; a task whose scores are large keeps a compact form."""
        return self.scores(outputs)

    def review(self, scores: torch.Tensor, targets: Any, losses: torch.Tensor, class_names: list[str],
               limit: int) -> Review:
        """The report's task sections from one split's kept outputs (``kept_outputs``), targets and
        per-sample losses (``engine.evaluate`` with ``collect=True``); a task without them shows none."""
        return Review()

    def draw_mistake(self, pixels: torch.Tensor, kept: torch.Tensor, target: Any, class_names: list[str]) -> torch.Tensor:
        """One gallery picture of the report from an image (C, H, W) in [0, 1], its kept output and
        its target: the image itself, captioned by ``review``; a task may draw what it predicted."""
        return pixels

    def move_targets(self, targets: Any, applied: Applied) -> Any:
        """Make a training batch's targets follow what the augmentation did to its images
        (``augment.Applied``: one warp matrix per sample, the erased pixels).

        Class labels (dense targets) do not move with the image and come back unchanged. Ragged
        targets with ``boxes`` (xyxy pixels) move through ``augment.warp_boxes`` in one call for
        the whole batch; a box left with less than ``min_visible_box`` of its area in the frame,
        or with less than that share of it left unerased, no longer shows its object and is dropped with
        every other field of its object. A segmentation task overrides this for its masks
        (``augment.warp_masks``).
        """
        if not (isinstance(targets, RaggedBatch) and "boxes" in targets.fields):
            return targets
        if applied.geometry is not None:
            boxes, keep = warp_boxes(targets.fields["boxes"], targets.image, applied.geometry,
                                     min_visible=self.min_visible_box)
            targets = targets.replace(boxes=boxes).keep(keep)
        if applied.erased is not None:
            hidden = hidden_share(targets.fields["boxes"], targets.image, applied.erased)
            targets = targets.keep(1 - hidden >= self.min_visible_box)
        return targets


def pooled(features: Any) -> torch.Tensor:
    """(N, D) float features from a layer's output: feature maps (N, C, H, W) averaged over space
    (a 1x1 map is just flattened), a dict or list of them (a feature pyramid) pooled level by level
    and concatenated."""
    if isinstance(features, dict):
        features = list(features.values())
    if isinstance(features, (list, tuple)):
        return torch.cat([pooled(level) for level in features], dim=1)
    if features.ndim == 4:
        return features.float().mean(dim=(2, 3))
    return features.float().flatten(1)
