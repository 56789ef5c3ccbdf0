"""Representation pretraining on images without labels: SimCLR or Barlow Twins, in place.

Each batch becomes two random views of every image (``view_ops``); the model's features for both
(the input of its feature layer, ``ssl.backbone``) go through a small projection head, and the
loss makes the two views of an image agree: NT-Xent against the rest of the batch (SimCLR,
Chen et al. 2020) or a cross-correlation matrix pulled to the identity (Barlow Twins, Zbontar
et al. 2021). Both views go through the model as ONE batch of 2B images: one forward and one
backward instead of two, and BatchNorm normalizes the two views with shared statistics, which is
what SimCLR's global BatchNorm does too (statistics over all views on all devices).

The projection head is discarded afterwards: representations *before* the projector transfer
better than after it (Chen et al. 2020, sec. 4.2), and the model must come back with exactly the
user's architecture and state_dict keys. Parameters the loss never reaches (the classifier head
and anything past the feature layer) keep their values: AdamW skips parameters without a gradient,
weight decay included.

Optimization: AdamW at ``ssl.pretrain_lr`` over model and projector, linear warmup then cosine
to 0 (``optimize.schedules.WarmupCosine``), ``WEIGHT_DECAY`` on weights only (the same
``param_groups`` rule as supervised training: never on norms or biases).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import torch
from torch import nn

from ..augment import RGB_ONLY, Augmenter
from ..data.batches import Normalizer, make_batches
from ..data.sources import Source
from ..engine.epoch import TrainingDiverged
from ..engine.progress import TrainingProgress
from ..engine.runtime import Runtime
from ..errors import ConfigError
from ..optimize.optimizers import param_groups
from ..optimize.schedules import MAX_WARMUP_SHARE, WarmupCosine
from ..plan import AugmentOp, SSLParams
from .backbone import FeatureTap, feature_dim, find_feature_layer
from .losses import barlow_twins, nt_xent

VIEW_OPS: tuple[AugmentOp, ...] = (
    AugmentOp("zoom", 1.0),
    AugmentOp("translate", 0.5),
    AugmentOp("hflip", 1.0),
    AugmentOp("brightness", 1.0, p=0.8),
    AugmentOp("contrast", 1.0, p=0.8),
    AugmentOp("saturation", 1.0, p=0.8),
    AugmentOp("hue", 0.8, p=0.8),
    AugmentOp("blur", 0.2, p=0.5),
    AugmentOp("noise", 0.5, p=0.5),
)
"""The two-view policy (RGB; ``view_ops`` drops the color-only ops for other images), in the
spirit of SimCLR's, whose ablations (Chen et al. 2020, sec. 3) show that crops plus strong color
distortion matter most: crops alone let the views match by their color histogram.

* zoom 1.0 + translate 0.5: scale 0.6-1.4, shift up to +-15 % of the side, one fused warp. The
  strongest zoom the ops have; SimCLR's random resized crops (8-100 % of the area) go further,
  but on the small images this library also sees, a harder crop leaves the views little in common.
