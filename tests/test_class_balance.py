"""Class balance: effective-number loss weights, balanced-sampling weights, the automatic rule,
and the weighted draws of both batchers."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import Dataset

from visiondojo.data.batches import DeviceBatches, LoaderBatches, epoch_generator, make_batches
from visiondojo.data.sources import InMemory, Streamed
from visiondojo.errors import ConfigError
from visiondojo.regularize.class_balance import (
    RESAMPLE_FROM,
    REWEIGHT_FROM,
    choose_class_balance,
    effective_number_weights,
    imbalance_ratio,
    sample_weights,
)

CPU = torch.device("cpu")


# ---------------------------------------------------------------- effective-number loss weights

def by_hand(counts: list[int], beta: float) -> list[float]:
    """1 / E_n with E_n = (1 - beta^n) / (1 - beta), scaled to sum to K (Cui et al. 2019)."""
    raw = [(1 - beta) / (1 - beta**n) for n in counts]
    return [w * len(counts) / sum(raw) for w in raw]


@pytest.mark.parametrize("beta, expected", [
    # E = 632.3, 95.21, 9.955 samples: the rarest class weighs 64x the largest, not 100x.
    (0.999, [0.042160, 0.280000, 2.677840]),
    # E saturates at 1 / (1 - beta) = 10: the two large classes weigh the same.
    (0.9, [0.848568, 0.848591, 1.302841]),
])
def test_effective_number_weights_follow_the_formula(beta, expected):
    counts = [1000, 100, 10]
    weights = effective_number_weights(counts, beta)
    assert weights.dtype == torch.float32 and weights.shape == (3,)
    assert weights.tolist() == pytest.approx(by_hand(counts, beta), rel=1e-6)
    assert weights.tolist() == pytest.approx(expected, abs=1e-5)
    assert float(weights.sum()) == pytest.approx(3.0)


def test_beta_zero_gives_ones():
    assert effective_number_weights([1000, 100, 10], 0.0).tolist() == [1.0, 1.0, 1.0]


def test_empty_classes_get_zero_and_stay_out_of_the_normalization():
    weights = effective_number_weights([10, 0, 5], 0.99)
    assert weights[1] == 0.0
    assert weights[[0, 2]].tolist() == pytest.approx(by_hand([10, 5], 0.99), rel=1e-6)


@pytest.mark.parametrize("beta", [1.0, -0.1, 1.5, math.nan])
def test_beta_outside_the_range_is_a_config_error(beta):
    with pytest.raises(ConfigError, match=r"regularization\.class_balance_beta.*\[0, 1\)"):
        effective_number_weights([10, 5], beta)


# ---------------------------------------------------------------- imbalance ratio and the rule

@pytest.mark.parametrize("counts, ratio", [
    ([1000, 100, 10], 100.0), ([5, 0, 10], 2.0), ([7], 1.0), ([], 1.0), ([0, 0], 1.0),
])
def test_imbalance_ratio(counts, ratio):
    assert imbalance_ratio(counts) == ratio


@pytest.mark.parametrize("counts, mode", [
    ([10, 10], "none"), ([50, 10], "reweight"), ([500, 10], "resample"),
    ([29, 10], "none"), ([30, 10], "reweight"), ([199, 10], "reweight"), ([200, 10], "resample"),
])
def test_choose_class_balance(counts, mode):
    chosen, why = choose_class_balance(counts)
    assert chosen == mode
    assert why.startswith(f"imbalance ratio {imbalance_ratio(counts):.1f} (largest class / smallest)")


def test_choose_class_balance_quotes_the_thresholds():
    assert (REWEIGHT_FROM, RESAMPLE_FROM) == (3.0, 20.0)
    assert choose_class_balance([12, 1]) == ("reweight", (
        "imbalance ratio 12.0 (largest class / smallest): between 3 and 20, "
        "loss weights from the effective number of samples"
    ))
    assert "below 3" in choose_class_balance([1, 1])[1]
    assert "20 or more" in choose_class_balance([50, 1])[1]


# ---------------------------------------------------------------- per-sample drawing weights

def test_sample_weights_multiclass_give_each_class_the_same_total():
    targets = torch.tensor([0, 0, 0, 1, 2, 2])
    weights = sample_weights(targets, [3, 1, 2])
    assert weights.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0, 0.5, 0.5])
    totals = torch.zeros(3).index_add_(0, targets, weights)
    assert totals.tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_sample_weights_multilabel_average_the_positive_labels():
    targets = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 1]], dtype=torch.float32)
    weights = sample_weights(targets, [2, 1, 1])  # 1 / n = 0.5, 1, 1
    # Row 1 averages 0.5 and 1; the unlabelled row 2 gets the labelled rows' mean, (0.5 + 0.75 + 1) / 3.
    assert weights.tolist() == pytest.approx([0.5, 0.75, 0.75, 1.0])


# ---------------------------------------------------------------- balanced sampling in the batchers

def imbalanced(n: int = 1000, rare: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, 1, 1) images holding each sample's index (to read the order back), 90/10 targets."""
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)
    targets = (torch.arange(n) < rare).to(torch.int64)
    return images, targets


