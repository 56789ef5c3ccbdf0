"""SyncBatchNorm under torchrun on GPUs: the rule that decides it and the reversible swap.

Synchronized statistics need CUDA (PyTorch's SyncBatchNorm refuses CPU tensors in training), so
the swap itself is checked here for what it must keep: the same parameter and statistics tensors
(the optimizer, DDP and the checkpoints see no change) and the user's layers back afterwards."""

from __future__ import annotations

import torch
from torch import nn

from visiondojo.optimize.batchnorm import SYNC_BN_BELOW, sync_batchnorm_rule, synchronized_batchnorm


def test_the_rule_synchronizes_small_shares_on_gpus_only() -> None:
    sync, why = sync_batchnorm_rule("cuda", 8)
    assert sync is True and "8 images per GPU" in why and "24.8 %" in why
    assert sync_batchnorm_rule("cuda", SYNC_BN_BELOW)[0] is False
    sync, why = sync_batchnorm_rule("cpu", 4)
    assert sync is False and "GPUs only" in why


def test_the_swap_shares_every_tensor_and_is_undone() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.ReLU(), nn.BatchNorm2d(4)))
    originals = [model[1], model[2][1]]
    before = model.state_dict()
    tensors = {name: value.data_ptr() for name, value in before.items()}
    restore = synchronized_batchnorm(model)
    assert isinstance(model[1], nn.SyncBatchNorm) and isinstance(model[2][1], nn.SyncBatchNorm)
    assert {name: value.data_ptr() for name, value in model.state_dict().items()} == tensors
    assert model[1].weight is originals[0].weight and model[2][1].running_var is originals[1].running_var
    with torch.no_grad():  # an update through the swapped layers is an update of the user's
        model[1].weight.add_(1.0)
        model[1].num_batches_tracked.add_(3)
    restore()
    assert model[1] is originals[0] and model[2][1] is originals[1]
    assert float(originals[0].weight.detach().mean()) == 2.0 and int(originals[0].num_batches_tracked) == 3
    assert model.state_dict().keys() == before.keys()
