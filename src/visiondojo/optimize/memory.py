"""Memory ceiling: the largest batch that fits, and only sizes that were actually run.

- CUDA: real forward/backward/step at doubling batch sizes on a probe copy; an out-of-memory
  error, or a peak above ``HEADROOM`` of the device, ends the search; the answer is the
  largest size that ran within the headroom.
- Both probe the densest images of the data when it has per-image objects (``densest``).
- CPU: activation memory per sample is measured exactly (the bytes autograd saves for the
  backward pass, through ``saved_tensors_hooks``) and set against the memory the machine has
  available. The answer is an upper bound for the throughput scan (choose.py), which runs real
  steps at growing candidate sizes below it; only sizes that scan ran can be chosen, so the
  batch a run uses was always executed first.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..data.sources import Source
from ..engine.runtime import Runtime
from ..engine.step import forward_loss, train_step
from ..plan import OptimizationParams
from ..tasks import Task
from .optimizers import build_optimizer
from .probe import endless_batches, model_copy

HEADROOM = 0.8
"""Share of device memory (CUDA) or of available RAM (CPU) a training step may use."""
ACTIVATION_OVERHEAD = 2.0
"""CPU: peak step memory per sample relative to the saved activations (gradients of
activations and temporaries live at the same time during backward)."""


@dataclass
class MemoryCeiling:
    batch_size: int
    how: str
    tested: list[int] = field(default_factory=list)
    bytes_per_sample: float | None = None
    seconds: float = 0.0


def available_ram_bytes() -> int:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping), else total RAM."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def saved_activation_bytes(model: nn.Module, task: Task, runtime: Runtime, normalizer: Any,
                           images: torch.Tensor, targets: Any) -> int:
    """Bytes autograd keeps for the backward pass of one batch (each storage counted once)."""
    seen: set[int] = set()
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = forward_loss(model, task, runtime, normalizer(images), targets, task.probe_settings).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    parameter_bytes = sum(p.untyped_storage().nbytes() for p in model.parameters())
    return max(total - parameter_bytes, 0)


def densest(train: Source, n: int) -> Source:
    """The ``n`` images of ``train`` with the most objects when its targets are per-image objects
    (boxes), else ``train`` itself: a detector's memory grows with the objects it matches and the
    proposals it keeps, so a ceiling measured on average images would not hold for the densest."""
    counts = getattr(train.targets, "counts", None)
    if counts is None:
        return train
    return train.subset(torch.argsort(counts, descending=True, stable=True)[:max(n, 1)])


def memory_ceiling(model: nn.Module, task: Task, train: Source, runtime: Runtime, normalizer: Any,
                   params: OptimizationParams, *, max_batch: int, seed: int = 0) -> MemoryCeiling:
    """The largest batch size (at most ``max_batch``) that runs a training step within the headroom."""
    start = time.perf_counter()
    train = densest(train, max_batch)
    with model_copy(model, runtime) as probe:
        optimizer = build_optimizer(probe, params)
        if runtime.device.type == "cuda":
            result = _cuda_ceiling(probe, task, train, runtime, normalizer, optimizer, max_batch, seed)
        else:
            result = _cpu_ceiling(probe, task, train, runtime, normalizer, optimizer, max_batch, seed)
    result.seconds = time.perf_counter() - start
    return result


def _cuda_ceiling(model: nn.Module, task: Task, train: Source, runtime: Runtime, normalizer: Any,
                  optimizer: torch.optim.Optimizer, max_batch: int, seed: int) -> MemoryCeiling:
    total = torch.cuda.get_device_properties(runtime.device).total_memory
    tested: list[int] = []
    best = 0
    size = 2
    while size <= max_batch:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(runtime.device)
        try:
            images, targets = next(endless_batches(train, size, runtime, seed))
            train_step(model, task, optimizer, runtime, normalizer(images), targets,
                       settings=task.probe_settings, split_on_oom=False)
            torch.cuda.synchronize(runtime.device)
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            optimizer.zero_grad(set_to_none=True)
        tested.append(size)
        if torch.cuda.max_memory_allocated(runtime.device) > HEADROOM * total:
            break
        best = size
        if size == max_batch:
            break
        size = min(size * 2, max_batch)
    torch.cuda.empty_cache()
    return MemoryCeiling(max(best, 1), f"largest doubling that ran within {HEADROOM:.0%} of GPU memory", tested)


def _cpu_ceiling(model: nn.Module, task: Task, train: Source, runtime: Runtime, normalizer: Any,
                 optimizer: torch.optim.Optimizer, max_batch: int, seed: int) -> MemoryCeiling:
    sample = min(16, max_batch)
    images, targets = next(endless_batches(train, sample, runtime, seed))
    per_sample = ACTIVATION_OVERHEAD * saved_activation_bytes(model, task, runtime, normalizer, images, targets) / sample
    state_bytes = 4 * sum(p.numel() * p.element_size() for p in model.parameters())  # weights, grads, 2 moments
    budget = HEADROOM * available_ram_bytes() - state_bytes
    size = max(1, min(max_batch, int(budget // max(per_sample, 1.0))))
    how = (f"{per_sample / 2**20:.2f} MiB per sample (measured activations x{ACTIVATION_OVERHEAD:g}) against "
           f"{HEADROOM:.0%} of {available_ram_bytes() / 2**30:.1f} GiB available RAM, capped at {max_batch}; "
           "only batches the throughput scan ran are chosen")
    return MemoryCeiling(size, how, [], per_sample)
