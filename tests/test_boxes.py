"""Boxes through the core: a toy box task trains in the real loop with geometric augmentation
(every box still encloses its object in what the model sees), and a torchvision detector takes a
training step and an evaluation through the real step and evaluation functions."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchmetrics import MeanMetric, MetricCollection

from visiondojo.data.batches import Normalizer, make_batches
from visiondojo.data.sources import InMemory
from visiondojo.data.targets import RaggedBatch, RaggedTargets
from visiondojo.engine.evaluate import evaluate
from visiondojo.engine.loop import run_training
from visiondojo.engine.runtime import Runtime
from visiondojo.engine.step import train_step
from visiondojo.plan import AugmentOp, DataParams, OptimizationParams, Plan, RegularizationParams, RuntimeParams
from visiondojo.tasks import Capabilities, DetectionTask, LossSettings, StepLoss, Task

SIZE = 32


def box_scenes(n: int, seed: int = 0, size: int = SIZE, channels: int = 1) -> tuple[torch.Tensor, RaggedTargets]:
    """Black images with one or two filled white rectangles; each rectangle's box is its pixel edges
    (xyxy), its label 0 for wide rectangles and 1 for tall ones. Images in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, channels, size, size)
    samples = []
    for i in range(n):
        boxes, labels = [], []
        for _ in range(1 + int(torch.randint(0, 2, (1,), generator=g))):
            w, h = (int(v) for v in torch.randint(4, 11, (2,), generator=g))
            x0 = int(torch.randint(4, size - w - 4, (1,), generator=g))
            y0 = int(torch.randint(4, size - h - 4, (1,), generator=g))
            images[i, :, y0:y0 + h, x0:x0 + w] = 1.0
            boxes.append([x0, y0, x0 + w, y0 + h])
            labels.append(int(h > w))
        samples.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return images, RaggedTargets.from_samples(samples)


def box_plan(task: str, channels: int = 1, size: int = SIZE, **optimization: Any) -> Plan:
    """A plan for raw [0, 1] pixels fed to the model unchanged (mean 0, std 1)."""
    data = DataParams(task=task, num_classes=2, channels=channels, height=size, width=size, mean=[0.0] * channels,
                      std=[1.0] * channels, pixel_scale=1.0, pixel_offset=0.0, class_names=["wide", "tall"],
                      class_counts=[1, 1], train_size=64)
    opt = OptimizationParams(optimizer="adamw", lr=3e-3, batch_size=16, epochs=2, warmup_epochs=0.0,
                             early_stopping_patience=None, **optimization)
    return Plan(data=data, optimization=opt, runtime=RuntimeParams(), monitor="iou")


def first_box_iou(predicted: torch.Tensor, targets: RaggedBatch) -> torch.Tensor:
    """IoU of each image's predicted box with its first true box, over images that have one."""
    ious = []
    for box, objects in zip(predicted, targets.per_image()):
        if len(objects["boxes"]):
            ious.append(torchvision.ops.box_iou(box[None], objects["boxes"][:1])[0, 0])
    return torch.stack(ious) if ious else torch.zeros(0)


class FirstBoxTask(Task):
    """A toy box task: regress each image's first box. It declares no classification capability
    and records every training batch as the model received it."""

    name = "first-box"
    monitor = "iou"
    capabilities = Capabilities()

    def __init__(self) -> None:
        self.seen: list[tuple[torch.Tensor, RaggedBatch]] = []

    def forward_train(self, model: nn.Module, inputs: torch.Tensor, targets: RaggedBatch,
                      settings: LossSettings = LossSettings()) -> StepLoss:
        self.seen.append((inputs.detach().clone(), targets))
        predicted = model(inputs) * SIZE
        first = [(i, objects["boxes"][0]) for i, objects in enumerate(targets.per_image()) if len(objects["boxes"])]
        if not first:
            return StepLoss(predicted.sum() * 0)
        rows, boxes = zip(*first)
        loss = F.smooth_l1_loss(predicted[list(rows)], torch.stack(boxes))
        return StepLoss(loss, {"box": loss.detach()})

    def forward_eval(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        return model(inputs) * SIZE

    def update_metrics(self, metrics: MetricCollection, outputs: torch.Tensor, targets: RaggedBatch) -> None:
        ious = first_box_iou(outputs, targets)
        if len(ious):
            metrics["iou"].update(ious)

    def metrics(self) -> MetricCollection:
        return MetricCollection({"iou": MeanMetric()})

    def loss(self, outputs, targets, class_weights=None):  # pragma: no cover - forward_train replaces it
        raise NotImplementedError

    def per_sample_loss(self, outputs, targets):  # pragma: no cover - no per-sample loss (capabilities)
        raise NotImplementedError

    def scores(self, outputs):  # pragma: no cover
        raise NotImplementedError

    def correct(self, scores, targets):  # pragma: no cover
        raise NotImplementedError

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs


def box_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 4), nn.Sigmoid())


