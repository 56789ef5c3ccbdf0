"""Representation pretraining: feature-layer discovery, the two losses by hand, and pretrain itself."""

from __future__ import annotations

import math
import time

import pytest
import timm
import torch
import torchvision
from torch import nn

from visiondojo.augment import Augmenter
from visiondojo.data.batches import Normalizer
from visiondojo.data.sources import DataOptions, as_source
from visiondojo.engine.epoch import TrainingDiverged
from visiondojo.engine.runtime import Runtime
from visiondojo.errors import ModelError
from visiondojo.plan import DataParams, RuntimeParams, SSLParams
from visiondojo.ssl.backbone import FeatureTap, feature_dim, find_feature_layer
from visiondojo.ssl.losses import barlow_twins, nt_xent
from visiondojo.ssl.pretrain import pretrain, view_ops

from conftest import TinyNet, make_problem, state_dicts_equal

SIZE = 8


# ------------------------------------------------------------------------------------ feature layer


@pytest.mark.parametrize("build", [
    lambda: torchvision.models.resnet18(num_classes=3),
    lambda: timm.create_model("resnet10t", pretrained=False, num_classes=3),
], ids=["torchvision-resnet18", "timm-resnet10t"])
def test_feature_layer_of_library_classifiers(build):
    model = build()
    assert find_feature_layer(model) == "fc"
    assert feature_dim(model, "fc", 3, 32, 32) == 512
    assert model.training  # the dry forward's eval mode is undone


def test_feature_layer_of_a_custom_module_and_overrides():
    model = TinyNet()  # Conv, ReLU, AdaptiveAvgPool2d((2, 4)), Flatten, Linear(64, 4)
    assert find_feature_layer(model) == "4"
    assert feature_dim(model, "4", 1, SIZE, SIZE) == 64
    assert find_feature_layer(model, "3") == "3"  # an override that exists is taken as given
    assert feature_dim(model, "3", 1, SIZE, SIZE) == 8  # Flatten's input (N, 8, 2, 4), pooled over space


def test_a_wrong_override_names_close_candidates():
    model = torchvision.models.resnet18(num_classes=3)
    with pytest.raises(ModelError) as error:
        find_feature_layer(model, "layer4.1.conv")
    message = str(error.value)
    assert "'layer4.1.conv'" in message and "layer4.1.conv1" in message and "feature_layer" in message


def test_a_model_without_a_head_asks_for_the_feature_layer():
    with pytest.raises(ModelError, match="feature_layer"):
        find_feature_layer(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten()))


def test_feature_tap_flattens_pools_and_keeps_the_graph():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 3, 1),  # a 1x1-conv head
                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert find_feature_layer(model) == "2"
    x = torch.randn(5, 1, SIZE, SIZE)
    with FeatureTap(model, "2") as tap:
        model(x)
        features = tap.features
    assert features.shape == (5, 6)
    torch.testing.assert_close(features, model[1](model[0](x)).mean(dim=(2, 3)))
    features.sum().backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0
    assert not model[2]._forward_pre_hooks  # removed on exit

    flat = TinyNet()
    with FeatureTap(flat, "4") as tap:
        flat(x)
        assert tap.features.shape == (5, 64)


def test_feature_tap_removes_its_hook_on_errors():
    model = TinyNet()
    with pytest.raises(RuntimeError, match="boom"):
        with FeatureTap(model, "4"):
            raise RuntimeError("boom")
    assert not model[4]._forward_pre_hooks
    with FeatureTap(model, "4") as tap, pytest.raises(ModelError, match="not called"):
        tap.features  # noqa: B018 - no forward yet


# ------------------------------------------------------------------------------------ losses


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / (math.hypot(*a) * math.hypot(*b))


def _nt_xent_by_hand(z1: list[list[float]], z2: list[list[float]], temperature: float) -> float:
    """One anchor at a time: -log(exp(s_pos) / sum over the other 2N - 1 of exp(s))."""
    views = z1 + z2
    n = len(z1)
    total = 0.0
    for k, anchor in enumerate(views):
        partner = (k + n) % (2 * n)
        others = [math.exp(_cosine(anchor, views[j]) / temperature) for j in range(2 * n) if j != k]
        total -= math.log(math.exp(_cosine(anchor, views[partner]) / temperature) / sum(others))
    return total / (2 * n)


def test_nt_xent_matches_hand_computed_values():
    # Orthogonal images, each view scaled differently: positives at cosine 1, negatives at 0.
    z1, z2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    assert nt_xent(z1, z2, 0.5).item() == pytest.approx(math.log(1 + 2 * math.exp(-2.0)), rel=1e-6)

    a, b = [[1.0, 2.0], [3.0, -1.0]], [[2.0, 1.0], [-1.0, 1.0]]
    expected = _nt_xent_by_hand(a, b, 0.3)
    assert nt_xent(torch.tensor(a), torch.tensor(b), 0.3).item() == pytest.approx(expected, rel=1e-6)
    assert nt_xent(torch.tensor(b), torch.tensor(a), 0.3).item() == pytest.approx(expected, rel=1e-6)  # symmetric


