"""Dropout and stochastic depth, set for a run and undone afterwards.

The model handed back to the user must be exactly their architecture: same modules, same
``state_dict`` keys, same behaviour. So nothing here adds or replaces a module. Existing layers
get their rate changed (and their original rate recorded); a model without any dropout gets it
through a forward pre-hook on its classifier head, which lives outside the module tree and the
state dict. ``DropoutChanges.restore()`` puts every rate back and removes every hook.

Stochastic depth keeps the model's own per-block profile: timm's ``drop_path_rate`` builds
rates that grow linearly with depth (deep blocks are dropped more often, since the early ones
compute features everything else depends on). When the layers hold different rates they are
scaled together so that the largest becomes the requested rate; when they are all equal (all
zero included) each one is set to the requested rate.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..errors import ConfigError
from ..models.adapt import find_head

DROPOUT_TYPES: tuple[type[nn.Module], ...] = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)
"""Layers whose rate is the attribute ``p``; subclasses (timm's among them) match too."""

_RateLayer = tuple[nn.Module, str]
"""A layer and the name of the attribute that holds its drop rate."""


@dataclass
class _RateChange:
    """One attribute overwritten, with the value to put back."""

    module: nn.Module
    attribute: str
    original: float

    def undo(self) -> None:
        setattr(self.module, self.attribute, self.original)


@dataclass
class DropoutChanges:
    """What ``apply_dropout`` changed on a model, so it can be described and undone."""

    rates: list[_RateChange] = field(default_factory=list)
    hooks: list[RemovableHandle] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def restore(self) -> None:
        """Put every original rate back and remove every inserted hook; safe to call twice."""
        for change in reversed(self.rates):
            change.undo()
        for hook in self.hooks:
            hook.remove()
        self.rates.clear()
        self.hooks.clear()

    def describe(self) -> list[str]:
        """One human-readable line per decision, for the plan's evidence (empty when nothing was asked)."""
        return list(self.lines)


def apply_dropout(model: nn.Module, dropout: float | None, stochastic_depth: float | None) -> DropoutChanges:
    """Set the dropout and drop-path rates of ``model`` in place; ``None`` leaves that part alone.

    Both rates are validated before anything changes, so a bad value never leaves the model
    half-modified. Call ``restore()`` on the result before applying new rates to the same model:
    a second call without it would stack a second hook on a model without dropout layers.
    """
    check_rate(dropout, "dropout")
    check_rate(stochastic_depth, "stochastic_depth")
    changes = DropoutChanges()
    if dropout is not None:
        _apply_dropout_rate(model, dropout, changes)
    if stochastic_depth is not None:
        _apply_drop_path_rate(model, stochastic_depth, changes)
    return changes


def check_rate(rate: float | None, name: str) -> None:
    """ConfigError naming ``regularization.<name>`` unless ``rate`` is None or in [0, 1)."""
    # A rate of 1 drops everything (and divides by zero when rescaling), so the interval is open.
    if rate is not None and not 0.0 <= rate < 1.0:
        raise ConfigError(f"regularization.{name} = {rate} is outside [0, 1); use a rate such as 0.1, "
                          "or null to leave the model's own rate")


# --- dropout -------------------------------------------------------------------------------------

def _apply_dropout_rate(model: nn.Module, rate: float, changes: DropoutChanges) -> None:
    layers = [(m, "p") for m in model.modules() if isinstance(m, DROPOUT_TYPES)]
    if layers:
        changes.rates += _set_rates(layers, [rate] * len(layers))
        changes.lines.append(f"set dropout p={rate:g} on {_count(layers, 'dropout layer')}")
        return
    head = find_head(model)
    if head is None:
        changes.lines.append(f"dropout p={rate:g} not applied: the model has no dropout layers and no "
                             "classifier head (nn.Linear or 1x1 nn.Conv2d) to insert one before")
        return
    name, module = head
    changes.hooks.append(module.register_forward_pre_hook(functools.partial(_drop_input, p=rate)))
    changes.lines.append(f"inserted dropout p={rate:g} before the head {name or type(module).__name__!r} "
                         "(the model had none)")


def _drop_input(module: nn.Module, args: tuple[Any, ...], *, p: float) -> tuple[Any, ...]:
    """Forward pre-hook: dropout on the head's first input, active only while the head trains.

    A hook rather than an inserted ``nn.Dropout`` keeps the module tree and the ``state_dict``
    keys exactly the user's, and removing it restores the original forward.
    """
    if not args:
        return args
    return (F.dropout(args[0], p, training=module.training), *args[1:])


# --- stochastic depth ----------------------------------------------------------------------------

def _apply_drop_path_rate(model: nn.Module, rate: float, changes: DropoutChanges) -> None:
    kinds = _stochastic_depth_kinds()
    layers = [(m, attr) for m in model.modules() for kind, attr in kinds if isinstance(m, kind)]
    if not layers:
        changes.lines.append(f"drop-path rate {rate:g} not applied: the model has no stochastic-depth layers "
                             "(a timm model built with drop_path_rate=0 has none)")
        return
    current = [float(getattr(m, attr)) for m, attr in layers]
    largest = max(current)
    if min(current) == largest:
        changes.rates += _set_rates(layers, [rate] * len(layers))
        changes.lines.append(f"set drop-path rate {rate:g} on {_count(layers, 'stochastic-depth layer')}")
        return
    changes.rates += _set_rates(layers, [r * rate / largest for r in current])
    changes.lines.append(f"scaled the drop-path rates of {_count(layers, 'stochastic-depth layer')} by "
                         f"{rate / largest:.3g} so the largest is {rate:g} (was {largest:.3g}), keeping "
                         "the model's per-block profile")


@functools.cache
def _stochastic_depth_kinds() -> tuple[tuple[type[nn.Module], str], ...]:
    """Stochastic-depth layer classes and their rate attribute; timm's only when it is installed."""
    from torchvision.ops import StochasticDepth

    kinds: list[tuple[type[nn.Module], str]] = [(StochasticDepth, "p")]
    try:
        from timm.layers import DropPath
    except ImportError:
        return tuple(kinds)
    kinds.append((DropPath, "drop_prob"))
    return tuple(kinds)


# --- shared --------------------------------------------------------------------------------------

def _set_rates(layers: list[_RateLayer], rates: list[float]) -> list[_RateChange]:
    """Overwrite each layer's rate attribute; return the records that undo it."""
    changes = [_RateChange(module, attr, getattr(module, attr)) for module, attr in layers]
    for (module, attr), rate in zip(layers, rates):
        setattr(module, attr, rate)
    return changes


def _count(layers: list[_RateLayer], noun: str) -> str:
    return f"{len(layers)} {noun}{'' if len(layers) == 1 else 's'}"
