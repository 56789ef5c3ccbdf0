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

from ..errors import VisionDojoError
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
               micro_batches: int = 1, split_on_oom: bool = True) -> StepLoss:
    """One optimizer step on model-ready ``inputs``; returns the detached loss and its terms, and
    whether the step was taken (``Runtime.step`` skips non-finite ones).

    Weight decay, when attached (``regularize.weight_decay``), runs as the optimizer's pre-step hook.
    ``share_weight`` scales the loss that is backpropagated (not the one returned): a rank's
    share of an unevenly split global batch (``data.batches.BatchOrder``). ``micro_batches``
    splits the batch and accumulates the gradients, each part's
    mean loss weighted by its share of the batch, so the step is the whole batch's (exactly for
    losses that are per-sample means; BatchNorm sees each part's own statistics). Under DDP only
    the last part's backward all-reduces. A step that runs out of memory is retried in twice as
    many parts (the run's probes and its training alike); ``StepLoss.micro_batches`` says how many
    it took, for the caller to keep. ``split_on_oom=False`` lets the error through (the memory
    probe looks for it).
    """
    while True:
        try:
            return _step(model, task, optimizer, runtime, inputs, targets, grad_clip_norm, settings, share_weight,
                         micro_batches)
        except torch.OutOfMemoryError as error:
            if not split_on_oom:
                raise
            micro_batches = _split_further(error, micro_batches, len(inputs), runtime, optimizer)


def _step(model: nn.Module, task: Task, optimizer: torch.optim.Optimizer, runtime: Runtime, inputs: torch.Tensor,
          targets: Any, grad_clip_norm: float | None, settings: LossSettings, share_weight: float,
          micro_batches: int) -> StepLoss:
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
    if runtime.scaler is not None and stepped:
        # The scaler skipped it if its gradients overflowed (routine under fp16, not counted); a
        # non-finite loss is a failure like any other, counted so that a run of them rolls back.
        # Summed over the ranks: one rank's NaN made every rank's (all-reduced) step skip.
        stepped = bool(torch.isfinite(runtime.all_reduce(loss_sum.clone())))
    return StepLoss(loss_sum, term_sums, stepped, micro_batches)


class OutOfMemory(VisionDojoError):
    """Training ran out of device memory and splitting the batch cannot help."""


def _split_further(error: torch.OutOfMemoryError, micro_batches: int, batch: int, runtime: Runtime,
                   optimizer: torch.optim.Optimizer) -> int:
    """After an out-of-memory error: twice as many micro-batches (the batch, and so the plan's
    learning rate, stay), or a clear error when one image at a time does not fit, or under DDP
    (a rank cannot re-split its step alone: its peers may be mid-collective)."""
    optimizer.zero_grad(set_to_none=True)
    if runtime.device.type == "cuda":
        torch.cuda.empty_cache()
    if runtime.world_size > 1 or micro_batches >= batch:
        why = ("under torchrun the ranks cannot re-split a step alone" if runtime.world_size > 1
               else "even one image at a time does not fit")
        raise OutOfMemory(f"out of memory training a batch of {batch} ({why}): pin a smaller "
                          f"optimization.batch_size, a smaller resize, or a smaller model ({error})") from None
    return min(micro_batches * 2, batch)


@torch.no_grad()
def eval_outputs(model: nn.Module, task: Task, runtime: Runtime, inputs: torch.Tensor) -> Any:
    """The task's evaluation forward under the runtime's autocast (the caller sets eval mode).

    A batch that runs out of memory is evaluated in two halves (each halved again as needed) and
    the outputs joined: evaluation has no batch statistics, so the outputs are those of the whole
    batch. Every batch tries its full size first (a failed attempt costs one allocation)."""
    try:
        with runtime.autocast():
            return task.forward_eval(model, inputs)
    except torch.OutOfMemoryError as error:
        if len(inputs) == 1:
            raise OutOfMemory(f"out of memory evaluating a single image ({error}): set a smaller resize or "
                              "use a smaller model") from None
    if runtime.device.type == "cuda":
        torch.cuda.empty_cache()
    return _joined([eval_outputs(model, task, runtime, half) for half in inputs.chunk(2)])


def _joined(parts: list[Any]) -> Any:
    """Outputs of consecutive parts of a batch as one batch's: tensors and dicts of tensors
    concatenated, lists (a detector's per-image dicts) chained."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, dict):
        return {key: _joined([part[key] for part in parts]) for key in first}
    if isinstance(first, (list, tuple)):
        return [item for part in parts for item in part]
    raise TypeError(f"cannot join evaluation outputs of type {type(first).__name__}")
