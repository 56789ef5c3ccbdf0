"""Optimizers over two parameter groups: weights that weight decay may shrink, and the rest.

Decaying a BatchNorm scale or a bias only fights the normalisation (their scale carries no
capacity to regularise), so they sit in a group marked ``decay=False``. The optimizers
themselves never decay: ``regularize/weight_decay.py`` applies decoupled decay as its own step
(Loshchilov & Hutter 2019), the same way for every optimizer, so it never passes through
momentum, Adam's moments or a LAMB/LARS trust ratio.

Which optimizer (``choose_optimizer``): AdamW by default; LAMB (You et al. 2020) or LARS (You
et al. 2017) from timm for large batches, where per-layer trust ratios keep big steps stable;
SGD with Nesterov momentum for BatchNorm conv nets on long schedules, where it is known to
generalise better than adaptive methods (Wilson et al. 2017; Keskar & Socher 2017). Detectors
follow the same rule, measured rather than assumed from their usual SGD recipes: on 7-epoch
SmallFCOS runs (fashion-scenes, 600 s), AdamW scored 0.408 mAP and SGD, with its own range test,
0.261 (``bench/detection.py``, contenders visiondojo and visiondojo-sgd).
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from ..errors import ConfigError
from ..plan import OptimizationParams

OPTIMIZERS = ("adamw", "sgd", "lamb", "lars")
LARGE_BATCH = 2048
LONG_SCHEDULE_EPOCHS = 30
DEFAULT_WEIGHT_DECAY = {"adamw": 0.05, "lamb": 0.02, "sgd": 5e-4, "lars": 5e-4}
REFERENCE_BATCH = 256
DEFAULT_LR = {"adamw": 1e-3, "lamb": 1e-3, "sgd": 0.1, "lars": 0.1}
"""Learning rate at ``REFERENCE_BATCH`` when no range test runs: the momentum methods' is ResNet's
0.1 at 256 (He et al. 2016), scaled linearly with the batch (Goyal et al. 2017); the adaptive
ones' is Adam's usual 1e-3, which their per-parameter step normalisation keeps valid across batches."""
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def param_groups(model: nn.Module) -> list[dict]:
    """[decayed weights, norms + biases]; ``decay`` tells the weight-decay step which is which."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if isinstance(module, _NORM_TYPES) or name.endswith("bias") or param.ndim <= 1:
                no_decay.append(param)
            else:
                decay.append(param)
    groups = [{"params": decay, "decay": True, "weight_decay": 0.0}]
    if no_decay:
        groups.append({"params": no_decay, "decay": False, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, params: OptimizationParams) -> torch.optim.Optimizer:
    name = params.optimizer
    if name not in OPTIMIZERS:
        raise ConfigError(f"optimizer: {name!r} is not one of {', '.join(OPTIMIZERS)}")
    groups = param_groups(model)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=params.lr, betas=tuple(params.betas), weight_decay=0.0)
    if name == "lamb":
        return _timm_optimizer("Lamb")(groups, lr=params.lr, betas=tuple(params.betas), weight_decay=0.0)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=params.lr, momentum=params.momentum, nesterov=params.momentum > 0)
    return _timm_optimizer("Lars")(groups, lr=params.lr, momentum=params.momentum, nesterov=params.momentum > 0)


def default_lr(optimizer: str, batch_size: int) -> tuple[float, str]:
    """(learning rate, why) for ``optimizer`` at ``batch_size`` without a range test."""
    if optimizer in ("sgd", "lars"):
        lr = DEFAULT_LR[optimizer] * batch_size / REFERENCE_BATCH
        return float(f"{lr:.3g}"), (f"{DEFAULT_LR[optimizer]:g} at batch {REFERENCE_BATCH}, scaled linearly to "
                                    f"batch {batch_size} (Goyal et al. 2017)")
    return DEFAULT_LR[optimizer], f"{optimizer}'s usual {DEFAULT_LR[optimizer]:g}"


def _timm_optimizer(name: str) -> type[torch.optim.Optimizer]:
    if not timm_available():
        raise ConfigError(f"optimizer: {name.lower()} needs timm: pip install 'visiondojo[timm]'")
    import timm.optim

    return getattr(timm.optim, name)


def timm_available() -> bool:
    return importlib.util.find_spec("timm") is not None


def is_batchnorm_convnet(model: nn.Module) -> bool:
    modules = list(model.modules())
    return any(isinstance(m, nn.Conv2d) for m in modules) and any(isinstance(m, nn.BatchNorm2d) for m in modules)


def choose_optimizer(model: nn.Module, batch_size: int, epochs: int | None) -> tuple[str, str]:
    """(optimizer name, why) for this model, batch and schedule length (None: not known in advance)."""
    sgd_family = is_batchnorm_convnet(model) and epochs is not None and epochs >= LONG_SCHEDULE_EPOCHS
    if batch_size >= LARGE_BATCH:
        if not timm_available():
            return "adamw", f"batch {batch_size} is large, but LAMB/LARS need timm (not installed): AdamW"
        if sgd_family:
            return "lars", f"batch {batch_size} >= {LARGE_BATCH} on a BatchNorm conv net: LARS trust ratios"
        return "lamb", f"batch {batch_size} >= {LARGE_BATCH}: LAMB's per-layer trust ratios keep large steps stable"
    if sgd_family:
        return "sgd", (f"BatchNorm conv net on a long schedule ({epochs} epochs >= {LONG_SCHEDULE_EPOCHS}): "
                       "SGD with Nesterov momentum generalises better than adaptive methods")
    if is_batchnorm_convnet(model):
        length = f"{epochs} epochs is short" if epochs is not None else "the run's length is open"
        return "adamw", f"default: AdamW ({length}; SGD needs a long schedule to catch up)"
    return "adamw", "default: AdamW"
