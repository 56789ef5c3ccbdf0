"""Decoupled weight decay as its own step, with per-group rates and an optional adaptive rule.

Decay is applied by an optimizer step pre-hook, ``p <- p * (1 - lr * rate)``, before the gradient
update and never through it (Loshchilov & Hutter 2019): momentum, Adam's second moments and
LAMB/LARS trust ratios never see it. Each parameter group carries its own rate under
``decay_rate`` (not ``decoupled_weight_decay``: torch's Adam uses that key for a flag); norm
layers and biases sit in a group with rate 0 (decaying a scale that normalisation undoes only
fights the normalisation). Because it is a step hook, a
step that the fp16 GradScaler skips also skips the decay.

The adaptive rule ("decay the weights dynamically and separately from back-prop"). Under
decoupled decay a weight that a normalisation layer makes scale-invariant settles into a
rotational equilibrium where decay and gradient growth balance: its relative update per step,
rho = ||delta w|| / ||w||, tends to rho* = sqrt(2 lr rate / (1 + momentum)) (Wan et al. 2021; Kosson
et al. 2024), whatever its initial norm. Layers reach it at different times: one whose weights
are too large for its updates (rho < rho*) learns slowly in angle, one whose weights are too
small (rho > rho*) is noisy. Every ``ADAPT_EVERY`` steps the rule measures rho for each decayed
tensor on one real step (a snapshot before the step, the difference after), keeps an EMA, and
sets that tensor's decay to rate * (rho* / rho)^2, clamped to [rate / MAX_SCALE, rate * MAX_SCALE]:
decay grows where the weights are too large and shrinks where they are too small, so each layer
reaches its equilibrium sooner. The measurement costs one copy of the decayed weights every
``ADAPT_EVERY`` steps and one host sync.
"""

from __future__ import annotations

import math
from typing import Any

import torch

ADAPT_EVERY = 20
"""Steps between measurements of the relative update."""
RHO_EMA = 0.7
"""Weight of the previous estimate in the EMA of rho."""
MAX_SCALE = 4.0
"""Adaptive decay stays within [rate / MAX_SCALE, rate * MAX_SCALE] per tensor."""


class DecoupledWeightDecay:
    """Attach decoupled decay of ``rate`` to ``optimizer`` (groups marked ``decay=False`` get 0).

    ``state_dict``/``load_state_dict`` carry the adaptive rule's per-tensor state for an exact resume.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, rate: float, *, adaptive: bool = False):
        self.optimizer = optimizer
        self.rate = rate
        self.adaptive = adaptive and rate > 0
        for group in optimizer.param_groups:
            group["decay_rate"] = rate if group.get("decay", True) else 0.0
        self.decayed = [p for g in optimizer.param_groups if g["decay_rate"] for p in g["params"]]
        self.scales = [1.0] * len(self.decayed)
        self.rho: list[float | None] = [None] * len(self.decayed)
        self.steps = 0
        self._snapshot: list[torch.Tensor] | None = None
        optimizer.register_step_pre_hook(self._before_step)
        if self.adaptive:
            optimizer.register_step_post_hook(self._after_step)

    @torch.no_grad()
    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        index = 0
        for group in optimizer.param_groups:
            rate = group["decay_rate"]
            if not rate:
                continue
            params = group["params"]
            scales = self.scales[index:index + len(params)]
            index += len(params)
            if self.adaptive:
                torch._foreach_mul_(params, [1.0 - group["lr"] * rate * s for s in scales])
            else:
                torch._foreach_mul_(params, 1.0 - group["lr"] * rate)
        if self.adaptive and self.steps % ADAPT_EVERY == 0:
            self._snapshot = [p.detach().clone() for p in self.decayed]

    @torch.no_grad()
    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.steps += 1
        if self._snapshot is None:
            return
        updates = torch._foreach_sub(self.decayed, self._snapshot)
        self._snapshot = None
        update_norms = torch.stack(torch._foreach_norm(updates)).float()
        weight_norms = torch.stack(torch._foreach_norm(self.decayed)).float()
        rho = (update_norms / weight_norms.clamp_min(1e-12)).tolist()  # the one host sync
        index = 0
        for group in optimizer.param_groups:
            rate = group["decay_rate"]
            if not rate:
                continue
            target = equilibrium_rho(group["lr"], rate, group.get("momentum", 0.0))
            for i in range(index, index + len(group["params"])):
                self._update_scale(i, rho[i], target)
            index += len(group["params"])

    def _update_scale(self, i: int, rho: float, target: float) -> None:
        if not (math.isfinite(rho) and rho > 0 and target > 0):
            return
        previous = self.rho[i]
        self.rho[i] = rho if previous is None else RHO_EMA * previous + (1 - RHO_EMA) * rho
        self.scales[i] = min(MAX_SCALE, max(1 / MAX_SCALE, (target / self.rho[i]) ** 2))

    def summary(self) -> dict[str, float]:
        """Spread of the per-tensor decay multipliers, for the run's notes."""
        if not self.scales:
            return {}
        ordered = sorted(self.scales)
        return {"min": ordered[0], "median": ordered[len(ordered) // 2], "max": ordered[-1]}

    def state_dict(self) -> dict[str, Any]:
        return {"scales": list(self.scales), "rho": list(self.rho), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scales, self.rho, self.steps = list(state["scales"]), list(state["rho"]), int(state["steps"])


def equilibrium_rho(lr: float, rate: float, momentum: float = 0.0) -> float:
    """Relative update per step of a scale-invariant weight at rotational equilibrium."""
    return math.sqrt(2 * lr * rate / (1 + momentum))
