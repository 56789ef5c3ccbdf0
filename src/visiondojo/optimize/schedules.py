"""Learning-rate schedules as LambdaLR factors, resizable mid-run.

``WarmupCosine`` is a picklable callable (LambdaLR saves its ``__dict__`` in ``state_dict``),
so a resumed run continues the exact curve; ``resize`` lets the budget guard shorten the run
and still anneal to the end instead of being cut off at a high learning rate.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from ..plan import OptimizationParams

SCHEDULES = ("cosine", "constant", "plateau")
PLATEAU_FACTOR = 0.2
"""``plateau``: the learning rate is multiplied by this when validation stops improving."""
MAX_WARMUP_SHARE = 0.1


class WarmupCosine:
    """Linear warmup from ~0 to 1 over ``warmup_steps``, then cosine down to ``min_ratio``
    (or constant, for ``constant`` and ``plateau``), all times ``scale``, which the loop lowers
    on a validation plateau for the ``plateau`` schedule and after repeated roll-backs, and
    times a passing ``dip`` (see ``dip``)."""

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float = 0.0, cosine: bool = True):
        self.warmup_steps = warmup_steps
        self.total_steps = max(total_steps, 1)
        self.min_ratio = min_ratio
        self.cosine = cosine
        self.scale = 1.0
        self.dip_depth, self.dip_step, self.dip_steps = 1.0, 0, 1

    def dip(self, depth: float, step: int, steps: int) -> None:
        """From ``step`` on, multiply the rate by ``depth`` rising linearly back to 1 over
        ``steps``: a temporary cut (the first roll-back's) that returns the run to its schedule."""
        self.dip_depth, self.dip_step, self.dip_steps = depth, step, max(steps, 1)

    def _recovery(self, step: int) -> float:
        risen = min(1.0, max(0, step - self.dip_step) / self.dip_steps)
        return self.dip_depth + (1.0 - self.dip_depth) * risen

    def resize(self, total_steps: int) -> None:
        self.total_steps = max(total_steps, self.warmup_steps + 1)

    def __call__(self, step: int) -> float:
        return self.scale * self._recovery(step) * self._shape(step)

    def _shape(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if not self.cosine:
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, params: OptimizationParams,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    if params.schedule not in SCHEDULES:
        raise ConfigError(f"schedule: {params.schedule!r} is not one of {', '.join(SCHEDULES)}")
    total = params.epochs * steps_per_epoch
    # Warmup never takes more than a tenth of the run: it exists to tame the first steps.
    warmup = min(int(round(params.warmup_epochs * steps_per_epoch)), int(MAX_WARMUP_SHARE * total))
    factor = WarmupCosine(warmup, total, params.min_lr_ratio, cosine=params.schedule == "cosine")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def warmup_steps_for(optimizer: str, beta2: float, batch_size: int, steps_per_epoch: int) -> tuple[int, str]:
    """Warmup length before the ``MAX_WARMUP_SHARE`` cap, and why.

    Adaptive optimizers (AdamW, LAMB) need about 2 / (1 - beta2) steps for their second-moment
    estimate to settle (Ma & Yarats 2021: 2,000 steps for beta2 = 0.999). SGD and LARS need
    warmup for large batches (Goyal et al. 2017: 5 epochs at batch 8k); it shrinks in proportion
    below batch 1024.
    """
    if optimizer in ("adamw", "lamb"):
        return int(round(2 / (1 - beta2))), f"2 / (1 - beta2) steps for {optimizer}'s second moments"
    epochs = 5 * min(1.0, batch_size / 1024)
    return int(round(epochs * steps_per_epoch)), f"{epochs:.2g} epochs at batch {batch_size} for {optimizer}"


def schedule_factor(scheduler: torch.optim.lr_scheduler.LambdaLR) -> WarmupCosine:
    return scheduler.lr_lambdas[0]  # type: ignore[return-value]
