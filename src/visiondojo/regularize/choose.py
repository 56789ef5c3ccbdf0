"""find_params' regularization choices that need no training: class balance, and user policies.

The weight decay rate is chosen with the optimizer (``choose.py``); the augmentation policy and
soft labels are left off unless given (the policy search drives them). A saved policy passed
to ``fit`` pins every regularization field, so nothing here changes it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..plan import Plan, RegularizationParams
from .class_balance import choose_class_balance, imbalance_ratio


def choose_regularization(plan: Plan) -> None:
    counts = plan.data.class_counts
    if counts:
        mode, why = choose_class_balance(counts)
        plan.choose("regularization.class_balance", mode, why)
        plan.measurements["imbalance_ratio"] = round(imbalance_ratio(counts), 3)
    reg = plan.regularization
    if not reg.augment and not plan.is_pinned("regularization.augment"):
        plan.evidence.setdefault("regularization.augment", "no augmentation policy given")


def regularization_pins(policy: RegularizationParams | str | Path | dict[str, Any] | None) -> dict[str, Any]:
    """``{'regularization.<field>': value}`` for every field of a saved policy (or the keys of a mapping)."""
    if policy is None:
        return {}
    if isinstance(policy, (str, Path)):
        policy = RegularizationParams.load(policy)
    if isinstance(policy, RegularizationParams):
        values = {f.name: getattr(policy, f.name) for f in dataclasses.fields(policy)}
    elif isinstance(policy, dict):
        values = policy
    else:
        raise ConfigError(f"regularization: expected RegularizationParams, a file path or a mapping, "
                          f"got {type(policy).__name__}")
    return {f"regularization.{k}": v for k, v in values.items()}
