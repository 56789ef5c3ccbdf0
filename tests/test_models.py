"""Models from spec strings, and fitting a model's input channels and head to the data."""

from __future__ import annotations

import textwrap

import pytest
import torch
import torchvision
from torch import nn

import visiondojo
from visiondojo import ModelError
from visiondojo.models import adapt_model, build_model, check_output


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Building a model must never fetch weights."""
    def refuse(*args, **kwargs):
        raise AssertionError("a weight download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def outputs(model, channels, size=32, batch=2):
    model.eval()
    with torch.no_grad():
        return model(torch.randn(batch, channels, size, size))


def test_builtin_fmnist_resnet():
    model = build_model("fmnist-resnet", 7, 1, {"width": 4})
    assert isinstance(model, visiondojo.FMNISTResNet)
    assert outputs(model, 1, 28).shape == (2, 7)
    assert model.fc.in_features == 16
    wide = build_model("fmnist-resnet", 10, 3)
    assert outputs(wide, 3, 28).shape == (2, 10)
    assert sum(p.numel() for p in wide.parameters()) > 10 * sum(p.numel() for p in model.parameters())


def test_torchvision_model_gets_kwargs_only():
    model = build_model("torchvision:resnet18", 4, 1)
    assert isinstance(model, torchvision.models.ResNet)
    assert model.fc.out_features == 1000 and model.conv1.in_channels == 3  # adapt fits it to the data
    sized = build_model("torchvision:resnet18", 4, 3, {"num_classes": 4})
    assert outputs(sized, 3).shape == (2, 4)


def test_timm_model_is_built_for_the_data():
    model = build_model("timm:resnet18", 3, 1)
    assert outputs(model, 1).shape == (2, 3)
    assert model.conv1.in_channels == 1
    assert outputs(build_model("timm:resnet18", 5, 3, {"drop_rate": 0.1}), 3).shape == (2, 5)


def test_factory_from_a_module(tmp_path, monkeypatch):
    (tmp_path / "vd_test_factories.py").write_text(textwrap.dedent("""
        from torch import nn

        def small(outputs=2, channels=1):
            return nn.Sequential(nn.Conv2d(channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(4, outputs))

        def not_a_model():
            return 42

        VALUE = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model("vd_test_factories:small", 99, 99, {"outputs": 6, "channels": 3})
    assert outputs(model, 3, 12).shape == (2, 6)
    with pytest.raises(ModelError, match="the factory returned a int, not an nn.Module"):
        build_model("vd_test_factories:not_a_model", 2, 1)
    with pytest.raises(ModelError, match="vd_test_factories has no callable 'VALUE'"):
        build_model("vd_test_factories:VALUE", 2, 1)
    with pytest.raises(ModelError, match="vd_test_factories has no callable 'missing'"):
        build_model("vd_test_factories:missing", 2, 1)


@pytest.mark.parametrize("spec, message", [
    ("resnet", r"model spec 'resnet': use a built-in name \(fmnist-resnet\), torchvision:NAME, timm:NAME"),
    ("torchvision:", r"model spec 'torchvision:': use a built-in name"),
    ("torchvision:resnet_nope", r"torchvision has no model 'resnet_nope'"),
    ("timm:resnet_nope", r"timm has no model 'resnet_nope'"),
    ("vd_no_such_module:make", r"cannot import 'vd_no_such_module'"),
])
def test_bad_specs(spec, message):
    with pytest.raises(ModelError, match=message):
        build_model(spec, 2, 1)


def test_bad_spec_through_fit(tiny_net, problem, tmp_path):
    with pytest.raises(ModelError, match="torchvision has no model 'nope'"):
        visiondojo.fit("torchvision:nope", problem(40), out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_adapt_rgb_model_to_grayscale_data():
    model = build_model("torchvision:resnet18", 4, 1)
    original_stem = model.conv1
    changes = adapt_model(model, 1, 4)
    assert changes == ["input layer conv1: 3 -> 1 input channels", "classifier head fc: 1000 -> 4 outputs"]
    assert model.conv1.in_channels == 1 and model.fc.out_features == 4
    # A gray image through the adapted stem = the same gray on all three channels through the old one.
    gray = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model.conv1(gray), original_stem(gray.repeat(1, 3, 1, 1)), atol=1e-5)
    check_output(model, 1, 32, 32, 4)
    assert outputs(model, 1).shape == (2, 4)


def test_adapt_grayscale_model_to_rgb_data():
    model = visiondojo.FMNISTResNet(num_classes=10, width=4)
    reference = visiondojo.FMNISTResNet(num_classes=10, width=4)
    reference.load_state_dict(model.state_dict())
    changes = adapt_model(model, 3, 2)
    assert changes == ["input layer features.0.0: 1 -> 3 input channels", "classifier head fc: 10 -> 2 outputs"]
    check_output(model, 3, 28, 28, 2)
    # Features of a gray image shown as RGB are what the original model saw in the gray image.
    gray = torch.randn(2, 1, 28, 28)
    model.eval(), reference.eval()
    with torch.no_grad():
        assert torch.allclose(model.features(gray.repeat(1, 3, 1, 1)), reference.features(gray), atol=1e-5)


def test_adapt_leaves_a_fitting_model_alone():
    model = visiondojo.FMNISTResNet(num_classes=4, width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert adapt_model(model, 1, 4) == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_adapt_a_conv_head():
    model = torchvision.models.squeezenet1_1(weights=None)
    changes = adapt_model(model, 1, 5)
    assert changes == ["input layer features.0: 3 -> 1 input channels", "classifier head classifier.1: 1000 -> 5 outputs"]
    check_output(model, 1, 64, 64, 5)


def test_adapt_failures():
    with pytest.raises(ModelError, match="cannot find the classifier head"):
        adapt_model(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten()), 1, 2)
    grouped = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ModelError, match="cannot adapt input channels of grouped conv '0'"):
        adapt_model(grouped, 3, 2)


