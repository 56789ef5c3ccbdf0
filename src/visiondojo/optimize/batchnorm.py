"""BatchNorm momentum from the number of steps per epoch.

PyTorch's running statistics follow ``running = (1 - m) * running + m * batch`` with m = 0.1
by default: an average over roughly the last 1/m = 10 steps. When an epoch has only a handful
of steps (small datasets, large batches), those 10 steps reach back across epochs, and the
validation pass sees statistics of weights that no longer exist. The rule keeps the averaging
window to at most half an epoch: m = clamp(2 / steps_per_epoch, 0.1, 0.5).

Under data-parallel training each rank's BatchNorm normalizes its own share of the batch. Below
16 images per GPU that hurts: Wu & He (2018, Group Normalization, table 2) measured ResNet-50's
ImageNet error with BatchNorm at 23.6 % with 32 images per GPU, 23.7 % with 16, 24.8 % with 8,
27.3 % with 4 and 34.7 % with 2. ``sync_batchnorm_rule`` synchronizes the statistics over the
ranks below 16 per GPU; ``synchronized_batchnorm`` does it for one training, reversibly.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

SYNC_BN_BELOW = 16
"""Images per GPU below which BatchNorm's statistics are synchronized over the ranks (see above)."""
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


def sync_batchnorm_rule(device_type: str, per_rank_batch: int) -> tuple[bool, str]:
    """Whether to synchronize BatchNorm over the ranks, with its evidence (see the module docstring)."""
    if device_type != "cuda":
        return False, (f"{device_type}: SyncBatchNorm runs on GPUs only; each rank normalizes its share of "
                       f"{per_rank_batch} images and rank 0's running statistics reach every rank after each epoch")
    if per_rank_batch >= SYNC_BN_BELOW:
        return False, (f"{per_rank_batch} images per GPU: BatchNorm's own statistics are as good as synchronized "
                       "ones (Wu & He 2018: 23.7 % ImageNet error at 16 per GPU, 23.6 % at 32)")
    return True, (f"{per_rank_batch} images per GPU: BatchNorm over so few is noisy (Wu & He 2018: 24.8 % ImageNet "
                  "error at 8 per GPU, 27.3 % at 4, 34.7 % at 2, against 23.6 % at 32); statistics synchronized "
                  "over the ranks")


def synchronized_batchnorm(model: nn.Module) -> Callable[[], None]:
    """Swap every BatchNorm of ``model`` for a ``SyncBatchNorm`` holding the same parameters and
    running statistics (the same tensors: the optimizer and the checkpoints see no change); returns
    the function that puts the original layers back, so the trained model is the user's architecture.
    """
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
                parent.add_module(name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
                swapped.append((parent, name, child))

    def restore() -> None:
        for parent, name, child in swapped:
            parent.add_module(name, child)

    return restore
