"""The loop's regularization plug-in: raw batch -> augmented model inputs and (soft) targets.

Per training batch, on the device: pixels to [0, 1] units, the augmentation policy (geometry
moves the task's targets with the images), mosaic and box mixup (detection: images built from
several, with their boxes), soft targets with label smoothing, mixup/CutMix, then
standardization. With nothing to do it is the plain fused normalization, so a run without
regularization computes exactly what it did before.

Randomness comes from its own generator on the training device, reseeded from (seed, epoch) at
the start of every epoch: a resumed run replays its augmentations, and the model's own random
stream (dropout) is untouched by how many draws a policy makes.
"""

from __future__ import annotations

from typing import Any

import torch

from ..augment import Augmenter, check_ops, mix_boxes
from ..data.batches import Normalizer
from ..data.sources import Source, class_labels
from ..errors import ConfigError
from ..plan import RegularizationParams
from ..tasks import LossSettings, Task
from .class_balance import MODES, check_beta, effective_number_weights, sample_weights
from .dropout import check_rate

_SEED_OFFSET = 7_777_777
BOX_MIXING = ("mosaic", "box_mixup")
"""Detection ops that build an image from several (probabilities per sample): ``box_mixing`` tasks only."""


class BatchRegularizer:
    def __init__(self, params: RegularizationParams, task: Task, normalizer: Normalizer, device: torch.device,
                 seed: int = 0):
        check(params)
        check_supported(params, task)
        self.params = params
        self.task = task
        self.normalizer = normalizer
        self.augmenter = Augmenter(params.augment)
        self.soft = params.label_smoothing > 0 or params.mixup > 0 or params.cutmix > 0
        self.box_mixing = params.mosaic > 0 or params.box_mixup > 0
        self.generator = torch.Generator(device=device)
        self.seed = seed
        self.set_epoch(0)

    @property
    def active(self) -> bool:
        return bool(self.augmenter) or self.soft or self.box_mixing

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed * 100_003 + epoch + _SEED_OFFSET)

    def __call__(self, images: torch.Tensor, targets: Any) -> tuple[torch.Tensor, Any]:
        if not self.active:
            return self.normalizer(images), targets
        pixels, targets = self.regularize(self.normalizer.unit(images), targets)
        return self.normalizer.standardize(pixels), targets

    def regularize(self, pixels: torch.Tensor, targets: Any) -> tuple[torch.Tensor, Any]:
        """Pixels in [0, 1] units -> augmented and mixed pixels, and the targets to match.
        (The report shows its output: what the model saw.)"""
        if self.augmenter:
            pixels, applied = self.augmenter(pixels, self.generator)
            targets = self.task.move_targets(targets, applied)
        if self.box_mixing:
            pixels, targets = mix_boxes(pixels, targets, self.params.mosaic, self.params.box_mixup, self.generator,
                                        min_visible=self.task.min_visible_box)
        if self.soft:
            p = self.params
            pixels, targets = self.task.mix_targets(pixels, targets, p.label_smoothing, p.mixup, p.cutmix,
                                                    self.generator)
        return pixels, targets


def check_supported(params: RegularizationParams, task: Task, where: str = "regularization") -> None:
    """Refuse soft labels or mixing on a task that cannot blend its targets (``Task.capabilities``)."""
    if params.label_smoothing > 0 and not task.capabilities.soft_labels:
        raise ConfigError(f"{where}.label_smoothing: the {task.name} task has no soft labels to smooth; set it to 0")
    for name in ("mixup", "cutmix"):
        if getattr(params, name) > 0 and name not in task.capabilities.mixes:
            raise ConfigError(f"{where}.{name}: the {task.name} task's targets cannot follow {name} (they follow "
                              f"{', '.join(task.capabilities.mixes) or 'no mixing'}); set it to 0")
    if params.dice > 0 and not task.capabilities.dice:
        raise ConfigError(f"{where}.dice: the {task.name} task has no per-pixel classes for a Dice loss; set it to 0")
    if params.class_balance == "resample" and not task.capabilities.class_balance:
        raise ConfigError(f"{where}.class_balance: the {task.name} task has no single class per image to draw "
                          "balanced batches by; use none")
    for name in BOX_MIXING:
        if getattr(params, name) > 0 and not task.capabilities.box_mixing:
            raise ConfigError(f"{where}.{name}: the {task.name} task has no boxes to carry into a mosaic or a "
                              "blend of images (detection only); set it to 0")


def check(params: RegularizationParams, task: Task | None = None) -> None:
    """Clear errors for unknown ops, values outside their ranges and (given the ``task``) what the
    task cannot do; run before anything is written."""
    where = "regularization"
    if task is not None:
        check_supported(params, task, where)
    check_ops(params.augment, f"{where}.augment")
    if not 0.0 <= params.label_smoothing < 1.0:
        raise ConfigError(f"{where}.label_smoothing: {params.label_smoothing} is outside [0, 1); 0.1 is common")
    for name in ("mixup", "cutmix", "dice", *BOX_MIXING):
        value = getattr(params, name)
        if not 0.0 <= value <= 1.0:
            kind = "probability" if name in BOX_MIXING else "weight" if name == "dice" else "magnitude"
            raise ConfigError(f"{where}.{name}: {kind} {value} is outside [0, 1] (0 turns it off)")
    if params.weight_decay < 0:
        raise ConfigError(f"{where}.weight_decay: {params.weight_decay} is negative")
    check_rate(params.dropout, "dropout")
    check_rate(params.stochastic_depth, "stochastic_depth")
    if params.class_balance == "reweight":
        check_beta(params.class_balance_beta)
    if params.class_balance not in MODES:
        raise ConfigError(f"{where}.class_balance: {params.class_balance!r} is not one of {', '.join(MODES)}")


def loss_settings(params: RegularizationParams, class_counts: list[int], device: torch.device) -> LossSettings:
    """What the training loss takes from the policy: loss weights per class for ``class_balance:
    reweight`` (None otherwise), label smoothing and the Dice weight."""
    weights = None
    if params.class_balance == "reweight":
        weights = effective_number_weights(class_counts, params.class_balance_beta).to(device)
    return LossSettings(weights, params.label_smoothing, params.dice)


def balanced_sampling(params: RegularizationParams, source: Source, class_counts: list[int]) -> torch.Tensor | None:
    """Per-sample drawing weights of ``source`` for ``class_balance: resample``, else None."""
    if params.class_balance != "resample":
        return None
    return sample_weights(class_labels(source), class_counts)
