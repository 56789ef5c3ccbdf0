"""One training epoch, in the style of torchvision's reference ``train_one_epoch``.

Batches come in raw; each goes through the regularizer (augmentation, soft targets, mixing,
normalization, all on the device), one ``train_step`` (the task's forward and loss, the runtime's
backward, clipping and step) and one scheduler step. The loss is summed on the device and read
back every ``LOG_EVERY`` steps only, so a GPU never waits for the host between steps.

An epoch may run in pieces. It ends at ``max_steps`` (a partial last epoch that the budget guard
planned) and pauses at a step boundary when the budget runs out, when a periodic checkpoint is
due, or when a signal asked the run to stop (``Pause``); what it did so far (``EpochTotals``)
goes into the checkpoint, and the next piece, in this process or a resumed one, starts from
those totals at the next batch of the same epoch order. The driver (``engine.loop``) decides what
each pause means. Under a process group the ranks pause together: rank 0's clock decides the
budget and the checkpoints, any rank's signal stops them all: one small all-reduce per step
whenever a pause can happen, which in the user's run (signals, periodic checkpoints) is always;
probes and proxies pass none and skip it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch
from torch import nn

from ..errors import VisionDojoError
from ..tasks import LossSettings, Task
from . import faults
from .interrupt import StopRequest
from .progress import TrainingProgress
from .runtime import Runtime
from .step import train_step

if TYPE_CHECKING:
    from .rollback import GoodStates

LOG_EVERY = 20
"""Steps between host reads of the running loss (the divergence check and the progress line)."""
SKIPS_BEFORE_ROLLBACK = 3
"""Consecutive skipped steps (non-finite gradients) after which the epoch pauses for a roll-back:
one bad batch is skipped and forgotten; several in a row mean the weights themselves went bad."""


class TrainingDiverged(VisionDojoError):
    """The loss became NaN or infinite."""


class Pause(Enum):
    """Why an epoch stopped before its last step."""

    BUDGET = "the time budget ran out"
    CHECKPOINT = "a periodic checkpoint is due"
    SIGNAL = "a signal asked the run to stop"
    ROLLBACK = "several steps in a row had non-finite gradients"


@dataclass
class EpochTotals:
    """What an epoch has done so far: all a checkpoint needs to continue it mid-way."""

    steps: int = 0
    """Optimizer steps taken (the next batch is batch ``steps`` of the epoch's order)."""
    images: int = 0
    """Training images seen (mixing keeps the count: a mixed pair is one image)."""
    loss_sum: float = 0.0
    term_sums: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    """Wall time of the training steps."""
    skipped: int = 0
    """Steps skipped for non-finite gradients (their images and losses are not in the sums)."""
    streak: int = 0
    """Of them, the last ones in a row: a checkpoint between two skipped steps does not reset it."""


@dataclass
class EpochResult:
    totals: EpochTotals
    """Under a process group, of all ranks (the mean loss and terms are the global batch's)."""
    pause: Pause | None = None
    """Why the epoch stopped early; None when it reached ``max_steps`` (or ran out of batches)."""
    signal: int = 0
    """The signal behind ``Pause.SIGNAL``."""
    micro_batches: int = 1
    """Parts each batch is trained in (more than 1 after an out-of-memory error; see ``train_step``)."""

    @property
    def steps(self) -> int:
        return self.totals.steps

    @property
    def seconds(self) -> float:
        return self.totals.seconds

    @property
    def mean_loss(self) -> float:
        return self.totals.loss_sum / max(self.totals.images, 1)

    @property
    def mean_terms(self) -> dict[str, float]:
        """Mean of each logged loss term (a detector's box and class losses), for ``history.csv``."""
        return {name: total / max(self.totals.images, 1) for name, total in self.totals.term_sums.items()}

    @property
    def images_per_s(self) -> float:
        return self.totals.images / max(self.totals.seconds, 1e-9)

    @property
    def cut_off(self) -> bool:
        """No time is left for this epoch's validation."""
        return self.pause is Pause.BUDGET


def train_one_epoch(model: nn.Module, task: Task, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, batches: Iterable[tuple[torch.Tensor, Any]],
                    regularize: Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]], runtime: Runtime, *,
                    epoch: int, max_steps: int, grad_clip_norm: float | None = None,
                    loss_settings: LossSettings = LossSettings(), stop_time: float | None = None,
                    checkpoint_time: float | None = None, stop: StopRequest | None = None,
                    done: EpochTotals | None = None, micro_batches: int = 1, good: GoodStates | None = None,
                    progress: TrainingProgress | None = None) -> EpochResult:
    """Train ``model`` (already in train mode) up to step ``max_steps`` of the epoch.

    ``batches`` yields the epoch's batches from step ``done.steps`` on (``set_epoch(epoch,
    start_step)``); ``done`` is what earlier pieces of the epoch did (a resumed checkpoint's).
    ``stop_time`` and ``checkpoint_time`` are ``time.perf_counter()`` values: the step that
    passes one is the last of this piece (``Pause.BUDGET``, ``Pause.CHECKPOINT``); so is the
    step during which ``stop`` caught a signal (``Pause.SIGNAL``).
    ``micro_batches`` parts per batch (``train_step``, which retries a step that runs out of
    memory in twice as many); the count stays for the rest of the run (``EpochResult.micro_batches``).
    ``good`` is told of every step taken (it keeps host copies for a roll-back); after
    ``SKIPS_BEFORE_ROLLBACK`` skipped steps in a row the piece ends with ``Pause.ROLLBACK``.
    Raises ``TrainingDiverged`` when the running loss is not finite.
    """
    start = time.perf_counter()
    done = done or EpochTotals()
    loss_sum = torch.tensor(done.loss_sum, device=runtime.device)
    term_sums = {name: torch.tensor(value, device=runtime.device) for name, value in done.term_sums.items()}
    steps, images_seen, skipped, streak = done.steps, done.images, done.skipped, done.streak
    pause, signal = None, 0
    for images, targets in batches if steps < max_steps else ():
        faults.next_step()
        inputs, targets = regularize(images, targets)
        step = train_step(model, task, optimizer, runtime, inputs, targets, grad_clip_norm, loss_settings,
                          share_weight=getattr(batches, "share_weight", 1.0), micro_batches=micro_batches)
        micro_batches = step.micro_batches
        scheduler.step()
        steps += 1
        if step.stepped:
            streak = 0
            if good is not None:
                good.passed(steps)
            loss_sum += step.loss * len(images)
            for name, value in step.terms.items():
                term_sums[name] = term_sums.get(name, 0.0) + value.float() * len(images)
            images_seen += len(images)
        else:
            skipped, streak = skipped + 1, streak + 1
        if steps % LOG_EVERY == 0 or steps == max_steps:
            mean_loss = _checked_mean(loss_sum, images_seen, epoch, steps, optimizer)
            if progress is not None:
                progress.update(steps, mean_loss, (images_seen - done.images) / (time.perf_counter() - start))
        pause, signal = _pause(runtime, stop_time, checkpoint_time, stop)
        if pause is None and streak >= SKIPS_BEFORE_ROLLBACK:
            pause = Pause.ROLLBACK
        if pause is not None or steps >= max_steps:
            break
    seconds = done.seconds + time.perf_counter() - start
    totals = _totals(runtime, steps, images_seen - done.images, loss_sum, term_sums, seconds, done)
    totals.skipped, totals.streak = skipped, streak
    if totals.images:
        _checked_mean(torch.tensor(totals.loss_sum), totals.images, epoch, steps, optimizer)
    return EpochResult(totals, pause, signal, micro_batches)