def _barlow_by_hand(z1: list[list[float]], z2: list[list[float]], weight: float, eps: float = 1e-5) -> float:
    n, d = len(z1), len(z1[0])

    def column(z: list[list[float]], i: int) -> list[float]:
        values = [row[i] for row in z]
        mean = sum(values) / n
        spread = math.sqrt(sum((v - mean) ** 2 for v in values) / n + eps)
        return [(v - mean) / spread for v in values]

    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(x * y for x, y in zip(column(z1, i), column(z2, j))) / n
            loss += (1 - c) ** 2 if i == j else weight * c ** 2
    return loss


def test_barlow_twins_matches_hand_computed_values():
    a, b = [1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0]  # mean 0, variance 1, uncorrelated
    z = torch.tensor([a, b]).T
    assert barlow_twins(z, z).item() == pytest.approx(0.0, abs=1e-6)  # C = I
    assert barlow_twins(z, -z).item() == pytest.approx(8.0, rel=1e-4)  # C = -I: 2 * (1 - (-1))^2
    # z2 = (a, a): C = [[1, 1], [0, 0]] -> (1 - 1)^2 + (1 - 0)^2 + lambda * (1^2 + 0^2); default lambda = 1/D
    z2 = torch.tensor([a, a]).T
    assert barlow_twins(z, z2).item() == pytest.approx(1.5, rel=1e-4)
    assert barlow_twins(z, z2, off_diagonal_weight=0.25).item() == pytest.approx(1.25, rel=1e-4)

    z1, z2 = [[1.0, 2.0], [2.0, 0.0], [4.0, 1.0]], [[0.0, 1.0], [1.0, 3.0], [3.0, 2.0]]
    result = barlow_twins(torch.tensor(z1), torch.tensor(z2), off_diagonal_weight=0.1).item()
    assert result == pytest.approx(_barlow_by_hand(z1, z2, 0.1), rel=1e-5)


# ------------------------------------------------------------------------------------ pretrain


@pytest.fixture(scope="module")
def setup():
    images, labels = make_problem(256, size=SIZE, seed=3)
    source = as_source((images, labels), DataOptions(), role="train")
    runtime = Runtime(RuntimeParams())
    data = DataParams(channels=1, height=SIZE, width=SIZE, mean=[0.35], std=[0.3], pixel_scale=1.0)
    return source, Normalizer(data, runtime.device), runtime


def _pretrain(setup, model: nn.Module, method: str, epochs: int = 10, seed: int = 0, **kwargs):
    source, normalizer, runtime = setup
    params = SSLParams(pretrain=method, pretrain_epochs=epochs, pretrain_batch_size=64, pretrain_lr=0.01)
    return pretrain(model, source, params, normalizer, runtime, channels=1, height=SIZE, width=SIZE,
                    seed=seed, **kwargs)


def test_view_ops_fit_the_channels():
    gray, rgb = {op.name for op in view_ops(1)}, {op.name for op in view_ops(3)}
    assert rgb - gray == {"saturation", "hue"}
    assert {"zoom", "translate", "hflip", "brightness", "contrast", "blur"} <= gray
    pixels = torch.rand(4, 3, SIZE, SIZE)
    views, _ = Augmenter(view_ops(3))(pixels, torch.Generator().manual_seed(0))
    assert views.shape == pixels.shape and not torch.equal(views, pixels)


@pytest.mark.parametrize("method, drop", [("simclr", 0.25), ("barlow_twins", 0.15)])
def test_pretrain_learns_in_place_and_keeps_the_architecture(setup, method, drop):
    """Measured over seeds 0-3: SimCLR drops by 0.42-0.56 (from ~4.85, log(127) = 4.84 is chance),
    Barlow Twins by 29-37 % (from ~95); the thresholds keep about half of that as headroom."""
    model = TinyNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = _pretrain(setup, model, method)
    assert (result.method, result.epochs, result.steps, len(result.losses)) == (method, 10, 40, 10)
    assert result.stopped == "completed the planned epochs"
    assert (result.feature_layer, result.feature_dim) == ("4", 64)
    if method == "simclr":
        assert result.losses[-1] < result.losses[0] - drop
    else:
        assert result.losses[-1] < (1 - drop) * result.losses[0]
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(after[k].shape == before[k].shape for k in before)
    assert not torch.equal(after["0.weight"], before["0.weight"])  # the backbone learned
    assert torch.equal(after["4.weight"], before["4.weight"])  # the head gets no gradient, so no decay either
    assert model.training

    again = TinyNet()
    _pretrain(setup, again, method)
    assert state_dicts_equal(model, again)


def test_a_passed_deadline_stops_after_one_step(setup):
    model = TinyNet()
    model.eval()
    result = _pretrain(setup, model, "simclr", deadline=time.perf_counter() - 1.0)
    assert (result.steps, result.epochs, len(result.losses)) == (1, 0, 1)
    assert "time" in result.stopped
    assert not model.training  # the caller's mode comes back


def test_a_nan_loss_raises_training_diverged(setup):
    model = TinyNet()
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match="pretrain_lr"):
        _pretrain(setup, model, "barlow_twins", epochs=1)