* hflip 1.0: mirrored with probability 0.5, as in SimCLR.
* brightness, contrast, saturation 1.0 with p 0.8: factors 0.5-1.5 (SimCLR's jitter strength 1 is
  0.2-1.8, also with p 0.8; ours is the ops' full range). hue 0.8: up to +-0.2 turn, SimCLR's.
* blur 0.2 with p 0.5: sigma up to 1 % of the side, SimCLR's 0.1-2 px on 224-px images.
* noise 0.5 with p 0.5: std up to 0.05 in [0, 1] units. Not SimCLR's; on small images blur moves
  less than a pixel, and noise stops the views from matching on exact pixel values.

No erasing: on top of the crops it would too often hide what the two views share.
"""

WEIGHT_DECAY = 1e-4
"""Decoupled decay rate (AdamW's) for weights, not norms or biases. Small on purpose: the pretext
loss, not a prior on weight size, should shape the features; at lr 1e-3 it shrinks a weight by 1e-7
per step, a light brake like SimCLR's 1e-6 and Barlow Twins' 1.5e-6 (both with LARS)."""
MAX_WARMUP_EPOCHS = 5
"""Warmup is 10 % of the steps (``MAX_WARMUP_SHARE``) but never longer than this many epochs."""
MAX_HIDDEN = 2048
"""Widest hidden layer of the projector (SimCLR's, for ResNet-50's 2048 features)."""
CHECK_EVERY = 20
"""Steps between loss checks: the only host syncs of the loop."""

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def view_ops(channels: int) -> list[AugmentOp]:
    """The two-view policy for images with ``channels`` channels (copies, safe to change)."""
    return [dataclasses.replace(op) for op in VIEW_OPS if channels == 3 or op.name not in RGB_ONLY]


def build_projector(feature_dim: int, output_dim: int) -> nn.Sequential:
    """Linear -> BatchNorm -> ReLU -> Linear, the SimCLR v1 head (Barlow Twins stacks one more block).

    The hidden width follows the features (SimCLR: 2048 for 2048 features), widened to the output
    when that is wider (Barlow Twins keeps every layer as wide as its output) and capped at
    ``MAX_HIDDEN`` so the head stays cheap next to the backbone on a CPU.
    """
    hidden = min(MAX_HIDDEN, max(feature_dim, output_dim))
    return nn.Sequential(
        nn.Linear(feature_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, output_dim),
    )


def suggested_projector_dim(method: str, feature_dim: int) -> int:
    """A projector output width for ``method`` (for a planner filling ``ssl.projector_dim``).

    SimCLR: 128, the paper's, whose ablation found the output width hardly matters. Barlow Twins
    keeps improving with wider outputs (Zbontar et al. 2021, projector ablation; 8192 there), each
    output dimension being one more decorrelated feature. 4x the features, between 256 and
    ``MAX_HIDDEN``, keeps the D x D correlation matrix and the projector cheap on a CPU.
    """
    if method == "barlow_twins":
        return min(MAX_HIDDEN, max(256, 4 * feature_dim))
    return 128


@dataclass
class PretrainResult:
    method: str
    epochs: int
    """Epochs completed."""
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    """Mean loss of each epoch that ran; when ``stopped`` early the last entry covers part of an epoch."""
    stopped: str = ""
    feature_layer: str = ""
    """The module whose input was pretrained as the feature vector."""
    feature_dim: int = 0


def loss_function(params: SSLParams) -> LossFn:
    """The loss ``params.pretrain`` names, as ``loss(z1, z2)``."""
    if params.pretrain == "simclr":
        return partial(nt_xent, temperature=params.temperature)
    if params.pretrain == "barlow_twins":
        return barlow_twins
    raise ConfigError(f"ssl.pretrain: {params.pretrain!r} is not a pretraining method; choose simclr or barlow_twins")


def pretrain(model: nn.Module, source: Source, params: SSLParams, normalizer: Normalizer, runtime: Runtime, *,
             channels: int, height: int, width: int, seed: int, deadline: float | None = None,
             progress: TrainingProgress | None = None) -> PretrainResult:
    """Pretrain ``model`` in place on the images of ``source`` (its targets are ignored).

    ``model`` is on ``runtime.device`` already (``Runtime.prepare_model``). Runs
    ``params.pretrain_epochs`` epochs, or stops after the step that reaches ``deadline`` (a
    ``time.perf_counter()`` value). The model's train/eval mode is restored; its architecture and
    state_dict keys are unchanged. Deterministic for a seed on the CPU.
    """
    loss_fn = loss_function(params)
    progress = progress or TrainingProgress(False)
    layer = find_feature_layer(model, params.feature_layer)
    dim = feature_dim(model, layer, channels, height, width)
    torch.manual_seed(seed)  # the projector's initialization and any dropout in the model
    projector = build_projector(dim, params.projector_dim).to(runtime.device)
    batches = make_batches(source, params.pretrain_batch_size, runtime.device, train=True, seed=seed,
                           num_workers=runtime.params.num_workers or None)
    steps_per_epoch = len(batches)
    epochs = params.pretrain_epochs
    total = epochs * steps_per_epoch
    optimizer = _optimizer(model, projector, params.pretrain_lr)
    warmup = min(int(MAX_WARMUP_SHARE * total), MAX_WARMUP_EPOCHS * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total))
    augment = Augmenter(view_ops(channels))
    generator = torch.Generator(device=runtime.device).manual_seed(seed)

    result = PretrainResult(params.pretrain, 0, 0, 0.0, feature_layer=layer, feature_dim=dim,
                            stopped="completed the planned epochs" if epochs > 0
                            else "no pretraining epochs planned (ssl.pretrain_epochs is 0)")
    start = time.perf_counter()
    was_training = model.training
    model.train()
    projector.train()
    try:
        with FeatureTap(model, layer) as tap:
            for epoch in range(epochs):
                epoch_start = time.perf_counter()
                batches.set_epoch(epoch)
                progress.start_epoch(epoch, epochs, steps_per_epoch)
                loss_sum = torch.zeros((), device=runtime.device)
                seen = steps = 0
                out_of_time = False
                for images, _ in batches:
                    pixels = normalizer.unit(images)
                    # One augmenter call on the doubled batch: independent draws give the two views.
                    views, _ = augment(torch.cat([pixels, pixels]), generator)
                    loss = _step(model, projector, tap, loss_fn, optimizer, runtime, normalizer.standardize(views))
                    scheduler.step()
                    steps += 1
                    loss_sum += loss * len(images)
                    seen += len(images)
                    if steps % CHECK_EVERY == 0:
                        _check_and_show(progress, loss_sum, seen, steps, epoch, epoch_start, params)
                    if deadline is not None and time.perf_counter() >= deadline:
                        out_of_time = True
                        break
                mean_loss = _check_and_show(progress, loss_sum, seen, steps, epoch, epoch_start, params)
                result.steps += steps
                result.losses.append(round(mean_loss, 6))
                result.epochs += int(steps == steps_per_epoch)
                seconds = time.perf_counter() - epoch_start
                progress.end_epoch(f"{params.pretrain} pretraining epoch {epoch + 1}/{epochs}  loss {mean_loss:.4f}  "
                                   f"{seen / seconds:,.0f} img/s  {seconds:.1f}s",
                                   last=out_of_time or epoch == epochs - 1)
                if out_of_time:
                    if result.epochs < epochs:
                        result.stopped = (f"the time budget ran out after step {steps}/{steps_per_epoch} "
                                          f"of epoch {epoch + 1}/{epochs}")
                    break
    finally:
        model.train(was_training)
    result.seconds = round(time.perf_counter() - start, 3)
    return result


def _optimizer(model: nn.Module, projector: nn.Module, lr: float) -> torch.optim.AdamW:
    """AdamW over model and projector; decay (AdamW's own, decoupled) on weights, not norms or biases."""
    groups = [*param_groups(model), *param_groups(projector)]
    for group in groups:
        group["weight_decay"] = WEIGHT_DECAY if group["decay"] else 0.0
    return torch.optim.AdamW(groups, lr=lr)


def _step(model: nn.Module, projector: nn.Module, tap: FeatureTap, loss_fn: LossFn,
          optimizer: torch.optim.Optimizer, runtime: Runtime, views: torch.Tensor) -> torch.Tensor:
    """One optimizer step on ``views`` (2B model-ready images: B first views, then B second ones);
    returns the detached loss (no host sync)."""
    with runtime.autocast():
        model(views)
        embeddings = projector(tap.features)
    z1, z2 = embeddings.chunk(2)
    loss = loss_fn(z1, z2)
    runtime.backward_and_step(loss, optimizer)
    return loss.detach()


def _check_and_show(progress: TrainingProgress, loss_sum: torch.Tensor, seen: int, step: int, epoch: int,
                    epoch_start: float, params: SSLParams) -> float:
    """The epoch's mean loss so far (a host sync); raise TrainingDiverged unless it is finite."""
    mean_loss = float(loss_sum) / max(seen, 1)
    if not math.isfinite(mean_loss):
        raise TrainingDiverged(
            f"{params.pretrain} pretraining diverged in epoch {epoch + 1}, step {step}: the loss is {mean_loss}. "
            f"Lower ssl.pretrain_lr (now {params.pretrain_lr:g}) or check the data for extreme values."
        )
    progress.update(step, mean_loss, seen / max(time.perf_counter() - epoch_start, 1e-9))
    return mean_loss
