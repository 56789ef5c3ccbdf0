"""Semantic segmentation: a class per pixel, with an ignore index.

Targets are (N, H, W) int64 class indices held densely (``data.targets.DenseTargets``), on the
device beside the images; pixels labelled ``ignore_index`` (255 by default, Pascal VOC's borders,
and what ``augment.warp_masks`` gives pixels that came from outside the image) count in neither
the loss nor the metrics.

Models return (N, K, h, w) logits, or a dict with ``out`` (and ``aux``, torchvision's auxiliary
classifier); logits smaller than the mask (a model that predicts at a stride) are upsampled
bilinearly to it, as torchvision's segmentation models do internally. The loss is cross-entropy
with the ignore index (label smoothing and per-pixel class weights inside it: masks stay hard
class indices), plus ``dice`` x a soft Dice loss when the policy sets it, plus 0.5 x the
auxiliary output's loss, the weight of torchvision's ``references/segmentation``. CutMix pastes a
rectangle of another image together with its mask; mixup is not offered (a blended pixel has no
one class). Metrics through torchmetrics: mIoU (monitored; the mean over the classes present in
truth or prediction), IoU per class, pixel accuracy and mean Dice (per-class F1 over pixels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassJaccardIndex

from ..augment.geometry import warp_masks
from ..augment.mixing import mix
from ..augment.policy import Applied
from ..data.formats import voc_palette
from ..data.targets import IGNORE_INDEX
from .base import Capabilities, LossSettings, Review, StepLoss, Task

GOOD_IOU = 0.5
"""An image counts as right for the paired tests when its IoU reaches this (PASCAL's overlap bar)."""
AUX_WEIGHT = 0.5
"""Weight of an auxiliary classifier's loss (torchvision's references/segmentation)."""


@dataclass
class Masks:
    """What ``Run.predict`` returns for segmentation: a class per pixel and its probability, at
    each image's own size."""

    labels: torch.Tensor | list[torch.Tensor]
    """(N, H, W) int64 class indices; when the images differ in size, a list of (H_i, W_i) ones."""
    scores: torch.Tensor | list[torch.Tensor]
    """(N, H, W) probability of the predicted class (a list when ``labels`` is one)."""
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def to_images(self) -> list[Image.Image]:
        """One palette PNG-ready image per mask, each at its image's size: pixel values are class
        indices, and the palette (Pascal VOC's colour map) shows them in colour in any image viewer."""
        palette = voc_palette()
        images = []
        for labels in self.labels:
            image = Image.fromarray(labels.to(torch.uint8).numpy(), mode="P")
            image.putpalette(palette)
            images.append(image)
        return images


def logits_of(outputs: Any, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """``{"out": (N, K, H, W)[, "aux": ...]}`` float logits at the mask ``size`` from a model's output:
    a tensor, or a dict with ``out`` (torchvision's segmentation models) and maybe ``aux``."""
    heads = dict(outputs) if isinstance(outputs, dict) else {"out": outputs}
    if "out" not in heads:
        raise KeyError(f"a segmentation model's dict output needs an 'out' entry; it has {sorted(heads)}")
    resized = {}
    for name, logits in heads.items():
        if logits is None:
            continue
        logits = logits.float()
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        resized[name] = logits
    return resized


class SegmentationTask(Task):
    name = "segmentation"
    monitor = "miou"
    unit = "images"
    capabilities = Capabilities(soft_labels=True, mixes=("cutmix",), per_sample_loss=True, pixel_balance=True,
                                dice=True)
    """Label smoothing (in the loss), CutMix, per-sample losses (the report's worst images, the
    augmentation distances' loss shift), class balance by pixel counts, and the Dice term."""

    probe_settings = LossSettings(dice=0.5)
    """The Dice term keeps a float32 softmax of every pixel for the backward (+22 % of the saved
    activations of SmallUNet at 21 classes): probes measure with it, as the run will likely train."""

    first_batch_candidate = 16
    """A mask-sized output per image keeps a CPU busy from small batches, as a detector's does."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def forward_train(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                      settings: LossSettings = LossSettings()) -> StepLoss:
        heads = logits_of(model(inputs), tuple(targets.shape[-2:]))
        losses = {name: F.cross_entropy(logits, targets, weight=settings.class_weights, ignore_index=self.ignore_index,
                                        label_smoothing=settings.label_smoothing)
                  for name, logits in heads.items()}
        terms = dict(losses)
        aux = [v for k, v in losses.items() if k != "out"]
        total = losses["out"] + AUX_WEIGHT * sum(aux) if aux else losses["out"]
        if settings.dice > 0:
            terms["dice_loss"] = dice_loss(heads["out"], targets, self.num_classes, self.ignore_index)
            total = total + settings.dice * terms["dice_loss"]
        if len(terms) == 1:
            return StepLoss(total)
        return StepLoss(total, {k: v.detach() for k, v in terms.items()})

    def mix_targets(self, pixels: torch.Tensor, targets: torch.Tensor, label_smoothing: float, mixup: float,
                    cutmix: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """CutMix pastes the same rectangle of the partner's image and mask; the masks stay hard
        class indices (label smoothing acts in the loss, ``LossSettings``), and mixup is refused
        before training (``capabilities.mixes``)."""
        own = torch.ones(len(pixels), device=pixels.device)  # mix's per-image weights: unused for masks
        pixels, _, masks = mix(pixels, own, 0.0, cutmix, generator, masks=targets)
        return pixels, masks

    def forward_eval(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """(N, K, H, W) logits at the input size (the auxiliary head, a training aid, is dropped)."""
        return logits_of(model(inputs), tuple(inputs.shape[-2:]))["out"]

    def per_sample_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(N,) mean cross-entropy over each image's labelled pixels (0 for an image with none)."""
        pixels = F.cross_entropy(outputs.float(), targets, ignore_index=self.ignore_index, reduction="none")
        labelled = (targets != self.ignore_index).flatten(1).sum(dim=1).clamp_min(1)
        return pixels.flatten(1).sum(dim=1) / labelled

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float().softmax(dim=1)

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.argmax(dim=1)

    def correct(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per image: its IoU (``image_iou``, the mean over the classes in its truth or prediction,
        background included) reaches ``GOOD_IOU``. Pixels of one image are not independent trials,
        so the paired tests count images; pixel accuracy would count an image right for its
        background alone, and the mean IoU at least weighs each class present equally."""
        return image_iou(outputs.argmax(dim=1), targets, self.num_classes, self.ignore_index) >= GOOD_IOU

    def update_metrics(self, metrics: MetricCollection, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        metrics.update(outputs.argmax(dim=1), targets)

    def metrics(self) -> MetricCollection:
        k, ignore = self.num_classes, self.ignore_index
        return MetricCollection({
            "miou": MulticlassJaccardIndex(k, ignore_index=ignore, average="macro"),
            "iou_per_class": MulticlassJaccardIndex(k, ignore_index=ignore, average="none"),
            "pixel_acc": MulticlassAccuracy(k, ignore_index=ignore, average="micro"),
            "dice": MulticlassF1Score(k, ignore_index=ignore, average="macro"),
        })

    def kept_outputs(self, outputs: torch.Tensor) -> torch.Tensor:
        """The predicted masks (uint8: classes stay under the ignore index 255): probabilities of
        every class at every pixel of a split would take K x 4 times the memory for no section."""
        return outputs.argmax(dim=1).to(torch.uint8)

    def review(self, scores: torch.Tensor, targets: torch.Tensor, losses: torch.Tensor, class_names: list[str],
               limit: int) -> Review:
        """The pixel confusion matrix (ignored pixels left out) and the images of lowest IoU first,
        captioned with it (the mean over the classes present in the image's truth or prediction)."""
        k = self.num_classes
        predicted = scores.long()
        labelled = targets != self.ignore_index
        confusion = torch.bincount((targets[labelled] * k + predicted[labelled]), minlength=k * k).reshape(k, k)
        ious = image_iou(predicted, targets, k, self.ignore_index)
        order = ious.argsort()[:limit]
        return Review(confusion.numpy(), [(int(i), f"IoU {float(ious[i]):.2f}") for i in order])

    def draw_mistake(self, pixels: torch.Tensor, kept: torch.Tensor, target: torch.Tensor,
                     class_names: list[str]) -> torch.Tensor:
        """The image, its true mask and its predicted mask side by side, in VOC's colours over the image."""
        image = pixels.expand(3, -1, -1) if pixels.shape[0] == 1 else pixels[:3]
        return torch.cat([image, self.overlay(image, target), self.overlay(image, kept.long())], dim=2)

    @staticmethod
    def overlay(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(3, H, W) in [0, 1]: the mask's colours over the image, half and half (class 0 and the
        ignore index left clear)."""
        palette = torch.tensor(voc_palette(), dtype=torch.float32).view(-1, 3) / 255
        colours = palette[mask.clamp(0, 255)].permute(2, 0, 1)
        shown = ((mask > 0) & (mask != IGNORE_INDEX)).unsqueeze(0)
        return torch.where(shown, 0.5 * image + 0.5 * colours, image)

    def move_targets(self, targets: Any, applied: Applied) -> Any:
        """Masks follow the warp by nearest neighbour (pixels from outside become ignored); erasing
        hides pixels but leaves their class, the object still being there."""
        if applied.geometry is None:
            return targets
        return warp_masks(targets, applied.geometry, ignore_index=self.ignore_index)



def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """1 - the soft Dice score of the batch, averaged over the classes in its truth.

    Per class c, over the labelled pixels: 2 sum(p_c y_c) / (sum p_c + sum y_c), with p the softmax
    and y the one-hot truth. The truth's one-hot is never built (K times the mask's memory): the
    overlap is the probability of each pixel's true class summed per class, and sum y_c a bincount.
    Classes absent from the batch's truth are left out: their score would reward predicting them
    nowhere, which cross-entropy already teaches.
    """
    probs = logits.float().softmax(dim=1)
    labelled = (targets != ignore_index).float()
    classes = torch.where(targets != ignore_index, targets, torch.zeros_like(targets))
    own = probs.gather(1, classes.unsqueeze(1)).squeeze(1)
    # Sums per class by index_add over every pixel, ignored ones adding 0: masking by indexing
    # would wait on the device for the count of labelled pixels.
    zeros = torch.zeros(num_classes, device=logits.device)
    overlap = zeros.index_add(0, classes.flatten(), (own * labelled).flatten())
    truth = zeros.index_add(0, classes.flatten(), labelled.flatten())
    predicted = (probs * labelled.unsqueeze(1)).sum(dim=(0, 2, 3))
    present = (truth > 0).float()  # a batch with no labelled pixel: loss 0
    score = 2 * overlap / (predicted + truth).clamp_min(1e-6)
    return ((1 - score) * present).sum() / present.sum().clamp_min(1)


def image_iou(predicted: torch.Tensor, targets: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """(N,) per image: the mean IoU over the classes present in its truth or prediction (1 when it
    has no labelled pixel), ignored pixels left out; one bincount per quantity for the whole batch."""
    n, k = len(targets), num_classes
    keep = targets != ignore_index
    image = torch.arange(n, device=targets.device).view(-1, 1, 1).expand_as(targets)[keep]
    p, t = predicted.long()[keep], targets.long()[keep]

    def per_image(classes: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
        index = image * k + classes
        return torch.bincount(index if where is None else index[where], minlength=n * k).view(n, k).float()

    inter = per_image(t, p == t)
    union = per_image(p) + per_image(t) - inter
    present = union > 0
    mean = (inter / union.clamp_min(1)).sum(dim=1) / present.sum(dim=1).clamp_min(1)
    return torch.where(present.any(dim=1), mean, torch.ones_like(mean)).cpu()
