"""Roll-backs: host copies of recent good states, restored when training goes non-finite.

A step whose gradients are not finite is skipped (``Runtime.step``); ``SKIPS_BEFORE_ROLLBACK``
(engine/epoch.py) in a row mean the weights themselves may have gone bad. The run then goes back
to a state kept in host memory, cuts the learning rate and carries on from the next batch: the
batches in between are not replayed (PaLM, Chowdhery et al. 2022 §5.1, restarted ~100 steps before
its loss spikes and skipped the batches around them too).

Where to: the model and optimizer are copied to the host every ``every`` steps of the run
(an eighth of an epoch), and the two latest copies are kept; a roll-back restores the older one,
taken at least ``every`` steps before the trouble. The newer one may already hold weights on their
way to blowing up: a loss spike grows over several steps before it overflows. A roll-back so loses
between an eighth and a quarter of an epoch; going back to the epoch's start lost up to a whole one
(on bench/faults.py's 28-step epochs, 14 of the run's 84 steps). The price is a second host copy.

The copies go into two sets of host buffers allocated once and reused, pinned when the model is
on a GPU so the copy is one asynchronous transfer queued behind the step (the optimizer's next
update waits for it in stream order). On an H200, ResNet-18 with AdamW (128 MB of state) at 13 ms
a step: fresh pageable copies took 83-93 ms each (eight in a 200-step epoch: +30 %), the reused
pinned buffers 4-6 ms (+1.5 %). The buffers keep each tensor's strides: a channels_last moment
restored contiguous would push a foreach optimizer onto its slow per-tensor path.

The learning rate: the first roll-back halves it and lets it rise back to the schedule over one
epoch (``WarmupCosine.dip``): a single bad stretch (a run of corrupt batches, an injected fault)
is no reason to train the rest of the run at half the rate, which cost bench/faults.py's
rolled-back episode 2.8 points. A second roll-back means the rate itself is suspect: it is halved
for the rest of the run, and again at each later one; after ``MAX_ROLLBACKS`` the run stops.
"""

from __future__ import annotations

import warnings
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..optimize.schedules import schedule_factor
from .epoch import SKIPS_BEFORE_ROLLBACK, TrainingDiverged

SNAPSHOTS_PER_EPOCH = 8
"""Host copies of the model and optimizer per epoch (one every ``steps_per_epoch // 8`` steps)."""
MAX_ROLLBACKS = 3
"""Roll-backs a run survives; the next one stops it with an error."""
ROLLBACK_LR_FACTOR = 0.5
"""Each roll-back multiplies the learning rate by this: a step too large is the usual cause."""


@dataclass
class GoodState:
    step: int
    """The run's steps done when it was copied."""
    epoch: int
    epoch_step: int
    slot: int
    """Which of the two sets of host buffers holds it."""
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    copied: torch.cuda.Event | None
    """Recorded after a GPU's asynchronous copies: the host may read the buffers once it has passed."""


class HostBuffers:
    """Host tensors that receive copies of a nested structure of tensors (a state dict), allocated
    on the first copy and reused by the next ones of the same shapes; pinned for GPU tensors."""

    def __init__(self) -> None:
        self.tensors: list[torch.Tensor] = []
        self._next = 0
        self.gpu: torch.device | None = None
        """The GPU the last fill copied from, asynchronously (see ``GoodState.copied``); None if none."""

    def fill(self, value: Any) -> Any:
        """``value`` with every tensor replaced by its buffer, the copy queued (asynchronous from a GPU)."""
        self._next, self.gpu = 0, None
        return _map_tensors(self._copy, value)

    def _copy(self, tensor: torch.Tensor) -> torch.Tensor:
        index, self._next = self._next, self._next + 1
        if index == len(self.tensors):
            self.tensors.append(self._new(tensor))
        elif (self.tensors[index].shape, self.tensors[index].stride(), self.tensors[index].dtype) != (
                tensor.shape, tensor.stride(), tensor.dtype):
            self.tensors[index] = self._new(tensor)
        if tensor.is_cuda:
            self.gpu = tensor.device
        return self.tensors[index].copy_(tensor.detach(), non_blocking=tensor.is_cuda)

    @staticmethod
    def _new(like: torch.Tensor) -> torch.Tensor:
        return torch.empty_strided(like.shape, like.stride(), dtype=like.dtype, device="cpu", pin_memory=like.is_cuda)


