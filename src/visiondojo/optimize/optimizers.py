"""Optimizers with decoupled weight decay that never touches norm layers or biases.

Decaying a BatchNorm scale or a bias only fights the normalisation (their scale carries no
capacity to regularise), so they sit in a group with weight_decay=0.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..plan import OptimizationParams

OPTIMIZERS = ("adamw", "sgd")
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if isinstance(module, _NORM_TYPES) or name.endswith("bias") or param.ndim <= 1:
                no_decay.append(param)
            else:
                decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, params: OptimizationParams) -> torch.optim.Optimizer:
    groups = param_groups(model, params.weight_decay)
    if params.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=params.lr, betas=tuple(params.betas))
    if params.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=params.lr, momentum=params.momentum, nesterov=params.momentum > 0)
    raise ConfigError(f"optimizer: {params.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