def _pause(runtime: Runtime, stop_time: float | None, checkpoint_time: float | None,
           stop: StopRequest | None) -> tuple[Pause | None, int]:
    """Whether to pause after this step, the same answer on every rank (see the module docstring)."""
    if stop_time is None and checkpoint_time is None and stop is None:
        return None, 0
    now = time.perf_counter()
    budget, due, signal = runtime.decide(
        from_main=[stop_time is not None and now > stop_time, checkpoint_time is not None and now > checkpoint_time],
        from_any=[stop.requested if stop is not None else 0])
    if signal:
        return Pause.SIGNAL, int(signal)
    if budget:
        return Pause.BUDGET, 0
    return (Pause.CHECKPOINT, 0) if due else (None, 0)


def _totals(runtime: Runtime, steps: int, new_images: int, loss_sum: torch.Tensor,
            term_sums: dict[str, torch.Tensor], seconds: float, done: EpochTotals) -> EpochTotals:
    """The epoch's totals on the host (one sync). Under a process group the images, loss and terms
    of this piece are summed over the ranks, so every rank holds the global batch's figures."""
    names = sorted(term_sums)
    piece = torch.stack([loss_sum.float() - done.loss_sum, loss_sum.new_tensor(float(new_images)),
                         *[term_sums[name].float() - done.term_sums.get(name, 0.0) for name in names]])
    piece = runtime.all_reduce(piece).tolist()
    return EpochTotals(steps, done.images + int(piece[1]), done.loss_sum + piece[0],
                       {name: done.term_sums.get(name, 0.0) + value for name, value in zip(names, piece[2:])},
                       seconds)


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
