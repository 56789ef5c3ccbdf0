"""BatchNorm momentum from the number of steps per epoch.

PyTorch's running statistics follow ``running = (1 - m) * running + m * batch`` with m = 0.1
by default: an average over roughly the last 1/m = 10 steps. When an epoch has only a handful
of steps (small datasets, large batches), those 10 steps reach back across epochs, and the
validation pass sees statistics of weights that no longer exist. The rule keeps the averaging
window to at most half an epoch: m = clamp(2 / steps_per_epoch, 0.1, 0.5).
"""

from __future__ import annotations

from torch import nn

DEFAULT_MOMENTUM = 0.1
MAX_MOMENTUM = 0.5


def bn_momentum_for(steps_per_epoch: int) -> float:
    return round(min(MAX_MOMENTUM, max(DEFAULT_MOMENTUM, 2.0 / max(steps_per_epoch, 1))), 4)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def set_bn_momentum(model: nn.Module, momentum: float | None) -> list[float | None]:
    """Set every BatchNorm's momentum; returns the previous values so ``restore_bn_momentum`` can undo it."""
    layers = batchnorm_layers(model)
    previous = [layer.momentum for layer in layers]
    if momentum is not None:
        for layer in layers:
            layer.momentum = momentum
    return previous


def restore_bn_momentum(model: nn.Module, previous: list[float | None]) -> None:
    for layer, momentum in zip(batchnorm_layers(model), previous):
        layer.momentum = momentum