def test_check_output_errors():
    flat = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    check_output(flat, 1, 8, 8, 3)
    with pytest.raises(ModelError, match=r"the model fails on 1x9x9 inputs"):
        check_output(flat, 1, 9, 9, 3)
    with pytest.raises(ModelError, match=r"outputs \(2, 3\) for a batch of 2 but the data needs \(2, 1\) \(1 logit\)"):
        check_output(flat, 1, 8, 8, 1)
    with pytest.raises(ModelError, match=r"needs \(2, 1\) \(1 logit\) or \(2, 2\) \(2 logits\); set adapt"):
        check_output(flat, 1, 8, 8, 1, also_fits=(2,))
    assert flat.training  # the dry run restores the mode


def test_check_output_returns_the_width_it_accepts():
    two = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    assert check_output(two, 1, 8, 8, 1, also_fits=(2,)) == 2
    assert check_output(nn.Sequential(nn.Flatten(), nn.Linear(64, 1)), 1, 8, 8, 1, also_fits=(2,)) == 1


def test_adapt_keeps_a_head_that_also_fits():
    """Binary data fits a 2-output head as it is (a 2-class softmax): adapt keeps its weights."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    head = model[3]
    assert adapt_model(model, 1, 1, also_fits=(2,)) == ["input layer 0: 3 -> 1 input channels"]
    assert model[3] is head
    assert adapt_model(nn.Sequential(nn.Flatten(), nn.Linear(4, 5)), 1, 1, also_fits=(2,)) == [
        "classifier head 1: 5 -> 1 outputs"]


def test_adapt_on_binary_data_keeps_a_two_output_head(tiny_net, problem):
    plan = visiondojo.find_params(tiny_net(outputs=2), problem(60, task="binary"), adapt=True)
    assert plan.model.changes == [] and (plan.data.task, plan.data.num_outputs) == ("multiclass", 2)
    with pytest.warns(UserWarning, match=r"adapt: classifier head 4: 3 -> 1 outputs"):
        plan = visiondojo.find_params(tiny_net(outputs=3), problem(60, task="binary"), adapt=True)
    assert (plan.data.task, plan.data.num_outputs) == ("binary", 1)  # a replaced head is the sigmoid's


def test_fit_adapts_a_grayscale_model_to_rgb_data(tmp_path, problem):
    images, labels = problem(120, channels=3)
    with pytest.warns(UserWarning) as warned:
        run = visiondojo.fit(visiondojo.FMNISTResNet(num_classes=10, width=4), (images, labels), adapt=True,
                             out=tmp_path / "run", epochs=1, batch_size=32, progress=False)
    assert [str(w.message) for w in warned] == ["adapt: input layer features.0.0: 1 -> 3 input channels",
                                                "adapt: classifier head fc: 10 -> 4 outputs"]
    assert run.plan.model.changes == ["input layer features.0.0: 1 -> 3 input channels",
                                      "classifier head fc: 10 -> 4 outputs"]
    assert run.plan.data.channels == 3
    # load() applies the same changes to a fresh instance before reading the weights.
    loaded = visiondojo.load(run.dir, model=visiondojo.FMNISTResNet(num_classes=10, width=4))
    assert torch.equal(loaded.predict(images[:8]).scores, run.predict(images[:8]).scores)


def test_find_params_records_the_changes_to_a_spec_model(problem):
    with pytest.warns(UserWarning, match="adapt: "):
        plan = visiondojo.find_params("torchvision:resnet18", problem(60), adapt=True)
    assert plan.model.spec == "torchvision:resnet18" and plan.model.adapt is True
    assert plan.model.changes == ["input layer conv1: 3 -> 1 input channels", "classifier head fc: 1000 -> 4 outputs"]
    assert plan.model.num_parameters < 11_200_000