def balanced_weights(targets: torch.Tensor) -> torch.Tensor:
    return sample_weights(targets, torch.bincount(targets).tolist())


def epoch(batches: DeviceBatches | LoaderBatches, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sample indices, targets) in the order epoch ``index`` draws them."""
    batches.set_epoch(index)
    images, targets = zip(*batches)
    return torch.cat(images).flatten().to(torch.int64), torch.cat(targets)


def rare_share(batches: DeviceBatches | LoaderBatches, epochs: int) -> tuple[float, int]:
    drawn = torch.cat([epoch(batches, e)[1] for e in range(epochs)])
    return float(drawn.float().mean()), len(drawn)


def device_batches(**kwargs) -> DeviceBatches:
    images, targets = imbalanced()
    return DeviceBatches(InMemory(images, targets, None, "imbalanced"), 100, CPU,
                         shuffle=True, drop_last=True, seed=3, **kwargs)


def test_device_batches_draw_each_class_about_half_the_time():
    _, targets = imbalanced()
    batches = device_batches(sample_weights=balanced_weights(targets))
    assert len(batches) == len(device_batches()) == 10
    share, draws = rare_share(batches, epochs=4)
    assert draws == 4000
    assert 0.45 < share < 0.55  # 0.10 without the weights


def test_device_batches_weighted_order_is_a_function_of_seed_and_epoch():
    _, targets = imbalanced()
    batches = device_batches(sample_weights=balanced_weights(targets))
    first, _ = epoch(batches, 0)
    assert torch.equal(epoch(batches, 0)[0], first)
    assert torch.equal(epoch(device_batches(sample_weights=balanced_weights(targets)), 0)[0], first)
    assert not torch.equal(epoch(batches, 1)[0], first)
    assert len(first.unique()) < len(first)  # drawn with replacement


def test_device_batches_without_weights_keep_the_seeded_permutation():
    order, _ = epoch(device_batches(), 2)
    assert torch.equal(order, torch.randperm(1000, generator=epoch_generator(3, 2)))


def test_sample_weights_need_shuffling_and_one_weight_per_sample():
    images, targets = imbalanced()
    source = InMemory(images, targets, None, "imbalanced")
    with pytest.raises(ValueError, match="shuffled"):
        make_batches(source, 100, CPU, train=False, sample_weights=balanced_weights(targets))
    with pytest.raises(ValueError, match=r"expected \(1000,\)"):
        make_batches(source, 100, CPU, train=True, sample_weights=torch.ones(999))


class IndexImages(Dataset):
    """Streams the in-memory images one at a time, as files would be."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor):
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.targets[index]


def loader_batches(**kwargs) -> DeviceBatches | LoaderBatches:
    images, targets = imbalanced()
    source = Streamed(IndexImages(images, targets), targets, None, "imbalanced", channels=1, size=(1, 1))
    return make_batches(source, 100, CPU, train=True, seed=3, num_workers=0, **kwargs)


def test_loader_batches_draw_each_class_about_half_the_time():
    _, targets = imbalanced()
    batches = loader_batches(sample_weights=balanced_weights(targets))
    assert isinstance(batches, LoaderBatches)
    assert len(batches) == len(loader_batches()) == 10
    share, draws = rare_share(batches, epochs=4)
    assert draws == 4000
    assert 0.45 < share < 0.55
    first, _ = epoch(batches, 0)
    assert torch.equal(epoch(batches, 0)[0], first)
    assert not torch.equal(epoch(batches, 1)[0], first)
