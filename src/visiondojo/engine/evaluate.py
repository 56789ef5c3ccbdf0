"""Evaluation: metrics over a whole split, and optionally every score for the report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from ..data.batches import Normalizer
from ..tasks import Task
from .runtime import Runtime
from .step import eval_outputs

Metrics = dict[str, "float | list[float]"]


@dataclass
class Evaluation:
    metrics: Metrics
    """Scalar metrics as floats, per-class metrics as lists; includes ``loss`` for tasks with per-sample losses."""
    scores: torch.Tensor | None = None
    """What the task keeps of its outputs for the report (``Task.kept_outputs``): probabilities for
    classification, predicted masks for segmentation."""
    targets: torch.Tensor | None = None
    losses: torch.Tensor | None = None
    """Per-sample losses, in data order (for the worst-mistakes gallery)."""
    correct: torch.Tensor | None = None
    """Which validation units the model got right, in data order (``Task.correct``): the paired tests."""


def metrics_to_python(values: dict[str, torch.Tensor]) -> Metrics:
    out: Metrics = {}
    for name, value in values.items():
        value = value.detach().double().cpu().round(decimals=6)
        out[name] = float(value) if value.ndim == 0 else value.tolist()
    return out


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, batches: Iterable, normalizer: Normalizer, runtime: Runtime,
             *, collect: bool = False) -> Evaluation:
    """The task's metrics over ``batches`` (model in eval mode, restored after), plus the mean
    per-sample ``loss`` when the task has one (a detector in eval mode computes no loss).

    ``collect`` keeps on the host which units the model got right (``Task.correct``: the paired
    tests read it) and, for a task with per-sample losses, every score, target and loss (the
    report's worst mistakes); a detector has no per-sample loss, and keeps the units alone.

    Under a process group each rank evaluates its block of the data (``BatchOrder``'s shard) and
    every rank returns the evaluation of the whole: torchmetrics gathers the metric states, the
    loss is summed over the ranks, and what ``collect`` keeps is gathered in rank order (data
    order). A probe that rank 0 runs alone (``Runtime(local=True)``) keeps its metrics to itself.
    """
    with_loss = task.capabilities.per_sample_loss
    was_training = model.training
    model.eval()
    metrics = task.metrics().to(runtime.device)
    for metric in metrics.values():  # torchmetrics would otherwise gather whenever a group exists
        metric.distributed_available_fn = lambda: runtime.distributed
    total_loss = torch.zeros((), device=runtime.device, dtype=torch.float64)
    count = 0
    scores, targets_all, losses, correct = [], [], [], []
    for images, targets in batches:
        outputs = eval_outputs(model, task, runtime, normalizer(images))
        task.update_metrics(metrics, outputs, targets)
        if collect:
            correct.append(task.correct(outputs, targets).cpu())
        if not with_loss:
            continue
        sample_loss = task.per_sample_loss(outputs, targets)
        total_loss += sample_loss.double().sum()
        count += len(sample_loss)
        if collect:
            scores.append(task.kept_outputs(outputs).cpu())
            targets_all.append(targets.cpu())
            losses.append(sample_loss.cpu())
    model.train(was_training)
    result = metrics_to_python(task.finish_metrics(metrics.compute()))
    if with_loss:
        summed = runtime.all_reduce(torch.stack([total_loss, total_loss.new_tensor(count)]))
        result["loss"] = round(float(summed[0]) / max(float(summed[1]), 1), 6)
    if not collect:
        return Evaluation(result)
    parts = {"correct": correct, **({"scores": scores, "targets": targets_all, "losses": losses} if with_loss else {})}
    ranks = runtime.all_gather_object({name: torch.cat(kept) for name, kept in parts.items() if kept})
    joined = {name: torch.cat([rank[name] for rank in ranks if name in rank]) for name in parts}
    return Evaluation(result, joined.get("scores"), joined.get("targets"), joined.get("losses"), joined["correct"])
