"""What a meta-learner's time would have bought as training, and the gate that weighs it.

Under a time budget every second a search or probe spends comes off the run. Its time is worth
the error the run would have shed by training that much longer; a meta-learner runs only when its
expected gain is larger. Both are relative error reductions (a share of the run's error), so the
error itself, unknown before training, cancels out.

The learning curve: error falls as a power of the epochs trained, err ∝ epochs^-α, with α
measured on Fashion-MNIST runs of visiondojo's cosine schedule (FMNISTResNet, full data):

| epochs | test error | α between neighbours |
|---|---:|---:|
| 4 → 5 | 10.65 % → 9.12 % | 0.70 |
| 8.5 → 12 | 7.08 % → 6.86 % | 0.09 |
| 12 → 22 (with TrivialAugment at 22) | 6.86 % → 6.24 % | 0.16 |

Early epochs buy much; past ten the curve is nearly flat. ``epoch_exponent`` follows that shape.
Without a budget, or with epochs the user pinned, time buys no accuracy (early stopping or the
pin decides the length), so a meta-learner's cost is zero there.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

EXPONENT_POINTS = ((4.5, 0.7), (10.0, 0.15))
"""(epochs, α): α of the learning curve near that length; log-interpolated between, flat outside."""


def epoch_exponent(epochs: float) -> float:
    """α of err ∝ epochs^-α around ``epochs`` (see the table above)."""
    (e0, a0), (e1, a1) = EXPONENT_POINTS
    if epochs <= e0:
        return a0
    if epochs >= e1:
        return a1
    share = math.log(epochs / e0) / math.log(e1 / e0)
    return a0 + share * (a1 - a0)


def training_gain(epochs: float, extra_epochs: float) -> float:
    """Share of the error that ``extra_epochs`` more training would remove from a run of ``epochs``."""
    if extra_epochs <= 0 or epochs <= 0:
        return 0.0
    alpha = epoch_exponent(epochs)
    return 1.0 - (epochs / (epochs + extra_epochs)) ** alpha


@dataclass
class CostGate:
    """Whether a meta-learner pays for its time, with both sides of the comparison."""

    name: str
    expected_gain: float
    """Relative error reduction expected from the meta-learner."""
    cost: float
    """Relative error reduction its time would have bought as training."""
    epochs: float
    spent_epochs: float
    runs: bool
    why: str

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        for key in ("expected_gain", "cost", "epochs", "spent_epochs"):
            values[key] = round(values[key], 4)
        return values


def cost_gate(name: str, expected_gain: float, epochs: float, spent_epochs: float, *, time_buys_accuracy: bool,
              gain_basis: str) -> CostGate:
    """Run ``name`` only when ``expected_gain`` exceeds what ``spent_epochs`` more of a run of ``epochs``
    would gain; ``gain_basis`` says where the expected gain comes from (for the plan's evidence)."""
    if not time_buys_accuracy:
        return CostGate(name, expected_gain, 0.0, epochs, spent_epochs, True,
                        f"{name}: no time budget on the run's length, so its time costs no accuracy")
    cost = training_gain(epochs, spent_epochs)
    runs = expected_gain > cost
    why = (f"{name}: expected to remove {expected_gain:.1%} of the error ({gain_basis}); its time, "
           f"{spent_epochs:.1f} of {epochs:.1f} epochs, would remove {cost:.1%} as training "
           f"(err ∝ epochs^-{epoch_exponent(epochs):.2f}): " + ("runs" if runs else "skipped"))
    return CostGate(name, expected_gain, cost, epochs, spent_epochs, runs, why)
