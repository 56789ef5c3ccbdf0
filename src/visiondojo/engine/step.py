"""One training step, the same everywhere a model trains.

The training loop, the throughput and memory probes, the learning-rate range test and the noise
scale all train through these two functions, so a task (the forward and its loss) and the runtime
(autocast, scaled backward, clipping) are each written once: a detector's loss dict or an fp16
GradScaler reaches every meta-learner the way it reaches the real run.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..tasks import LossSettings, StepLoss, Task
from .runtime import Runtime


def forward_loss(model: nn.Module, task: Task, runtime: Runtime, inputs: torch.Tensor, targets: Any,
                 settings: LossSettings = LossSettings()) -> StepLoss:
    """The task's training forward on model-ready ``inputs`` under the runtime's autocast."""
    with runtime.autocast():
        return task.forward_train(model, inputs, targets, settings)


def train_step(model: nn.Module, task: Task, optimizer: torch.optim.Optimizer, runtime: Runtime,
               inputs: torch.Tensor, targets: Any, grad_clip_norm: float | None = None,
               settings: LossSettings = LossSettings(), share_weight: float = 1.0) -> StepLoss:
    """One optimizer step on model-ready ``inputs``; returns the detached loss and its terms (no host sync).

    Weight decay, when attached (``regularize.weight_decay``), runs as the optimizer's pre-step hook.
    ``share_weight`` scales the loss that is backpropagated (not the one returned): a rank's
    share of an unevenly split global batch (``data.batches.BatchOrder``).
    """
    step = forward_loss(model, task, runtime, inputs, targets, settings)
    loss = step.loss if share_weight == 1.0 else step.loss * share_weight
    runtime.backward_and_step(loss, optimizer, grad_clip_norm=grad_clip_norm)
    return StepLoss(step.loss.detach(), {k: v.detach() for k, v in step.terms.items()})


@torch.no_grad()
def eval_outputs(model: nn.Module, task: Task, runtime: Runtime, inputs: torch.Tensor) -> Any:
    """The task's evaluation forward under the runtime's autocast (the caller sets eval mode)."""
    with runtime.autocast():
        return task.forward_eval(model, inputs)
