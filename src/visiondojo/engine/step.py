"""One training step, the same everywhere a model trains.

The training loop, the throughput and memory probes, the learning-rate range test and the noise
scale all train through these two functions, so a task (the forward and its loss) and the runtime
(autocast, scaled backward, clipping) are each written once: a detector's loss dict or an fp16
GradScaler reaches every meta-learner the way it reaches the real run.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..tasks import LossSettings, StepLoss, Task
from . import faults
from .runtime import Runtime


def forward_loss(model: nn.Module, task: Task, runtime: Runtime, inputs: torch.Tensor, targets: Any,
                 settings: LossSettings = LossSettings()) -> StepLoss:
    """The task's training forward on model-ready ``inputs`` under the runtime's autocast."""
    with runtime.autocast():
        return task.forward_train(model, inputs, targets, settings)


def train_step(model: nn.Module, task: Task, optimizer: torch.optim.Optimizer, runtime: Runtime,
               inputs: torch.Tensor, targets: Any, grad_clip_norm: float | None = None,
               settings: LossSettings = LossSettings(), share_weight: float = 1.0,
               micro_batches: int = 1) -> StepLoss:
    """One optimizer step on model-ready ``inputs``; returns the detached loss and its terms, and
    whether the step was taken (``Runtime.step`` skips non-finite ones).

    Weight decay, when attached (``regularize.weight_decay``), runs as the optimizer's pre-step hook.
    ``share_weight`` scales the loss that is backpropagated (not the one returned): a rank's
    share of an unevenly split global batch (``data.batches.BatchOrder``). ``micro_batches``
    splits the batch (after an out-of-memory error) and accumulates the gradients, each part's
    mean loss weighted by its share of the batch, so the step is the whole batch's (exactly for
    losses that are per-sample means; BatchNorm sees each part's own statistics). Under DDP only
    the last part's backward all-reduces.
    """
    optimizer.zero_grad(set_to_none=True)
    faults.before_forward(whole_batch=micro_batches == 1)
    parts = list(zip(inputs.chunk(micro_batches), targets.chunk(micro_batches))) if micro_batches > 1 else [
        (inputs, targets)]
    loss_sum, term_sums = torch.zeros((), device=inputs.device), {}
    for index, (part_inputs, part_targets) in enumerate(parts):
        weight = len(part_inputs) / len(inputs)
        last = index == len(parts) - 1
        with contextlib.nullcontext() if last or not isinstance(model, DistributedDataParallel) else model.no_sync():
            step = forward_loss(model, task, runtime, part_inputs, part_targets, settings)
            loss = faults.after_forward(step.loss)
            runtime.backward(loss * (weight * share_weight) if weight * share_weight != 1.0 else loss)
        loss_sum = loss_sum + loss.detach().float() * weight
        for name, value in step.terms.items():
            term_sums[name] = term_sums.get(name, 0.0) + value.detach().float() * weight
    stepped = runtime.step(optimizer, grad_clip_norm=grad_clip_norm)
    return StepLoss(loss_sum, term_sums, stepped)


@torch.no_grad()
def eval_outputs(model: nn.Module, task: Task, runtime: Runtime, inputs: torch.Tensor) -> Any:
    """The task's evaluation forward under the runtime's autocast (the caller sets eval mode)."""
    with runtime.autocast():
        return task.forward_eval(model, inputs)