def test_boxes_move_with_their_images_in_the_training_loop(tmp_path) -> None:
    images, targets = box_scenes(64)
    train = InMemory(images[:48], targets.subset(torch.arange(48)), ["wide", "tall"], "scenes")
    val = InMemory(images[48:], targets.subset(torch.arange(48, 64)), ["wide", "tall"], "scenes")
    plan = box_plan("first-box")
    plan.regularization = RegularizationParams(
        augment=[AugmentOp("hflip", 1.0, p=0.5), AugmentOp("rotate", 0.5), AugmentOp("translate", 0.3)],
        weight_decay=0.0)
    task, runtime = FirstBoxTask(), Runtime(RuntimeParams())
    normalizer = Normalizer(plan.data, runtime.device)
    result = run_training(box_net(), task, plan, make_batches(train, 16, runtime.device, train=True, seed=1),
                          make_batches(val, 32, runtime.device, train=False), runtime, normalizer, tmp_path)
    assert len(task.seen) == 2 * 3 and [row["epoch"] for row in result.history] == [1, 2]
    assert 0.0 <= result.history[-1]["val_iou"] <= 1.0 and "val_loss" not in result.history[-1]

    original = {tuple(b) for b in targets.fields["boxes"].tolist()}
    moved = 0
    for inputs, batch in task.seen:
        pixels = inputs[:, 0]
        ys, xs = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
        for image, objects in zip(pixels, batch.per_image()):
            covered = torch.zeros(SIZE, SIZE, dtype=torch.bool)
            for x1, y1, x2, y2 in objects["boxes"].tolist():
                # Pixels that touch the box (bilinear resampling spreads an edge over the pixel it cuts).
                covered |= (xs + 0.5 > x1) & (xs - 0.5 < x2) & (ys + 0.5 > y1) & (ys - 0.5 < y2)
                inside = (xs >= x1) & (xs <= x2) & (ys >= y1) & (ys <= y2)
                # Tight: a rectangle turned by up to 45 degrees fills at least half of its enclosing box.
                assert float(image[inside].sum()) >= 0.45 * (x2 - x1) * (y2 - y1) - 2
            # Enclosing: every bright pixel lies in a box of the image.
            assert float(image[~covered].sum()) <= 0.02 * float(image.sum()) + 0.5
        moved += sum(tuple(b) not in original for b in batch.fields["boxes"].tolist())
    assert moved > 0.5 * sum(len(batch.fields["boxes"]) for _, batch in task.seen)


def test_a_torchvision_detector_trains_and_evaluates_through_the_step_and_evaluation_functions() -> None:
    images, targets = box_scenes(4, seed=2, size=64, channels=3)
    source = InMemory(images, targets, ["wide", "tall"], "scenes")
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=64, max_size=64)
    task, runtime = DetectionTask(2), Runtime(RuntimeParams())
    plan = box_plan("detection", channels=3, size=64)
    normalizer = Normalizer(plan.data, runtime.device)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    model.train()
    ((raw, batch),) = list(make_batches(source, 4, runtime.device, train=False))
    step = train_step(model, task, optimizer, runtime, normalizer(raw), batch, grad_clip_norm=10.0)
    assert torch.isfinite(step.loss) and float(step.loss) > 0
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} == set(step.terms)
    assert float(sum(step.terms.values())) == pytest.approx(float(step.loss), rel=1e-5)
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after))

    evaluation = evaluate(model, task, make_batches(source, 2, runtime.device, train=False), normalizer, runtime)
    assert {"map", "map_50", "map_75", "mar_100"} <= set(evaluation.metrics) and "loss" not in evaluation.metrics
    assert -1.0 <= evaluation.metrics["map"] <= 1.0
    assert model.training  # evaluate restores the mode it found
    collected = evaluate(model, task, make_batches(source, 2, runtime.device, train=False), normalizer, runtime,
                         collect=True)  # a detector has no per-sample scores to collect: metrics alone
    assert collected.scores is None and collected.metrics == evaluation.metrics


def test_the_detection_metrics_agree_with_the_reference_coco_evaluator() -> None:
    """faster-coco-eval (what the task uses) against pycocotools on the same fixed predictions."""
    from torchmetrics.detection import MeanAveragePrecision

    g = torch.Generator().manual_seed(5)
    targets, predictions = [], []
    for _ in range(12):
        m = int(torch.randint(0, 5, (1,), generator=g))
        xy = torch.rand(m, 2, generator=g) * 80
        boxes = torch.cat([xy, xy + 4 + torch.rand(m, 2, generator=g) * 40], dim=1)
        labels = torch.randint(0, 3, (m,), generator=g)
        targets.append({"boxes": boxes, "labels": labels})
        found = boxes + torch.randn(m, 4, generator=g) * 3  # near misses and hits
        extra = torch.cat([xy + 10, xy + 30], dim=1)[: m // 2]  # false positives
        predictions.append({"boxes": torch.cat([found, extra]), "scores": torch.rand(m + len(extra), generator=g),
                            "labels": torch.cat([labels, torch.randint(0, 3, (len(extra),), generator=g)])})
    ours = DetectionTask(3).metrics()
    ours.update(predictions, targets)
    reference = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools", class_metrics=True)
    reference.update(predictions, targets)
    mine, theirs = ours.compute(), reference.compute()
    assert 0.05 < float(theirs["map"]) < 0.95  # a non-trivial case
    for key in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100",
                "map_per_class"):
        torch.testing.assert_close(mine[key].float(), theirs[key].float(), atol=1e-4, rtol=0)
