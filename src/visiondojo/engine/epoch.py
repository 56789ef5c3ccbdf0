"""One training epoch, in the style of torchvision's reference ``train_one_epoch``.

Batches come in raw; each goes through the regularizer (augmentation, soft targets, mixing,
normalization, all on the device), one ``train_step`` (the task's forward and loss, the runtime's
backward, clipping and step) and one scheduler step. The epoch stops early at ``max_steps`` (a
partial last epoch that the budget guard planned) or at ``stop_time`` (the budget ran out); the
driver (``engine.loop``) decides what either means. The loss is summed on the device and read
back every ``LOG_EVERY`` steps only, so a GPU never waits for the host between steps.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..errors import VisionDojoError
from ..tasks import LossSettings, Task
from .progress import TrainingProgress
from .runtime import Runtime
from .step import train_step

LOG_EVERY = 20
"""Steps between host reads of the running loss (the divergence check and the progress line)."""


class TrainingDiverged(VisionDojoError):
    """The loss became NaN or infinite."""


@dataclass
class EpochResult:
    steps: int
    """Optimizer steps taken."""
    images: int
    """Training images seen (mixing keeps the count: a mixed pair is one image); under a process
    group, by all ranks (and ``mean_loss`` and ``mean_terms`` are the global batch's)."""
    mean_loss: float
    seconds: float
    """Wall time of the epoch's training steps."""
    cut_off: bool
    """``stop_time`` passed: no time is left for this epoch's validation."""
    mean_terms: dict[str, float] = field(default_factory=dict)
    """Mean of each logged loss term (a detector's box and class losses), for ``history.csv``."""

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def train_one_epoch(model: nn.Module, task: Task, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, batches: Iterable[tuple[torch.Tensor, Any]],
                    regularize: Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]], runtime: Runtime, *,
                    epoch: int, max_steps: int, grad_clip_norm: float | None = None,
                    loss_settings: LossSettings = LossSettings(), stop_time: float | None = None,
                    progress: TrainingProgress | None = None) -> EpochResult:
    """Train ``model`` (already in train mode) on up to ``max_steps`` batches of ``batches``.

    ``stop_time`` is a ``time.perf_counter()`` value; the step that passes it is the last (under a
    process group, the step that passes it on rank 0's clock: ranks must stop at the same step).
    Raises ``TrainingDiverged`` when the running loss is not finite.
    """
    start = time.perf_counter()
    loss_sum = torch.zeros((), device=runtime.device)
    term_sums: dict[str, torch.Tensor] = {}
    steps = images_seen = 0
    cut_off = False
    for images, targets in batches if max_steps > 0 else ():
        inputs, targets = regularize(images, targets)
        step = train_step(model, task, optimizer, runtime, inputs, targets, grad_clip_norm, loss_settings,
                          share_weight=getattr(batches, "share_weight", 1.0))
        scheduler.step()
        steps += 1
        loss_sum += step.loss * len(images)
        for name, value in step.terms.items():
            term_sums[name] = term_sums.get(name, 0.0) + value.float() * len(images)
        images_seen += len(images)
        if steps % LOG_EVERY == 0 or steps == max_steps:
            mean_loss = _checked_mean(loss_sum, images_seen, epoch, steps, optimizer)
            if progress is not None:
                progress.update(steps, mean_loss, images_seen / (time.perf_counter() - start))
        if stop_time is not None and runtime.decided_by_main(time.perf_counter() > stop_time):
            cut_off = True
            break
        if steps >= max_steps:
            break
    if runtime.world_size > 1:  # the global batch's figures, the same on every rank (one reduction per epoch)
        names = sorted(term_sums)
        totals = runtime.all_reduce(torch.stack([loss_sum.float(), loss_sum.new_tensor(float(images_seen)),
                                                 *[term_sums[name] for name in names]]))
        loss_sum, images_seen = totals[0], int(totals[1])
        term_sums = dict(zip(names, totals[2:]))
    mean_loss = _checked_mean(loss_sum, images_seen, epoch, steps, optimizer) if images_seen else 0.0
    mean_terms = {name: float(total) / max(images_seen, 1) for name, total in term_sums.items()}
    return EpochResult(steps, images_seen, mean_loss, time.perf_counter() - start, cut_off, mean_terms)


def _checked_mean(loss_sum: torch.Tensor, images: int, epoch: int, step: int,
                  optimizer: torch.optim.Optimizer) -> float:
    """The epoch's mean loss so far (a host sync); raise ``TrainingDiverged`` unless it is finite."""
    mean_loss = float(loss_sum) / max(images, 1)
    if not math.isfinite(mean_loss):
        group = optimizer.param_groups[0]
        lr = group.get("initial_lr", group["lr"])
        raise TrainingDiverged(
            f"training diverged in epoch {epoch + 1}, step {step}: the loss is {mean_loss}. "
            f"Lower optimization.lr (now {lr:g}) or check the data for extreme values."
        )
    return mean_loss
