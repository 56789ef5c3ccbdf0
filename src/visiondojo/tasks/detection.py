"""Object detection with models that speak torchvision's detection protocol.

In training such a model takes ``(list of images, list of {"boxes", "labels"})`` and returns a
dict of losses; in eval it takes the images alone and returns one ``{"boxes", "scores",
"labels"}`` per image. visiondojo's labels are 0..K-1; torchvision's detectors keep 0 for the
background, so the task shifts labels by one on the way in and back on the way out, and a
detector for K classes is built with ``num_classes=K + 1``.

Targets are ragged (``data.targets.RaggedTargets``): boxes xyxy in pixels and labels per image,
images without objects allowed. The loss is the sum of the model's loss dict, each term logged.
Metrics are COCO's, by the reference evaluation (torchmetrics ``MeanAveragePrecision`` with the
``faster_coco_eval`` backend, several times faster than pycocotools and in agreement with it, as
the tests check): mAP@[.5:.95] (monitored), mAP@.5, mAP@.75, by object size, AR@1/10/100 and per
class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.detection import MeanAveragePrecision

from ..data.targets import RaggedBatch
from .base import Capabilities, StepLoss, Task

BACKGROUND = 1
"""Label offset: torchvision's detectors reserve class 0 for the background."""
MIN_VISIBLE_BOX = 0.25
"""An augmented box keeping under a quarter of its area in the frame is dropped: what is left is a
sliver at the border that no longer shows the object, and training the detector to find it there
teaches it to fire on fragments."""


@dataclass
class Detections:
    """What ``Run.predict`` returns for detection: per image, boxes (xyxy pixels), scores, labels."""

    boxes: list[torch.Tensor]
    scores: list[torch.Tensor]
    labels: list[torch.Tensor]
    class_names: list[str]

    def names(self) -> list[list[str]]:
        return [[self.class_names[int(k)] for k in labels] for labels in self.labels]


class DetectionTask(Task):
    name = "detection"
    monitor = "map"
    capabilities = Capabilities()
    """No soft labels, mixing, classifier head or per-sample loss: the classification tools do not apply."""
    min_visible_box = MIN_VISIBLE_BOX

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def forward_train(self, model: nn.Module, inputs: torch.Tensor, targets: RaggedBatch,
                      class_weights: torch.Tensor | None = None) -> StepLoss:
        per_image = [{"boxes": t["boxes"], "labels": t["labels"] + BACKGROUND} for t in targets.per_image()]
        losses = model(list(inputs), per_image)
        return StepLoss(sum(losses.values()), {k: v.detach() for k, v in losses.items()})

    def forward_eval(self, model: nn.Module, inputs: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return [{**found, "labels": found["labels"] - BACKGROUND} for found in model(list(inputs))]

    def update_metrics(self, metrics: MetricCollection, outputs: list[dict[str, torch.Tensor]],
                       targets: RaggedBatch) -> None:
        metrics.update(outputs, targets.per_image())

    def metrics(self) -> MetricCollection:
        return MetricCollection({"map": MeanAveragePrecision(box_format="xyxy", iou_type="bbox",
                                                              backend="faster_coco_eval", class_metrics=True)})

    def predictions(self, outputs: list[Any], class_names: list[str]) -> Detections:
        found = [d for chunk in outputs for d in chunk]
        return Detections([d["boxes"].float().cpu() for d in found], [d["scores"].float().cpu() for d in found],
                          [d["labels"].cpu() for d in found], class_names)