class GoodStates:
    """The two latest good states of a run, copied every ``every`` steps of the run."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LambdaLR, steps_per_epoch: int) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.steps_per_epoch = steps_per_epoch
        self.every = max(1, steps_per_epoch // SNAPSHOTS_PER_EPOCH)
        self.kept: deque[GoodState] = deque(maxlen=2)
        self.buffers = (HostBuffers(), HostBuffers())
        self.epoch, self.offset = 0, 0

    def start_epoch(self, epoch: int, run_steps: int) -> None:
        """The epoch about to run, and the run's steps before it (``passed`` counts from there)."""
        self.epoch, self.offset = epoch, run_steps

    def keep(self, epoch_steps: int) -> None:
        """Copy the current state (``epoch_steps`` steps into the epoch) to the host."""
        step = self.offset + epoch_steps
        if self.kept and self.kept[-1].step == step:
            return
        slot = 1 - self.kept[-1].slot if self.kept else 0  # the older copy's buffers, or the free ones
        buffers = self.buffers[slot]
        state = buffers.fill({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()})
        copied = None
        if buffers.gpu is not None:
            copied = torch.cuda.Event()
            copied.record(torch.cuda.current_stream(buffers.gpu))
        self.kept.append(GoodState(step, self.epoch, epoch_steps, slot, state["model"], state["optimizer"], copied))

    def passed(self, epoch_steps: int) -> None:
        """A step was taken with finite gradients: keep the state when a copy is due."""
        if (self.offset + epoch_steps) % self.every == 0:
            self.keep(epoch_steps)

    def roll_back(self, epoch_steps: int, earlier: int) -> str:
        """Restore the older kept state and cut the learning rate; return what was done (a note).
        ``earlier``: the run's roll-backs before this one (a checkpoint keeps the count); raises
        ``TrainingDiverged`` when they are ``MAX_ROLLBACKS``."""
        factor = schedule_factor(self.scheduler)
        step = self.offset + epoch_steps
        if earlier >= MAX_ROLLBACKS:
            group = self.optimizer.param_groups[0]
            raise TrainingDiverged(
                f"training diverged: in epoch {self.epoch + 1}, step {epoch_steps}, the gradients were not finite "
                f"for {SKIPS_BEFORE_ROLLBACK} steps in a row again after {MAX_ROLLBACKS} roll-backs that cut the "
                f"learning rate to x{factor.scale:g}. Lower optimization.lr (the plan's is "
                f"{group.get('initial_lr', group['lr']):g}), set optimization.grad_clip_norm, or check the data for "
                "NaN or extreme values")
        good = self.kept[0]
        self.kept = deque([good], maxlen=2)  # the newer copy is suspect
        if good.copied is not None:
            good.copied.synchronize()
        self.model.load_state_dict(good.model)
        # A clone: the optimizer keeps tensors already on its device as they are, and would then
        # update the buffers in place (the next copy would overwrite its state).
        self.optimizer.load_state_dict(_map_tensors(torch.Tensor.clone, good.optimizer))
        if earlier == 0:
            factor.dip(ROLLBACK_LR_FACTOR, self.scheduler.last_epoch, self.steps_per_epoch)
            rate = f"learning rate x{ROLLBACK_LR_FACTOR:g}, back to the schedule over one epoch"
        else:
            factor.scale *= ROLLBACK_LR_FACTOR
            rate = f"learning rate x{ROLLBACK_LR_FACTOR:g} for the rest of the run (a roll-back again)"
        # The restored groups hold the copy's rate; the cut applies from the very next step.
        for group, base, rate_at in zip(self.optimizer.param_groups, self.scheduler.base_lrs,
                                        self.scheduler.lr_lambdas):
            group["lr"] = base * rate_at(self.scheduler.last_epoch)
        note = (f"epoch {self.epoch + 1}, step {epoch_steps}: {SKIPS_BEFORE_ROLLBACK} steps in a row had non-finite "
                f"gradients (skipped); rolled back {step - good.step} steps, to the weights of epoch "
                f"{good.epoch + 1} step {good.epoch_step}; {rate} (roll-back {earlier + 1} of at most {MAX_ROLLBACKS})")
        warnings.warn(note)
        return note


def _map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], value: Any) -> Any:
    """``value`` with ``fn`` applied to every tensor, in a fixed order, and every container rebuilt."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_tensors(fn, v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_map_tensors(fn, v) for v in value)
    return value
