"""Dropout and stochastic depth: rates set, hooks inserted, and everything undone by ``restore``."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.ops import StochasticDepth

from visiondojo.errors import ConfigError
from visiondojo.regularize.dropout import apply_dropout


def mlp(dropout: float | None = None) -> nn.Sequential:
    torch.manual_seed(0)
    middle = [nn.Dropout(dropout)] if dropout is not None else []
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), *middle, nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def seeded_forward(model: nn.Module, x: torch.Tensor, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    with torch.no_grad():
        return model(x)


def capture_input(module: nn.Module) -> list[torch.Tensor]:
    """Record what ``module`` receives; registered after ``apply_dropout``, so it sees the dropped input."""
    seen: list[torch.Tensor] = []
    module.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone()))
    return seen


# --- dropout -------------------------------------------------------------------------------------

def test_existing_dropout_layers_get_the_rate_and_get_it_back() -> None:
    model = mlp(dropout=0.5)
    changes = apply_dropout(model, 0.2, None)
    assert model[2].p == 0.2
    assert changes.describe() == ["set dropout p=0.2 on 1 dropout layer"]
    changes.restore()
    assert model[2].p == 0.5


def test_model_without_dropout_drops_the_head_input_in_training() -> None:
    model, x = mlp(), torch.randn(32, 6)
    keys = list(model.state_dict())
    train_before = seeded_forward(model.train(), x)
    eval_before = seeded_forward(model.eval(), x)
    probe = copy.deepcopy(model)
    clean = capture_input(probe[4])  # what reaches the head without dropout
    seeded_forward(probe.train(), x)

    changes = apply_dropout(model, 0.25, None)
    dropped = capture_input(model[4])
    assert changes.describe() == ["inserted dropout p=0.25 before the head '4' (the model had none)"]
    assert list(model.state_dict()) == keys
    assert torch.equal(seeded_forward(model.eval(), x), eval_before)

    seeded_forward(model.train(), x)
    head_input, live = dropped[-1], clean[0] != 0
    assert torch.all((head_input == 0) | torch.isclose(head_input, clean[0] / 0.75))
    assert 0 < (head_input[live] == 0).sum() < live.sum()

    changes.restore()
    assert torch.equal(seeded_forward(model.train(), x), train_before)
    assert list(model.state_dict()) == keys


def test_torchvision_resnet_gets_the_hook_on_fc() -> None:
    model = resnet18(num_classes=10)
    changes = apply_dropout(model, 0.3, None)
    assert changes.describe() == ["inserted dropout p=0.3 before the head 'fc' (the model had none)"]
    assert len(model.fc._forward_pre_hooks) == 1
    changes.restore()
    assert not model.fc._forward_pre_hooks


def test_conv_head_is_the_fallback_and_no_head_is_reported() -> None:
    conv_head = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    (inserted,) = apply_dropout(conv_head, 0.1, None).describe()
    assert inserted.startswith("inserted dropout p=0.1 before the head '2'")
    (skipped,) = apply_dropout(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), 0.1, None).describe()
    assert "not applied" in skipped


# --- stochastic depth ----------------------------------------------------------------------------

def test_timm_drop_path_profile_is_scaled_and_restored() -> None:
    timm = pytest.importorskip("timm")
    from timm.layers import DropPath

    def drop_rates(model: nn.Module) -> list[float]:
        return [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]

    model = timm.create_model("resnet18", num_classes=10, drop_path_rate=0.1, pretrained=False)
    before = drop_rates(model)
    assert len(set(before)) > 1  # timm's linear per-block rule
    changes = apply_dropout(model, None, 0.3)
    after = drop_rates(model)
    assert max(after) == pytest.approx(0.3)
    assert after == pytest.approx([r * 3 for r in before])
    assert "scaled the drop-path rates of 7 stochastic-depth layers" in changes.describe()[0]
    changes.restore()
    assert drop_rates(model) == before


def test_equal_rates_are_all_set() -> None:
    model = nn.Sequential(nn.Linear(4, 4), StochasticDepth(0.0, "row"), StochasticDepth(0.0, "row"))
    changes = apply_dropout(model, None, 0.2)
    assert [model[1].p, model[2].p] == [0.2, 0.2]
    assert changes.describe() == ["set drop-path rate 0.2 on 2 stochastic-depth layers"]
    changes.restore()
    assert [model[1].p, model[2].p] == [0.0, 0.0]


def test_model_without_stochastic_depth_is_left_alone() -> None:
    model = mlp()
    (line,) = apply_dropout(model, None, 0.1).describe()
    assert "not applied" in line


# --- validation and no-op ------------------------------------------------------------------------

@pytest.mark.parametrize("dropout, stochastic_depth, field", [
    (1.0, None, "regularization.dropout"),
    (-0.1, None, "regularization.dropout"),
    (None, 1.5, "regularization.stochastic_depth"),
    (0.1, float("nan"), "regularization.stochastic_depth"),
])
def test_invalid_rate_names_the_field_and_changes_nothing(dropout: float | None, stochastic_depth: float | None,
                                                          field: str) -> None:
    model = mlp(dropout=0.5)
    with pytest.raises(ConfigError, match=field):
        apply_dropout(model, dropout, stochastic_depth)
    assert model[2].p == 0.5


def test_none_none_is_a_no_op() -> None:
    model, x = mlp(), torch.randn(4, 6)
    before = seeded_forward(model.train(), x)
    changes = apply_dropout(model, None, None)
    assert changes.describe() == []
    assert not any(m._forward_pre_hooks for m in model.modules())
    assert torch.equal(seeded_forward(model, x), before)
