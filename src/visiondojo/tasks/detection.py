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
from torchvision.ops import box_iou
from torchvision.utils import draw_bounding_boxes

from ..data.targets import RaggedBatch, RaggedTargets
from ..errors import ModelError
from ..models.detectors import BACKGROUND
from .base import Capabilities, LossSettings, StepLoss, Task, pooled

GALLERY_SCORE = 0.5
"""Detections shown in the report's gallery and counted as false there: the confident ones."""
MATCH_IOU = 0.5
"""A true object is found by a detection of its class overlapping it this much (``correct``)."""
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

    def to_coco(self, image_ids: list[Any] | None = None) -> list[dict[str, Any]]:
        """COCO results form: one ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` per
        detection; ``image_ids`` default to 0..N-1, categories are the class indices (0..K-1)."""
        ids = list(range(len(self.boxes))) if image_ids is None else list(image_ids)
        results = []
        for image_id, boxes, scores, labels in zip(ids, self.boxes, self.scores, self.labels):
            for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
                results.append({"image_id": image_id, "category_id": int(label),
                                "category": self.class_names[int(label)],
                                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                                "score": round(score, 5)})
        return results


COCO_ROWS = (("map", "Average Precision", "0.50:0.95", "all"), ("map_50", "Average Precision", "0.50", "all"),
             ("map_75", "Average Precision", "0.75", "all"), ("map_small", "Average Precision", "0.50:0.95", "small"),
             ("map_medium", "Average Precision", "0.50:0.95", "medium"),
             ("map_large", "Average Precision", "0.50:0.95", "large"), ("mar_1", "Average Recall", "0.50:0.95", "all"),
             ("mar_10", "Average Recall", "0.50:0.95", "all"), ("mar_100", "Average Recall", "0.50:0.95", "all"),
             ("mar_small", "Average Recall", "0.50:0.95", "small"),
             ("mar_medium", "Average Recall", "0.50:0.95", "medium"),
             ("mar_large", "Average Recall", "0.50:0.95", "large"))


def coco_table(metrics: dict[str, Any]) -> str:
    """The twelve lines of COCO's summary, as pycocotools prints them (-1: no such objects)."""
    lines = []
    for key, kind, iou, area in COCO_ROWS:
        if key in metrics:
            dets = key.rpartition("_")[2] if key.startswith("mar_") and key[4:].isdigit() else "100"
            short = "(AP)" if kind.endswith("Precision") else "(AR)"
            lines.append(f" {kind:<18} {short} @[ IoU={iou:<9} | area={area:>6} | maxDets={dets:>3} ] = "
                         f"{float(metrics[key]):.3f}")
    return "\n".join(lines)


class DetectionTask(Task):
    name = "detection"
    monitor = "map"
    capabilities = Capabilities(box_mixing=True)
    """Mosaic and box mixup; no soft labels, mixup/CutMix, classifier head, per-sample loss or class
    balance: the classification tools do not apply."""
    min_visible_box = MIN_VISIBLE_BOX
    first_batch_candidate = 8

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def forward_train(self, model: nn.Module, inputs: torch.Tensor, targets: RaggedBatch,
                      settings: LossSettings = LossSettings()) -> StepLoss:
        per_image = [{"boxes": t["boxes"], "labels": t["labels"] + BACKGROUND} for t in targets.per_image()]
        losses = model(list(inputs), per_image)
        return StepLoss(sum(losses.values()), {k: v.detach() for k, v in losses.items()})

    def forward_eval(self, model: nn.Module, inputs: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Detections with labels back in 0..K-1. Detectors that score classes with sigmoids (FCOS,
        RetinaNet) have an output for the background class too; boxes it wins are dropped."""
        out = []
        for found in model(list(inputs)):
            real = found["labels"] >= BACKGROUND
            out.append({"boxes": found["boxes"][real], "scores": found["scores"][real],
                        "labels": found["labels"][real] - BACKGROUND})
        return out

    def update_metrics(self, metrics: MetricCollection, outputs: list[dict[str, torch.Tensor]],
                       targets: RaggedBatch) -> None:
        metrics.update(outputs, targets.per_image())

    def metrics(self) -> MetricCollection:
        return MetricCollection({"map": MeanAveragePrecision(box_format="xyxy", iou_type="bbox",
                                                              backend="faster_coco_eval", class_metrics=True,
                                                              extended_summary=True)})

    def finish_metrics(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-class AP and AR as one entry per class 0..K-1 (-1 for a class with no object and no
        detection, COCO's "absent"); torchmetrics lists only the classes it saw, in ``classes``."""
        values = dict(values)
        seen = values.pop("classes", None)
        precision = values.pop("precision", None)
        for name in ("ious", "recall", "scores"):  # the extended summary's raw arrays: not reported
            values.pop(name, None)
        if seen is None:
            return values
        present = seen.reshape(-1).long().cpu()
        inside = (present >= 0) & (present < self.num_classes)
        for name in ("map_per_class", "mar_100_per_class"):
            if name in values:
                aligned = torch.full((self.num_classes,), -1.0)
                aligned[present[inside]] = values[name].reshape(-1).float().cpu()[inside]
                values[name] = aligned
        if precision is not None and precision.ndim == 5:
            # COCO's precision at 101 recall points, IoU 0.5, all areas, 100 detections: the PR curve.
            curves = torch.full((self.num_classes, precision.shape[1]), -1.0)
            curves[present[inside]] = precision[0, :, :, 0, -1].T.float().cpu()[inside]
            values["pr_50_per_class"] = curves
        return values

    unit = "objects"
    min_proxy_right = 0.1
    """A detection proxy must find a tenth of the validation objects: proxies of SmallFCOS on 490
    fashion-scenes images x 4 epochs scored mAP 0.014 and their paired tests split the objects
    they differed on about evenly, whatever the policy."""

    def correct(self, outputs: list[dict[str, torch.Tensor]], targets: RaggedBatch) -> torch.Tensor:
        """Per true object of the batch, in data order: found by one of its image's top-k detections
        (k: the image's true objects) of its class at IoU ``MATCH_IOU``, each detection matching at
        most one object, the highest-scoring first (see the module's docstring)."""
        found = [found_objects(d, t) for d, t in zip(outputs, targets.per_image())]
        return torch.cat(found) if found else torch.zeros(0, dtype=torch.bool)

    def units_per_sample(self, targets: RaggedTargets) -> float:
        return float(targets.counts.float().mean()) if len(targets) else 0.0

    def feature_source(self, model: nn.Module) -> str | None:
        backbone = getattr(model, "backbone", None)
        return "the backbone's feature maps, averaged over space" if isinstance(backbone, nn.Module) else None

    def features(self, model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, None]:
        """The backbone's output (torchvision's detectors: a dict of feature-pyramid levels), each
        level averaged over space, concatenated: what the detector's heads see, without their
        post-processing. The inputs are the training size the detector's own resize keeps."""
        backbone = getattr(model, "backbone", None)
        if not isinstance(backbone, nn.Module):
            raise ModelError(f"augmentation distances read a detector's backbone features, and "
                             f"{type(model).__name__} has no `backbone` module; pin regularization.augment to skip "
                             "the policy search")
        return pooled(backbone(inputs)), None

    def box_errors(self, outputs: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]],
                   limit: int) -> list[tuple[int, str]]:
        """(image index, caption) of the ``limit`` images with the most missed and false boxes, worst
        first: a true box is missed when no detection of its class (score ``GALLERY_SCORE`` and up)
        overlaps it at IoU 0.5; such a detection overlapping no true box of its class is false."""
        ranked = []
        for i, (found, truth) in enumerate(zip(outputs, targets)):
            confident = found["scores"] >= GALLERY_SCORE
            boxes, labels = found["boxes"][confident].float().cpu(), found["labels"][confident].cpu()
            match = ((box_iou(truth["boxes"].float(), boxes) >= 0.5)
                     & (truth["labels"][:, None] == labels[None, :]))
            missed, false = int((~match.any(dim=1)).sum()), int((~match.any(dim=0)).sum())
            ranked.append((missed + false, i, f"{missed} missed, {false} false"))
        ranked.sort(key=lambda r: (-r[0], r[1]))
        return [(i, caption) for _, i, caption in ranked[:limit]]

    def draw(self, pixels: torch.Tensor, found: dict[str, torch.Tensor], truth: dict[str, torch.Tensor],
             class_names: list[str]) -> torch.Tensor:
        """One image (C, H, W) in [0, 1] as RGB with its true boxes (green) and confident detections (red)."""
        image = (pixels.clamp(0, 1) * 255).to(torch.uint8).cpu()
        image = image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
        if len(truth["boxes"]):
            image = draw_bounding_boxes(image, truth["boxes"].float().cpu(), colors="lime", width=1)
        confident = found["scores"] >= GALLERY_SCORE
        if bool(confident.any()):
            names = [class_names[int(k)] for k in found["labels"][confident]]
            image = draw_bounding_boxes(image, found["boxes"][confident].float().cpu(), labels=names, colors="red",
                                        width=1)
        return image.float() / 255

    def predictions(self, outputs: list[Any], class_names: list[str]) -> Detections:
        found = [d for chunk in outputs for d in chunk]
        return Detections([d["boxes"].float().cpu() for d in found], [d["scores"].float().cpu() for d in found],
                          [d["labels"].cpu() for d in found], class_names)


def found_objects(found: dict[str, torch.Tensor], truth: dict[str, torch.Tensor]) -> torch.Tensor:
    """(M,) bool for an image's M true objects: which its top-M detections find (``DetectionTask.correct``)."""
    count = len(truth["boxes"])
    matched = torch.zeros(count, dtype=torch.bool)
    if count == 0 or len(found["boxes"]) == 0:
        return matched
    top = found["scores"].argsort(descending=True)[:count]
    iou = box_iou(found["boxes"][top].float(), truth["boxes"].float().to(found["boxes"].device)).cpu()
    iou[found["labels"][top].cpu()[:, None] != truth["labels"].cpu()[None, :]] = 0.0
    for row in iou:  # highest score first; each detection takes its best still-unmatched object
        row = row.masked_fill(matched, 0.0)
        best = int(row.argmax())
        if row[best] >= MATCH_IOU:
            matched[best] = True
    return matched
